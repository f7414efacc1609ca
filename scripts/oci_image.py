#!/usr/bin/env python3
"""Builds the filter into an OCI image layout (a directory any OCI client can push), as Istio's
Wasm image specification defines it, in either of the two variants Istio pulls:

  compat  a container image with a single layer holding `plugin.wasm`: what `docker build` of
          `FROM scratch` + `COPY meshguard.wasm plugin.wasm` gives, without Docker. Written with
          OCI media types; `scripts/oci-image.sh` pushes it with Docker's (skopeo --format v2s2).
  wasm    the OCI artifact: config `application/vnd.module.wasm.config.v1+json` and one layer
          `application/vnd.module.wasm.content.layer.v1+wasm` that is the module itself.

The build is reproducible (fixed timestamps, owners and gzip header), so one .wasm always gives
the same image digest: the `sha256` a WasmPlugin pins.

usage: oci_image.py {compat|wasm} WASM_FILE LAYOUT_DIR TAG     prints the manifest digest
"""

import gzip
import hashlib
import io
import json
import sys
import tarfile
from pathlib import Path

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_IMAGE_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_TAR_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
WASM_CONFIG = "application/vnd.module.wasm.config.v1+json"
WASM_LAYER = "application/vnd.module.wasm.content.layer.v1+wasm"
EPOCH = "1970-01-01T00:00:00Z"
# The proxy-wasm ABI the filter is built against (proxy-wasm crate 0.2: ABI 0.2.1).
ABI_VERSIONS = ["v0.2.1"]


class Layout:
    """An OCI image layout: content-addressed blobs, and an index naming the tagged manifest."""

    def __init__(self, root):
        self.root = Path(root)
        (self.root / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)

    def blob(self, data, media_type):
        digest = hashlib.sha256(data).hexdigest()
        (self.root / "blobs" / "sha256" / digest).write_bytes(data)
        return {"mediaType": media_type, "digest": f"sha256:{digest}", "size": len(data)}

    def tag(self, manifest_descriptor, tag):
        index_path = self.root / "index.json"
        index = json.loads(index_path.read_text()) if index_path.exists() else {"schemaVersion": 2, "manifests": []}
        index["manifests"] = [m for m in index["manifests"] if m.get("annotations", {}).get("org.opencontainers.image.ref.name") != tag]
        index["manifests"].append({**manifest_descriptor, "annotations": {"org.opencontainers.image.ref.name": tag}})
        index_path.write_text(json.dumps(index, indent=2))
        (self.root / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))


def canonical(value):
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


def plugin_tar(wasm):
    """A tar with one regular file, plugin.wasm, with nothing that varies between builds."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("plugin.wasm")
        info.size, info.mode, info.mtime = len(wasm), 0o444, 0
        tar.addfile(info, io.BytesIO(wasm))
    return buffer.getvalue()


def build_compat(layout, wasm):
    tar = plugin_tar(wasm)
    layer = layout.blob(gzip.compress(tar, mtime=0), OCI_LAYER_TAR_GZIP)
    config = layout.blob(
        canonical(
            {
                "architecture": "wasm",
                "os": "wasi",
                "created": EPOCH,
                "config": {},
                "rootfs": {"type": "layers", "diff_ids": [f"sha256:{hashlib.sha256(tar).hexdigest()}"]},
                "history": [{"created": EPOCH, "created_by": "meshguard scripts/oci_image.py: COPY plugin.wasm"}],
            }
        ),
        OCI_IMAGE_CONFIG,
    )
    return {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": config, "layers": [layer]}


def build_wasm_artifact(layout, wasm):
    layer = layout.blob(wasm, WASM_LAYER)
    layer["annotations"] = {"org.opencontainers.image.title": "plugin.wasm"}
    config = layout.blob(canonical({"created": EPOCH, "author": "meshguard", "type": "envoy_proxy", "abiVersions": ABI_VERSIONS}), WASM_CONFIG)
    return {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": config, "layers": [layer]}


def main(argv):
    if len(argv) != 4 or argv[0] not in ("compat", "wasm"):
        print(__doc__.strip().splitlines()[-1], file=sys.stderr)
        return 2
    variant, wasm_path, layout_dir, tag = argv
    wasm = Path(wasm_path).read_bytes()
    if wasm[:4] != b"\0asm":
        print(f"oci_image: {wasm_path} is not a WebAssembly module", file=sys.stderr)
        return 1
    layout = Layout(layout_dir)
    manifest = (build_compat if variant == "compat" else build_wasm_artifact)(layout, wasm)
    descriptor = layout.blob(canonical(manifest), OCI_MANIFEST)
    layout.tag(descriptor, tag)
    print(descriptor["digest"])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
