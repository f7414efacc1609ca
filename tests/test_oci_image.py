"""The filter's OCI image, in both variants Istio pulls, pushed by `scripts/oci-image.sh` with
skopeo to a real registry on loopback and pulled back: media types as Istio's Wasm image
specification names them, the layer digest the build made, and the very bytes of the .wasm."""

import gzip
import hashlib
import io
import json
import subprocess
import tarfile

import pytest

from support.envoy import REPO, WASM
from support.registry import Registry, skopeo_pull

DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    registry = Registry(tmp_path_factory.mktemp("registry")).start()
    yield registry
    registry.stop()


def push(variant, reference):
    done = subprocess.run(
        [str(REPO / "scripts" / "oci-image.sh"), "--variant", variant, "--insecure", reference],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def blob(pulled, descriptor):
    data = (pulled / descriptor["digest"].removeprefix("sha256:")).read_bytes()
    assert f"sha256:{hashlib.sha256(data).hexdigest()}" == descriptor["digest"], "a pulled blob does not match its digest"
    return data


def test_the_docker_compatible_image_holds_plugin_wasm_in_one_layer(registry, tmp_path):
    reference = f"{registry.host}/platform/meshguard:0.1.0-compat"
    digest = push("compat", reference)
    content_type, served_digest, manifest = registry.manifest("platform/meshguard", "0.1.0-compat")
    assert content_type == DOCKER_MANIFEST == manifest["mediaType"]
    assert served_digest == digest, "the digest the script prints is the one a WasmPlugin must pin"
    assert manifest["config"]["mediaType"] == "application/vnd.docker.container.image.v1+json"
    [layer] = manifest["layers"]
    assert layer["mediaType"] == "application/vnd.docker.image.rootfs.diff.tar.gzip"
    built = json.loads((REPO / "target/oci/compat/index.json").read_text())["manifests"][0]
    built_manifest = json.loads((REPO / "target/oci/compat/blobs/sha256" / built["digest"].removeprefix("sha256:")).read_text())
    assert layer["digest"] == built_manifest["layers"][0]["digest"], "the registry holds the layer the build made"

    pulled = skopeo_pull(reference, tmp_path / "pulled")
    assert json.loads((pulled / "manifest.json").read_text()) == manifest
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(blob(pulled, layer)))) as tar:
        assert tar.getnames() == ["plugin.wasm"]
        module = tar.extractfile("plugin.wasm").read()
    assert module == WASM.read_bytes()
    config = json.loads(blob(pulled, manifest["config"]))
    assert config["rootfs"]["diff_ids"] == [f"sha256:{hashlib.sha256(gzip.decompress(blob(pulled, layer))).hexdigest()}"]


def test_the_oci_artifact_carries_the_wasm_media_types(registry, tmp_path):
    reference = f"{registry.host}/platform/meshguard:0.1.0"
    digest = push("wasm", reference)
    content_type, served_digest, manifest = registry.manifest("platform/meshguard", "0.1.0")
    assert content_type == OCI_MANIFEST == manifest["mediaType"]
    assert served_digest == digest
    assert manifest["config"]["mediaType"] == "application/vnd.module.wasm.config.v1+json"
    [layer] = manifest["layers"]
    assert layer["mediaType"] == "application/vnd.module.wasm.content.layer.v1+wasm"
    module = WASM.read_bytes()
    assert layer["digest"] == f"sha256:{hashlib.sha256(module).hexdigest()}"

    pulled = skopeo_pull(reference, tmp_path / "pulled")
    assert blob(pulled, layer) == module
    config = json.loads(blob(pulled, manifest["config"]))
    assert config["type"] == "envoy_proxy" and config["abiVersions"] == ["v0.2.1"]
    assert b"proxy_abi_version_0_2_1" in module, "the config names the ABI the module exports"


def test_the_same_module_always_gives_the_same_image(registry):
    # A reproducible build: the sha256 pinned in istio/*.yaml only changes with the filter.
    first = push("wasm", f"{registry.host}/meshguard:a")
    second = push("wasm", f"{registry.host}/meshguard:b")
    assert first == second
