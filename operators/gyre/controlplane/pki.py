"""Certificates and keys of the local control plane, generated once into its state directory.

One CA signs the API server's serving certificate and a client certificate per component
(admin in ``system:masters``, the controller manager and the scheduler under their
well-known identities, kwok as a cluster admin since it plays every node's kubelet). The
service-account key pair signs and verifies ServiceAccount tokens. ECDSA P-256 keys: fast to
generate and accepted everywhere Kubernetes takes a key.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

VALIDITY = dt.timedelta(days=3650)  # a local development cluster; no rotation


@dataclass(frozen=True)
class ClientIdentity:
    file_stem: str
    common_name: str
    organizations: tuple[str, ...] = ()


ADMIN = ClientIdentity("admin", "gyre-admin", ("system:masters",))
CONTROLLER_MANAGER = ClientIdentity("controller-manager", "system:kube-controller-manager")
SCHEDULER = ClientIdentity("scheduler", "system:kube-scheduler")
KWOK = ClientIdentity("kwok", "kwok-controller", ("system:masters",))
# The real node's kube-proxy: the default binding system:node-proxier names this user.
KUBE_PROXY = ClientIdentity("kube-proxy", "system:kube-proxy")
CLIENTS = (ADMIN, CONTROLLER_MANAGER, SCHEDULER, KWOK, KUBE_PROXY)
# The API server's identity towards kubelets (logs, exec, port-forward); no kubeconfig.
APISERVER_KUBELET_CLIENT = ClientIdentity(
    "apiserver-kubelet-client", "kube-apiserver-kubelet-client", ("system:masters",)
)

API_SERVER_SANS_DNS = (
    "localhost",
    "kubernetes",
    "kubernetes.default",
    "kubernetes.default.svc",
    "kubernetes.default.svc.cluster.local",
)


@dataclass(frozen=True)
class Pki:
    directory: Path

    @property
    def ca_cert(self) -> Path:
        return self.directory / "ca.crt"

    @property
    def ca_key(self) -> Path:
        return self.directory / "ca.key"

    @property
    def apiserver_cert(self) -> Path:
        return self.directory / "apiserver.crt"

    @property
    def apiserver_key(self) -> Path:
        return self.directory / "apiserver.key"

    @property
    def sa_key(self) -> Path:
        return self.directory / "sa.key"

    @property
    def sa_pub(self) -> Path:
        return self.directory / "sa.pub"

    @property
    def kubelet_serving_cert(self) -> Path:
        return self.directory / "kubelet-serving.crt"

    @property
    def kubelet_serving_key(self) -> Path:
        return self.directory / "kubelet-serving.key"

    def client_cert(self, who: ClientIdentity) -> Path:
        return self.directory / f"{who.file_stem}.crt"

    def client_key(self, who: ClientIdentity) -> Path:
        return self.directory / f"{who.file_stem}.key"


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    data = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _write_cert(path: Path, cert: x509.Certificate) -> None:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def _load_key(path: Path) -> ec.EllipticCurvePrivateKey:
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError(f"{path}: not an EC private key")
    return key


def _name(cn: str, orgs: tuple[str, ...] = ()) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, o) for o in orgs]
    attrs.append(x509.NameAttribute(NameOID.COMMON_NAME, cn))
    return x509.Name(attrs)


def _issue(
    subject: x509.Name,
    key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate | None,
    ca_key: ec.EllipticCurvePrivateKey,
    *,
    is_ca: bool = False,
    server_sans: x509.SubjectAlternativeName | None = None,
    client: bool = False,
) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)  # tolerate small clock skew
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca_cert.subject if ca_cert is not None else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + VALIDITY)
        .add_extension(x509.BasicConstraints(ca=is_ca, path_length=None), critical=True)
    )
    if is_ca:
        builder = builder.add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    else:
        usages = []
        if server_sans is not None:
            usages.append(ExtendedKeyUsageOID.SERVER_AUTH)
            builder = builder.add_extension(server_sans, critical=False)
        if client:
            usages.append(ExtendedKeyUsageOID.CLIENT_AUTH)
        builder = builder.add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        ).add_extension(x509.ExtendedKeyUsage(usages), critical=False)
    return builder.sign(ca_key, hashes.SHA256())


def ensure_pki(directory: Path, service_ip: str) -> Pki:
    """Create whatever of the PKI is missing in ``directory``; keep what exists."""
    directory.mkdir(parents=True, exist_ok=True)
    pki = Pki(directory)

    if pki.ca_cert.exists() and pki.ca_key.exists():
        ca_key = _load_key(pki.ca_key)
        ca_cert = x509.load_pem_x509_certificate(pki.ca_cert.read_bytes())
    else:
        ca_key = _new_key()
        ca_cert = _issue(_name("gyre-local-ca"), ca_key, None, ca_key, is_ca=True)
        _write_key(pki.ca_key, ca_key)
        _write_cert(pki.ca_cert, ca_cert)

    if not (pki.apiserver_cert.exists() and pki.apiserver_key.exists()):
        key = _new_key()
        sans = x509.SubjectAlternativeName(
            [x509.DNSName(d) for d in API_SERVER_SANS_DNS]
            + [
                x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                x509.IPAddress(ipaddress.ip_address(service_ip)),
            ]
        )
        cert = _issue(_name("kube-apiserver"), key, ca_cert, ca_key, server_sans=sans)
        _write_key(pki.apiserver_key, key)
        _write_cert(pki.apiserver_cert, cert)

    for who in (*CLIENTS, APISERVER_KUBELET_CLIENT):
        if pki.client_cert(who).exists() and pki.client_key(who).exists():
            continue
        key = _new_key()
        cert = _issue(_name(who.common_name, who.organizations), key, ca_cert, ca_key, client=True)
        _write_key(pki.client_key(who), key)
        _write_cert(pki.client_cert(who), cert)

    if not (pki.sa_key.exists() and pki.sa_pub.exists()):
        key = _new_key()
        _write_key(pki.sa_key, key)
        pki.sa_pub.write_bytes(
            key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )
    return pki


def node_identity(node_name: str) -> ClientIdentity:
    """The kubelet's client identity: the Node authorizer knows it by this name and group."""
    return ClientIdentity("kubelet-client", f"system:node:{node_name}", ("system:nodes",))


def ensure_node_pki(pki: Pki, node_name: str, addresses: tuple[str, ...]) -> None:
    """The real node's client certificate and its serving certificate, signed by the plane's CA.

    The serving certificate is reissued when the node's name or addresses change (the host
    got another address), so the API server's connections to the kubelet keep verifying.
    """
    ca_key = _load_key(pki.ca_key)
    ca_cert = x509.load_pem_x509_certificate(pki.ca_cert.read_bytes())
    who = node_identity(node_name)
    if not _has_subject(pki.client_cert(who), who.common_name):
        key = _new_key()
        cert = _issue(_name(who.common_name, who.organizations), key, ca_cert, ca_key, client=True)
        _write_key(pki.client_key(who), key)
        _write_cert(pki.client_cert(who), cert)
    sans = x509.SubjectAlternativeName(
        [x509.DNSName(node_name)] + [x509.IPAddress(ipaddress.ip_address(a)) for a in addresses]
    )
    if not _has_sans(pki.kubelet_serving_cert, sans):
        key = _new_key()
        cert = _issue(_name(node_name), key, ca_cert, ca_key, server_sans=sans)
        _write_key(pki.kubelet_serving_key, key)
        _write_cert(pki.kubelet_serving_cert, cert)


def _has_subject(path: Path, common_name: str) -> bool:
    try:
        cert = x509.load_pem_x509_certificate(path.read_bytes())
    except FileNotFoundError:
        return False
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return bool(names) and names[0].value == common_name


def _has_sans(path: Path, want: x509.SubjectAlternativeName) -> bool:
    try:
        cert = x509.load_pem_x509_certificate(path.read_bytes())
    except FileNotFoundError:
        return False
    have = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return set(have) == set(want)
