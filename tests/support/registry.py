"""A real OCI registry on loopback (the CNCF distribution registry, Debian's docker-registry),
and skopeo, a real OCI client, to push to it and pull from it."""

import json
import subprocess
import time
from pathlib import Path

import requests

from .servers import free_port

REGISTRY_BIN = Path("/usr/bin/docker-registry")


class Registry:
    def __init__(self, workdir):
        self.port = free_port()
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = {
            "version": 0.1,
            "log": {"level": "warn"},
            "storage": {"filesystem": {"rootdirectory": str(self.workdir / "data")}},
            "http": {"addr": f"127.0.0.1:{self.port}"},
        }
        self.config_path = self.workdir / "config.yml"
        self.config_path.write_text(json.dumps(config))  # YAML is a superset of JSON
        self.process = None

    @property
    def host(self):
        return f"localhost:{self.port}"

    def start(self, timeout=15):
        log = open(self.workdir / "registry.log", "wb")
        self.process = subprocess.Popen([str(REGISTRY_BIN), "serve", str(self.config_path)], stdout=log, stderr=subprocess.STDOUT)
        deadline = time.time() + timeout
        while time.time() < deadline:
            try:
                if requests.get(f"http://127.0.0.1:{self.port}/v2/", timeout=1).status_code == 200:
                    return self
            except requests.RequestException:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"registry not up in {timeout}s: {(self.workdir / 'registry.log').read_text()[-2000:]}")

    def stop(self):
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)

    def manifest(self, repository, reference):
        """The manifest as the registry serves it: (Content-Type, Docker-Content-Digest, body)."""
        accept = "application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json"
        response = requests.get(f"http://127.0.0.1:{self.port}/v2/{repository}/manifests/{reference}", headers={"Accept": accept}, timeout=5)
        response.raise_for_status()
        return response.headers["Content-Type"], response.headers["Docker-Content-Digest"], response.json()


def skopeo_pull(reference, directory):
    """Copies an image from the registry into a `dir:` layout: manifest.json plus blobs named by digest."""
    subprocess.run(
        ["skopeo", "copy", "--quiet", "--src-tls-verify=false", f"docker://{reference}", f"dir:{directory}"],
        check=True,
        capture_output=True,
        timeout=120,
    )
    return Path(directory)
