"""Making a self-signed certificate: cryptography and the standard library only.

Runnable on its own as a script (`python -I certgen.py DAYS NAME...`, the PEM pair out as JSON
on stdout), without importing the package: `listen` makes its first pair in such a child, so
that cryptography's OpenSSL binding never stays in the server's memory.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import sys

__all__ = ["generate_self_signed"]


def generate_self_signed(
    names: list[str], *, days: int = 3650, client: bool = False
) -> tuple[bytes, bytes, bytes]:
    """A new ECDSA P-256 key and a self-signed certificate for `names` (DNS names or IPs).

    Returns `(certificate PEM, key PEM, certificate DER)`. A client certificate (`client=True`)
    is marked for client authentication, a server one for server authentication.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0][:64])])
    alt_names: list[x509.GeneralName] = []
    for name in names:
        try:
            alt_names.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            alt_names.append(x509.DNSName(name))
    now = datetime.datetime.now(datetime.UTC)
    usage = ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH
    public = key.public_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return (
        cert.public_bytes(serialization.Encoding.PEM),
        key_pem,
        cert.public_bytes(serialization.Encoding.DER),
    )


def main(argv: list[str]) -> int:
    """`certgen.py DAYS NAME...`: print `[certificate PEM, key PEM]` as JSON."""
    cert, key, _ = generate_self_signed(argv[1:], days=int(argv[0]))
    print(json.dumps([cert.decode(), key.decode()]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
