"""The files meshguard ships for Istio, and the native `meshguard` command that checks them."""

import os
import subprocess
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
ISTIO = REPO / "istio"
# Istio's WasmPlugin CRD (from istio/api, see its first line), kept with the tests so a fresh clone has it.
CRD = Path(__file__).resolve().parent / "schemas" / "istio-wasmplugin-crd.yaml"
CLI = Path(os.environ.get("MESHGUARD_CLI", REPO / "target" / "debug" / "meshguard"))
PLUGIN_CONFIG_SCHEMA = ISTIO / "pluginconfig.schema.json"


def manifest_files():
    return sorted(ISTIO.glob("*.yaml"))


def documents():
    """(file name, object) for every document of every manifest file."""
    return [(path.name, doc) for path in manifest_files() for doc in yaml.safe_load_all(path.read_text()) if doc]


def wasm_plugins():
    return [(name, doc) for name, doc in documents() if doc.get("kind") == "WasmPlugin"]


def validate(*paths):
    """Runs `meshguard validate` as a user's CI would; returns (exit code, stdout, stderr)."""
    done = subprocess.run([str(CLI), "validate", *map(str, paths)], capture_output=True, text=True, timeout=60)
    return done.returncode, done.stdout, done.stderr
