"""The two sides of the authorization differential test in one Envoy: side A runs Envoy's native
jwt_authn + rbac as istiod compiles the policies (support/istio_native.py), side B runs meshguard
configured by `meshguard import`. Each side listens on the workload's two ports, TLS with an
optional client certificate; a client reaches them from chosen loopback source addresses."""

import http.client
import json
import os
import ssl
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from .envoy import Envoy, json_file_access_log, wait_for
from .istio_native import ADMIN_PORT, API_PORT
from .manifests import CLI

AUTHZ = Path(__file__).resolve().parent / "authz"
POLICY_FILES = [AUTHZ / "request-authentication.yaml", AUTHZ / "authorization-policies.yaml"]
SERVER_NAME = "orders.shop.svc"
# One loopback address per side, so both can listen on the ports the policies name.
SIDE_ADDRESS = {"A": "127.77.0.10", "B": "127.77.0.20"}
PORTS = (API_PORT, ADMIN_PORT)


DIRECT_PEER_HEADER = "x-meshguard-direct-peer"


def render_policies(workdir, jwks):
    """The policy files with the test's keys in place of `{{NAME}}`; returns the new paths."""
    paths = []
    for source in POLICY_FILES:
        text = source.read_text()
        for name, value in jwks.items():
            text = text.replace("{{%s}}" % name, value)
        target = Path(workdir) / source.name
        target.write_text(text)
        paths.append(target)
    return paths


def meshguard_import(paths):
    """(pluginConfig, None) from `meshguard import FILES`, or (None, why) when this CLI has no
    `import` command yet."""
    if not CLI.exists():
        return None, f"{CLI} is missing (make cli)"
    usage = subprocess.run([str(CLI)], capture_output=True, text=True, timeout=60).stderr
    if "import" not in usage:
        return None, f"{CLI} has no `import` command yet (its usage: {usage.strip().splitlines()[0]!r})"
    done = subprocess.run([str(CLI), "import", *map(str, paths)], capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        raise AssertionError(f"meshguard import failed ({done.returncode}):\n{done.stderr}")
    config = json.loads(done.stdout)
    # Where this Envoy puts the direct peer: a fact of the deployment, not of Istio's policies.
    config["direct_peer_header"] = DIRECT_PEER_HEADER
    return config, None


def _tls(pki, server_cert):
    certificate, key = server_cert
    return {
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
            # Asked for, not required: requests without a peer certificate are part of the corpus.
            "require_client_certificate": False,
            "common_tls_context": {
                "tls_certificates": [{"certificate_chain": {"filename": str(certificate)}, "private_key": {"filename": str(key)}}],
                "validation_context": {"trusted_ca": {"filename": str(pki.ca_path)}},
            },
        },
    }


def _access_log(path, side):
    fields = {
        "side": side,
        "id": "%REQ(X-REQ-ID)%",
        "status": "%RESPONSE_CODE%",
        "details": "%RESPONSE_CODE_DETAILS%",
        # Set by the LOG (AUDIT) rbac filter when an audit policy matched.
        "audit_hint": "%DYNAMIC_METADATA(envoy.common:access_log_hint)%",
        "meshguard": "%FILTER_STATE(wasm.meshguard:PLAIN)%",
    }
    return json_file_access_log(path, fields)


def _listener(side, port, filters, tls, log_path):
    router = {"name": "envoy.filters.http.router", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}
    hcm = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": f"side_{side}_{port}",
        # Istio's default path normalisation (meshConfig.pathNormalization BASE): RFC 3986 only,
        # slashes not merged, so `/a//b` reaches both sides as sent.
        "normalize_path": True,
        "merge_slashes": False,
        # The edge proxy in front is trusted: remote.ip / remoteIpBlocks read the X-Forwarded-For
        # entry it appended (the rightmost), source.ip / ipBlocks the direct peer.
        "use_remote_address": True,
        "xff_num_trusted_hops": 1,
        "access_log": _access_log(log_path, side),
        "route_config": {
            "virtual_hosts": [
                {"name": "all", "domains": ["*"], "routes": [{"match": {"prefix": "/"}, "direct_response": {"status": 200, "body": {"inline_string": "ok"}}}]}
            ]
        },
        "http_filters": list(filters) + [router],
    }
    if side == "B":
        # Envoy shows Wasm one downstream address, the one it derived from X-Forwarded-For; the
        # direct peer (Istio's ipBlocks) reaches meshguard in a header Envoy writes itself before
        # any filter runs, overwriting a client's copy (README, "Addresses").
        hcm["early_header_mutation_extensions"] = [
            {
                "name": "envoy.http.early_header_mutation.header_mutation",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.http.early_header_mutation.header_mutation.v3.HeaderMutation",
                    "mutations": [
                        {
                            "append": {
                                "header": {"key": DIRECT_PEER_HEADER, "value": "%DOWNSTREAM_DIRECT_REMOTE_ADDRESS_WITHOUT_PORT%"},
                                "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
                            }
                        }
                    ],
                },
            }
        ]
    return {
        "name": f"side-{side}-{port}",
        "address": {"socket_address": {"address": SIDE_ADDRESS[side], "port_value": port}},
        "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}], "transport_socket": tls}],
    }


class AuthzEnvoy:
    """One Envoy with side A (`side_a_filters`) and, when given, side B (`side_b_filters`); run
    by support.envoy.Envoy (its start, stop and log) on this configuration."""

    def __init__(self, workdir, pki, side_a_filters, side_b_filters=None):
        self.envoy = Envoy(None, {}, workdir, http_filters=[])
        self.access_log_path = Path(workdir) / "access.log"
        tls = _tls(pki, pki.server([SERVER_NAME], list(SIDE_ADDRESS.values())))
        listeners = [_listener("A", port, side_a_filters, tls, self.access_log_path) for port in PORTS]
        if side_b_filters is not None:
            listeners += [_listener("B", port, side_b_filters, tls, self.access_log_path) for port in PORTS]
        config = {
            "node": {"id": "authz-differential", "cluster": "meshguard"},
            "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": self.envoy.admin_port}}},
            "static_resources": {"listeners": listeners},
        }
        self.envoy.config_path.write_text(json.dumps(config, indent=1))

    def start(self):
        self.envoy.start()
        return self

    def stop(self):
        self.envoy.stop()

    def access_records(self, expected, timeout=15):
        """The access-log records by (side, request id), once `expected` of them are written."""

        def read():
            if not self.access_log_path.exists():
                return []
            return [json.loads(line) for line in self.access_log_path.read_text().splitlines() if line.strip()]

        wait_for(lambda: len(read()) >= expected, timeout=timeout, interval=0.2)
        return {(r["side"], r["id"]): r for r in read()}

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


@dataclass
class Answer:
    status: int
    www_authenticate: str | None


class Client:
    """Keep-alive TLS connections, one per (side, port, source address, client certificate)."""

    def __init__(self, pki, certs):
        self._contexts = {}
        for name, paths in certs.items():
            context = ssl.create_default_context(cafile=str(pki.ca_path))
            context.check_hostname = False
            if paths is not None:
                context.load_cert_chain(*map(str, paths))
            self._contexts[name] = context
        self._connections = {}

    def _connection(self, key):
        side, port, source, cert = key
        if key not in self._connections:
            self._connections[key] = http.client.HTTPSConnection(
                SIDE_ADDRESS[side], port, context=self._contexts[cert], source_address=(source, 0), timeout=15
            )
        return self._connections[key]

    def send(self, side, request):
        key = (side, request.port, request.source, request.cert)
        for attempt in range(2):
            connection = self._connection(key)
            try:
                connection.putrequest(request.method, request.target, skip_host=True, skip_accept_encoding=True)
                for name, value in request.header_lines():
                    connection.putheader(name, value)
                connection.endheaders()
                response = connection.getresponse()
                response.read()
                return Answer(response.status, response.getheader("www-authenticate"))
            except (http.client.HTTPException, ConnectionError, ssl.SSLError):
                # Envoy closed an idle keep-alive connection: reconnect once.
                connection.close()
                del self._connections[key]
                if attempt:
                    raise
                time.sleep(0.05)
        raise AssertionError("unreachable")

    def close(self):
        for connection in self._connections.values():
            connection.close()


def environment_seed(default):
    """The corpus seed: MESHGUARD_AUTHZ_SEED if set, else `default`."""
    return int(os.environ.get("MESHGUARD_AUTHZ_SEED", default))
