import pytest

from support.envoy import ENVOY_BIN, WASM
from support.jose import ASYMMETRIC, SYMMETRIC, Signer
from support.servers import Upstream


def pytest_sessionstart(session):
    missing = [str(p) for p in (ENVOY_BIN, WASM) if not p.exists()]
    if missing:
        raise pytest.UsageError(f"run the integration tests with 'make test' (missing: {', '.join(missing)})")


@pytest.fixture(scope="session")
def upstream():
    server = Upstream().start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def signers():
    """One fresh key per algorithm, made for this session."""
    return {alg: Signer(alg) for alg in ASYMMETRIC + SYMMETRIC}
