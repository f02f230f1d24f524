"""The Pulse connection verifies the broker's certificate and host name with a real TLS handshake.

A toy TLS server on loopback presents certificates made here with the ``openssl`` command line;
the client side is exactly what the worker does: ``load_config`` then
``kombu.Connection(**config.connection_kwargs()).connect()``.
"""

from __future__ import annotations

import shutil
import socket
import ssl
import subprocess
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import kombu
import pytest

from pulse_celery.config import load_config

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")

#: What a py-amqp client sends first once the TLS session is up.
AMQP_PROTOCOL_HEADER = b"AMQP\x00\x00\x09\x01"
#: First byte of a TLS handshake record (a ClientHello), as opposed to plaintext ``A``.
TLS_HANDSHAKE_RECORD = b"\x16"
#: OpenSSL's X509_V_ERR_* codes, as carried by ssl.SSLCertVerificationError.verify_code.
X509_V_ERR_DEPTH_ZERO_SELF_SIGNED_CERT = 18
X509_V_ERR_HOSTNAME_MISMATCH = 62

_CA_EXTENSIONS = """\
[req]
distinguished_name = dn
[dn]
[ca]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
"""

_LEAF_EXTENSIONS = """\
[leaf]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
subjectAltName = {san}
"""

_LOCALHOST_SAN = "DNS:localhost, IP:127.0.0.1"


@dataclass(frozen=True)
class KeyPair:
    cert: Path
    key: Path


@dataclass(frozen=True)
class Certificates:
    ca: Path
    #: Signed by ``ca``, for DNS:localhost and IP:127.0.0.1.
    localhost: KeyPair
    #: Signed by ``ca``, for pulse.example.org only.
    other_host: KeyPair
    #: Self-signed, for DNS:localhost and IP:127.0.0.1: right name, untrusted issuer.
    self_signed: KeyPair


def _openssl(*args: str | Path) -> None:
    subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True)


def _new_key_args(key: Path) -> list[str | Path]:
    return ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", key]


def _extensions_file(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def _ca_signed(directory: Path, name: str, san: str, ca: KeyPair, serial: int) -> KeyPair:
    pair = KeyPair(directory / f"{name}.pem", directory / f"{name}.key")
    csr = directory / f"{name}.csr"
    _openssl("req", "-new", *_new_key_args(pair.key), "-out", csr, "-subj", f"/CN={name}")
    extensions = _extensions_file(directory / f"{name}.cnf", _LEAF_EXTENSIONS.format(san=san))
    _openssl(
        "x509", "-req", "-in", csr, "-CA", ca.cert, "-CAkey", ca.key, "-set_serial", str(serial),
        "-days", "2", "-sha256", "-extfile", extensions, "-extensions", "leaf", "-out", pair.cert,
    )  # fmt: skip
    return pair


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    directory = tmp_path_factory.mktemp("tls")
    ca = KeyPair(directory / "ca.pem", directory / "ca.key")
    ca_config = _extensions_file(directory / "ca.cnf", _CA_EXTENSIONS)
    _openssl(
        "req", "-x509", *_new_key_args(ca.key), "-out", ca.cert, "-days", "2", "-sha256",
        "-subj", "/CN=pulse-celery test CA", "-config", ca_config, "-extensions", "ca",
    )  # fmt: skip
    self_signed = KeyPair(directory / "self-signed.pem", directory / "self-signed.key")
    _openssl(
        "req", "-x509", *_new_key_args(self_signed.key), "-out", self_signed.cert, "-days", "2",
        "-sha256", "-subj", "/CN=localhost", "-addext", f"subjectAltName={_LOCALHOST_SAN}",
    )  # fmt: skip
    return Certificates(
        ca=ca.cert,
        localhost=_ca_signed(directory, "localhost", _LOCALHOST_SAN, ca, serial=2),
        other_host=_ca_signed(directory, "pulse.example.org", "DNS:pulse.example.org", ca, serial=3),
        self_signed=self_signed,
    )


@dataclass
class Attempt:
    """One TCP connection the toy server accepted, as the server saw it."""

    first_byte: bytes = b""
    handshake_done: bool = False
    handshake_error: BaseException | None = None
    #: Application data read after the handshake (the AMQP protocol header, if any).
    received: bytes = b""


@dataclass
class ToyTLSServer:
    """Accepts on 127.0.0.1, does the TLS handshake, reads the AMQP header if any, hangs up."""

    pair: KeyPair
    attempts: list[Attempt] = field(default_factory=list)
    crashes: list[BaseException] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(self.pair.cert, self.pair.key)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.05)
        self.port = self.listener.getsockname()[1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="toy-tls-server", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        try:
            while not self._stop.is_set():
                try:
                    conn, _ = self.listener.accept()
                except TimeoutError:
                    continue
                with conn:
                    self._handle(conn)
        except BaseException as exc:
            self.crashes.append(exc)

    def _handle(self, conn: socket.socket) -> None:
        attempt = Attempt()
        self.attempts.append(attempt)
        conn.settimeout(5)
        attempt.first_byte = conn.recv(1, socket.MSG_PEEK)
        tls = self.context.wrap_socket(conn, server_side=True, do_handshake_on_connect=False)
        with tls:
            try:
                tls.do_handshake()
            except (ssl.SSLError, OSError) as exc:
                attempt.handshake_error = exc
                return
            attempt.handshake_done = True
            try:
                while len(attempt.received) < len(AMQP_PROTOCOL_HEADER):
                    chunk = tls.recv(len(AMQP_PROTOCOL_HEADER) - len(attempt.received))
                    if not chunk:
                        break
                    attempt.received += chunk
            except (ssl.SSLError, OSError):
                pass

    def close(self) -> list[Attempt]:
        """Stop once the connection in hand is handled; return what the server saw."""
        self._stop.set()
        self._thread.join(timeout=10)
        self.listener.close()
        assert not self._thread.is_alive(), "the toy TLS server thread did not stop"
        assert not self.crashes, f"the toy TLS server crashed: {self.crashes!r}"
        return self.attempts


@pytest.fixture
def tls_server() -> Iterator[Callable[[KeyPair], ToyTLSServer]]:
    servers: list[ToyTLSServer] = []

    def start(pair: KeyPair) -> ToyTLSServer:
        server = ToyTLSServer(pair)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.close()


def connect_like_the_worker(port: int, ca_certs: Path | None) -> None:
    """What PulseConsumer._open does, through the public configuration path."""
    conf = {
        "pulse_url": f"amqps://localhost:{port}",
        "pulse_user": "alice",
        "pulse_password": "pw",
        "pulse_ssl_ca_certs": None if ca_certs is None else str(ca_certs),
        "pulse_connect_timeout": 3,
    }
    config = load_config(conf, environ={})
    connection = kombu.Connection(**config.connection_kwargs())
    try:
        connection.connect()
    finally:
        connection.release()


def assert_refused_during_the_handshake(server: ToyTLSServer) -> None:
    attempts = server.close()
    assert attempts, "the client never reached the server: the test proves nothing"
    for attempt in attempts:
        assert attempt.first_byte == TLS_HANDSHAKE_RECORD  # a ClientHello, not plaintext AMQP
        assert not attempt.handshake_done
        assert isinstance(attempt.handshake_error, ssl.SSLError), attempt.handshake_error
        assert attempt.received == b""


def test_certificate_for_another_host_is_refused(certificates, tls_server):
    server = tls_server(certificates.other_host)

    with pytest.raises(ssl.SSLCertVerificationError) as refused:
        connect_like_the_worker(server.port, ca_certs=certificates.ca)

    assert refused.value.verify_code == X509_V_ERR_HOSTNAME_MISMATCH
    assert "Hostname mismatch" in str(refused.value)
    assert "'localhost'" in str(refused.value)
    assert_refused_during_the_handshake(server)


def test_untrusted_self_signed_certificate_is_refused(certificates, tls_server):
    server = tls_server(certificates.self_signed)

    with pytest.raises(ssl.SSLCertVerificationError) as refused:
        connect_like_the_worker(server.port, ca_certs=None)

    assert refused.value.verify_code == X509_V_ERR_DEPTH_ZERO_SELF_SIGNED_CERT
    assert_refused_during_the_handshake(server)


def test_certificate_for_localhost_from_the_trusted_ca_completes_the_handshake(certificates, tls_server):
    server = tls_server(certificates.localhost)

    # The toy server hangs up right after the AMQP protocol header: the client then fails at
    # the AMQP level, never on the certificate.
    with pytest.raises(Exception) as failed:
        connect_like_the_worker(server.port, ca_certs=certificates.ca)

    assert not isinstance(failed.value, ssl.SSLError), failed.value
    assert "certificate" not in str(failed.value).lower()
    attempts = server.close()
    assert attempts
    first = attempts[0]
    assert first.first_byte == TLS_HANDSHAKE_RECORD
    assert first.handshake_done, first.handshake_error
    assert first.received == AMQP_PROTOCOL_HEADER  # AMQP spoken only inside the TLS session
