"""Test harness for meshguard's integration tests: real Envoy, a real IdP and upstream over
HTTP on loopback, and tokens signed by an independent JOSE implementation (PyJWT with
pyca/cryptography), with keys made fresh for every test session."""
