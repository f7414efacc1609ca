#!/usr/bin/env python3
"""The `make run` demo's upstream (echoes what reached it) and identity provider (serves a
JWKS for a fresh RSA key), plus demo tokens written to the file named on the command line.
They are the same servers the integration tests use (tests/support)."""

import signal
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from support.jose import Signer, jwks  # noqa: E402
from support.servers import Idp, Upstream  # noqa: E402


def main():
    tokens_path = Path(sys.argv[1])
    signer = Signer("RS256", kid="demo-rsa")
    upstream = Upstream(port=8081).start()
    idp = Idp(jwks(signer), port=8082).start()
    now = int(time.time())
    tokens = {
        "VALID_TOKEN": signer.sign(exp=now + 3600, scope="orders:read reports:read", groups=["staff"]),
        "ADMIN_TOKEN": signer.sign(exp=now + 3600, scope="orders:read", groups=["admin"]),
        "PROFILE_ONLY_TOKEN": signer.sign(exp=now + 3600, scope="profile"),
        "WRONG_AUDIENCE_TOKEN": signer.sign(aud="billing-api", exp=now + 3600),
        "EXPIRED_TOKEN": signer.sign(iat=now - 7200, exp=now - 3600),
    }
    tokens_path.write_text("".join(f"{name}={value}\n" for name, value in tokens.items()))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        while True:
            time.sleep(3600)
    finally:
        upstream.stop()
        idp.stop()


if __name__ == "__main__":
    main()
