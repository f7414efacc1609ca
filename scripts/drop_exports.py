"""Drops from a built module the exports of the proxy-wasm callbacks meshguard does not implement.

The Rust SDK exports every callback, each answering with its default (continue, nothing done),
and Envoy enters the VM for each one it finds: a request or response body enters it once per
chunk, trailers once more. Envoy skips a callback whose export is missing and does exactly what
the SDK's default would, so these go; `wasm-opt` then drops the dispatching code behind them.

`DROPPED` maps each export to the SDK trait method that would handle it: a test
(tests/test_module_exports.py) keeps the two in step with src/host/, so a callback meshguard
starts implementing cannot stay unexported."""
import sys
from pathlib import Path

from wasm_sections import leb

DROPPED = {
    "proxy_on_request_body": "on_http_request_body",
    "proxy_on_request_trailers": "on_http_request_trailers",
    "proxy_on_response_body": "on_http_response_body",
    "proxy_on_response_trailers": "on_http_response_trailers",
    "proxy_on_new_connection": "on_new_connection",
    "proxy_on_downstream_data": "on_downstream_data",
    "proxy_on_upstream_data": "on_upstream_data",
    "proxy_on_downstream_connection_close": "on_downstream_close",
    "proxy_on_upstream_connection_close": "on_upstream_close",
    "proxy_on_queue_ready": "on_queue_ready",
    "proxy_on_foreign_function": "on_foreign_function",
    # Entered for every stream; the root context's end-of-plugin work is in its Drop, which
    # Envoy's proxy_on_delete (always right after on_done) runs.
    "proxy_on_done": "on_done",
}
EXPORT_SECTION = 7


def encode_leb(value):
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def without_exports(module, names):
    """The module with `names` taken out of its export section; the rest byte for byte."""
    if module[:4] != b"\0asm":
        raise ValueError("not a Wasm module")
    out, at = bytearray(module[:8]), 8
    while at < len(module):
        section_id = module[at]
        size, body_at = leb(module, at + 1)
        body = module[body_at:body_at + size]
        if section_id == EXPORT_SECTION:
            count, i = leb(body, 0)
            kept = []
            for _ in range(count):
                start = i
                length, i = leb(body, i)
                name = body[i:i + length].decode()
                i += length + 1  # the name, then the kind byte
                _, i = leb(body, i)  # the index
                if name not in names:
                    kept.append(body[start:i])
            body = encode_leb(len(kept)) + b"".join(kept)
        out += bytes([section_id]) + encode_leb(len(body)) + body
        at = body_at + size
    return bytes(out)


if __name__ == "__main__":
    path = Path(sys.argv[1])
    path.write_bytes(without_exports(path.read_bytes(), DROPPED))
