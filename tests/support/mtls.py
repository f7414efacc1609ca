"""A private CA made at test time, a server certificate, and client certificates carrying SPIFFE
IDs as URI SANs (as Istio's workload certificates do)."""

import datetime
import ipaddress
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

# EC P-256 keys: a TLS handshake in Python costs a fraction of an RSA one.
_CURVE = ec.SECP256R1()


def _name(common_name):
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _write(path, cert, key):
    path.with_suffix(".crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    path.with_suffix(".key").write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return path.with_suffix(".crt"), path.with_suffix(".key")


class Pki:
    """Files under `directory`: ca.crt, server.crt/.key, and one pair per client identity."""

    def __init__(self, directory):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        now = datetime.datetime.now(datetime.timezone.utc)
        self._not_before, self._not_after = now - datetime.timedelta(hours=1), now + datetime.timedelta(days=1)
        self._ca_key = ec.generate_private_key(_CURVE)
        self._ca = (
            x509.CertificateBuilder()
            .subject_name(_name("meshguard test CA"))
            .issuer_name(_name("meshguard test CA"))
            .public_key(self._ca_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(self._not_before)
            .not_valid_after(self._not_after)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
            .sign(self._ca_key, hashes.SHA256())
        )
        self.ca_path = self.directory / "ca.crt"
        self.ca_path.write_bytes(self._ca.public_bytes(serialization.Encoding.PEM))

    def _issue(self, file_stem, common_name, sans, client):
        key = ec.generate_private_key(_CURVE)
        usage = x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH if client else x509.oid.ExtendedKeyUsageOID.SERVER_AUTH
        cert = (
            x509.CertificateBuilder()
            .subject_name(_name(common_name))
            .issuer_name(self._ca.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(self._not_before)
            .not_valid_after(self._not_after)
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .sign(self._ca_key, hashes.SHA256())
        )
        return _write(self.directory / file_stem, cert, key)

    def server(self, dns_names, addresses):
        sans = [x509.DNSName(n) for n in dns_names] + [x509.IPAddress(ipaddress.ip_address(a)) for a in addresses]
        return self._issue("server", dns_names[0], sans, client=False)

    def client(self, spiffe_id):
        """A workload certificate whose only SAN is `spiffe_id` (spiffe://<td>/ns/<ns>/sa/<sa>)."""
        stem = "client-" + spiffe_id.removeprefix("spiffe://").replace("/", "_").replace(".", "-")
        return self._issue(stem, spiffe_id.rsplit("/", 1)[-1], [x509.UniformResourceIdentifier(spiffe_id)], client=True)
