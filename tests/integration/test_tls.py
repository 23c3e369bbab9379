"""Issue 14: TLS. A private redis-server with a TLS port (certificates made here with
`cryptography`) serves the SDK through rediss://...?ssl_ca_certs=... with a client
certificate (mTLS, --tls-auth-clients yes), as the README says; a server certificate the
client does not trust fails at once with a ConnectionSetupError instead of being retried
forever as an outage. Skipped only where the redis-server binary has no TLS."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from exospherehost import Runtime, StateManager
from exospherehost.errors import ConnectionSetupError, PrivateServerError
from exospherehost.testing.server import HOST, PrivateServer
from tests.integration.apps.nodes import SampleNode
from tests.integration.helpers import running

pytestmark = pytest.mark.redis


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def _issue(
    folder: Path,
    stem: str,
    common: str,
    issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None = None,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A certificate (a CA when `issuer` is None, else a leaf for 127.0.0.1 signed by it)
    and its key, written as STEM.crt / STEM.key."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common))
        .issuer_name(issuer[0].subject if issuer else _name(common))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
    )
    if issuer is None:
        builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
    else:
        builder = builder.add_extension(x509.BasicConstraints(ca=False, path_length=None), True)
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address(HOST)), x509.DNSName("localhost")]
            ),
            False,
        )
    cert = builder.sign(issuer[1] if issuer else key, hashes.SHA256())
    (folder / f"{stem}.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (folder / f"{stem}.key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert, key


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, int]]:
    """(folder of ca / server / client / rogue-ca certificates, TLS port) of a private
    server that requires client certificates."""
    folder = tmp_path_factory.mktemp("tls")
    ca = _issue(folder, "ca", "exo test CA")
    _issue(folder, "server", "exo test server", ca)
    _issue(folder, "client", "exo test client", ca)
    _issue(folder, "rogue", "not the CA")
    port = _free_port()
    options = [
        "--tls-port", str(port),
        "--tls-cert-file", str(folder / "server.crt"),
        "--tls-key-file", str(folder / "server.key"),
        "--tls-ca-cert-file", str(folder / "ca.crt"),
        "--tls-auth-clients", "yes",
    ]  # fmt: skip
    server = PrivateServer(extra_args=options)
    try:
        server.start()
    except PrivateServerError as exc:
        if "tls" in str(exc).lower():
            pytest.skip(f"this redis-server has no TLS: {exc}")
        raise
    try:
        yield folder, port
    finally:
        server.stop()


def _url(folder: Path, port: int, ca: str = "ca") -> str:
    return (
        f"rediss://{HOST}:{port}/0?ssl_ca_certs={folder / f'{ca}.crt'}"
        f"&ssl_certfile={folder / 'client.crt'}&ssl_keyfile={folder / 'client.key'}"
    )


async def test_the_sdk_runs_over_mutual_tls(tls: tuple[Path, int]) -> None:
    folder, port = tls
    url = _url(folder, port)
    ns = "tls"
    rt = Runtime(namespace=ns, name="tls", nodes=[SampleNode], redis_url=url)
    async with running(rt), StateManager(ns, redis_url=url) as sm:
        state = await sm.enqueue("SampleNode", {"name": "Alice", "data": {"k": 1}})
        done = await sm.wait_for_states("SampleNode", [state], timeout=10)
        assert done[state].status == "SUCCEEDED"


async def test_an_untrusted_server_certificate_fails_fast(tls: tuple[Path, int]) -> None:
    folder, port = tls
    url = _url(folder, port, ca="rogue")
    async with StateManager("tls", redis_url=url) as sm:
        with pytest.raises(ConnectionSetupError, match="TLS certificate is not trusted"):
            await sm.graph_names()
    rt = Runtime(namespace="tls", name="tls", nodes=[SampleNode], redis_url=url)
    task = rt.start()
    assert task is not None
    with pytest.raises(ConnectionSetupError, match="not trusted"):
        await asyncio.wait_for(task, 10)  # before issue 14: retried forever as an outage


async def test_a_missing_certificate_file_fails_fast(tls: tuple[Path, int]) -> None:
    folder, port = tls
    url = _url(folder, port, ca="nowhere")
    async with StateManager("tls", redis_url=url) as sm:
        with pytest.raises(ConnectionSetupError, match="cannot be read"):
            await sm.graph_names()
