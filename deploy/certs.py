"""TLS material for a multi-host deployment: a private CA, the SuperLink's certificate and
SuperNode authentication keys (FLOWER_NOTES.md §4.3-4.4).

Built with ``cryptography`` (already a Flower dependency) rather than shelling out to openssl,
so the same code runs on a laptop, in CI and inside the app image.
"""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import Iterable
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

CA_CERT = "ca.crt"
CA_KEY = "ca.key"
SERVER_CERT = "server.pem"
SERVER_KEY = "server.key"
DEFAULT_NAMES = ("DNS:localhost", "DNS:superlink", "IP:127.0.0.1")
"""SAN entries every SuperLink certificate carries: loopback (the ``flwr`` CLI and apps on the
SuperLink host) and ``superlink`` (the compose service name)."""


def _write(path: Path, data: bytes, private: bool = False) -> None:
    """Write ``data`` atomically; private keys are readable by their owner only."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    tmp.chmod(0o600 if private else 0o644)
    tmp.replace(path)


def _san(entry: str) -> x509.GeneralName:
    """One subjectAltName from ``DNS:name`` or ``IP:address``."""
    kind, _, value = entry.partition(":")
    if kind == "DNS" and value:
        return x509.DNSName(value)
    if kind == "IP" and value:
        return x509.IPAddress(ipaddress.ip_address(value))
    raise ValueError(
        f"subject alternative name {entry!r} is not 'DNS:<name>' or 'IP:<address>' "
        "(e.g. DNS:superlink or IP:10.0.0.5: the address SuperNodes dial)"
    )


def make_tls(
    out: Path, names: Iterable[str] = (), days: int = 365, ca_dir: Path | None = None
) -> dict[str, Path]:
    """Create (or reuse) a CA in ``out`` and issue the SuperLink certificate for ``names``
    plus ``DEFAULT_NAMES``; one certificate serves the Fleet (9092) and HTTP (8000) ports.
    ``ca_dir`` keeps ``ca.key`` apart from what the SuperLink mounts (default: ``out``).

    An existing CA is kept, so re-issuing the server certificate (a new SuperLink address)
    does not invalidate the ``ca.crt`` already copied to the SuperNodes; an existing server
    certificate is kept when it already covers ``names``, else re-issued for both name sets.
    """
    out.mkdir(parents=True, exist_ok=True)
    ca_key_path = (ca_dir or out) / CA_KEY
    ca_key_path.parent.mkdir(parents=True, exist_ok=True)
    alt_names = list(dict.fromkeys(_san(s) for s in [*DEFAULT_NAMES, *names]))
    paths = {"ca": out / CA_CERT, "cert": out / SERVER_CERT, "key": out / SERVER_KEY}
    if all(p.exists() for p in paths.values()):
        existing = x509.load_pem_x509_certificate(paths["cert"].read_bytes())
        covered = list(
            existing.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        )
        if set(alt_names) <= set(covered):
            return paths
        alt_names = list(dict.fromkeys([*covered, *alt_names]))
    if ca_key_path.exists() and (out / CA_CERT).exists():
        loaded = serialization.load_pem_private_key(ca_key_path.read_bytes(), password=None)
        if not isinstance(loaded, rsa.RSAPrivateKey):
            raise ValueError(f"{ca_key_path} is not an RSA key; remove it to make a new CA")
        ca_key = loaded
        ca_cert = x509.load_pem_x509_certificate((out / CA_CERT).read_bytes())
    else:
        ca_key = _new_key(ca_key_path)
        ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "dualflower-ca")])
        ca_cert = (
            _builder(ca_name, ca_key, days)
            .issuer_name(ca_name)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .sign(ca_key, hashes.SHA256())
        )
        _write(out / CA_CERT, ca_cert.public_bytes(serialization.Encoding.PEM))
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "superlink")])
    cert = (
        _builder(name, _new_key(out / SERVER_KEY), days)
        .issuer_name(ca_cert.subject)
        .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    _write(out / SERVER_CERT, cert.public_bytes(serialization.Encoding.PEM))
    return paths


def _new_key(path: Path) -> rsa.RSAPrivateKey:
    """A new RSA-2048 key, saved (owner-only) as PKCS#8 PEM at ``path``."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    _write(path, pem, private=True)
    return key


def _builder(subject: x509.Name, key: rsa.RSAPrivateKey, days: int) -> x509.CertificateBuilder:
    """A certificate for ``key`` named ``subject``, valid from now (5 min slack) for ``days``."""
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
    )


def make_node_key(out: Path, name: str, public_dir: Path | None = None) -> tuple[Path, Path]:
    """An ECDSA P-384 key pair for SuperNode authentication, in OpenSSH format
    (``<name>`` private, ``<name>.pub`` to register with ``flwr supernode register``), in
    ``out``; the public key also goes to ``public_dir`` when given (the private key then stays
    where only its SuperNode reads it). Returns the private key and the registrable public key.

    An existing pair is kept: a node's key is its identity (and its node id) across restarts.
    """
    out.mkdir(parents=True, exist_ok=True)
    private, public = out / name, out / f"{name}.pub"
    if not (private.exists() and public.exists()):
        key = ec.generate_private_key(ec.SECP384R1())
        _write(
            private,
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.OpenSSH,
                serialization.NoEncryption(),
            ),
            private=True,
        )
        _write(
            public,
            key.public_key().public_bytes(
                serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
            )
            + b"\n",
        )
    if public_dir is None or public_dir.resolve() == out.resolve():
        return private, public
    public_dir.mkdir(parents=True, exist_ok=True)
    shared = public_dir / public.name
    if not shared.exists() or shared.read_bytes() != public.read_bytes():
        _write(shared, public.read_bytes())
    return private, shared
