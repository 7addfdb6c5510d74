"""Test helper: a real rsyslogd on 127.0.0.1 (plain TCP, UDP, TLS and mutual TLS listeners) that writes every
message it receives as one JSON line, plus the throwaway PKI its TLS listeners (and other TLS tests) use.

Needs the Debian packages ``rsyslog`` and, for TLS, ``rsyslog-openssl`` or ``rsyslog-gnutls``; the fixture
skips with the reason when they are missing.
"""

from __future__ import annotations

import datetime as dt
import glob
import ipaddress
import json
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass(frozen=True)
class Pki:
    """A CA and a server and client certificate it signed (all PEM files), valid for 127.0.0.1/localhost."""

    ca_cert: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca_cert: Path  # a CA that signed nothing here: trusting only it must fail verification


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _ca(name: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )  # fmt: skip
    return cert, key


def _leaf(
    name: str, ca: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey, usage: x509.ObjectIdentifier
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    return cert, key


def write_test_pki(directory: Path) -> Pki:
    """Generate a fresh CA with a server and a client certificate into ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    ca, ca_key = _ca("spintrail test CA")
    other, _ = _ca("unrelated test CA")
    server, server_key = _leaf("localhost", ca, ca_key, ExtendedKeyUsageOID.SERVER_AUTH)
    client, client_key = _leaf("spintrail-client", ca, ca_key, ExtendedKeyUsageOID.CLIENT_AUTH)
    files = Pki(
        ca_cert=directory / "ca.pem",
        server_cert=directory / "server.pem",
        server_key=directory / "server.key",
        client_cert=directory / "client.pem",
        client_key=directory / "client.key",
        other_ca_cert=directory / "other-ca.pem",
    )
    files.ca_cert.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    files.other_ca_cert.write_bytes(other.public_bytes(serialization.Encoding.PEM))
    files.server_cert.write_bytes(server.public_bytes(serialization.Encoding.PEM))
    files.server_key.write_bytes(_key_pem(server_key))
    files.client_cert.write_bytes(client.public_bytes(serialization.Encoding.PEM))
    files.client_key.write_bytes(_key_pem(client_key))
    for key_file in (files.server_key, files.client_key):
        key_file.chmod(0o600)
    return files


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    """A port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def rsyslogd_path() -> str | None:
    return shutil.which("rsyslogd") or next(
        (p for p in ("/usr/sbin/rsyslogd", "/sbin/rsyslogd") if os.access(p, os.X_OK)), None
    )


def tls_driver() -> str | None:
    """The rsyslog TLS network stream driver installed here: ``ossl`` or ``gtls`` (or None)."""
    for driver in ("ossl", "gtls"):
        pattern = f"lmnsd_{driver}.so"
        if glob.glob(f"/usr/lib/*/rsyslog/{pattern}") or glob.glob(f"/usr/lib*/rsyslog/{pattern}"):
            return driver
    return None


class RsyslogServer:
    """A running rsyslogd writing each message as a ``%jsonmesg%`` line, with its structured data parsed by
    mmpstrucdata into ``$!`` -> ``rfc5424-sd`` (names kept as sent)."""

    def __init__(self, directory: Path, pki: Pki | None) -> None:
        binary = rsyslogd_path()
        if binary is None:
            pytest.skip("rsyslogd is not installed (Debian: apt-get install rsyslog rsyslog-openssl)")
        self.directory = directory
        self.pki = pki
        self.driver = tls_driver() if pki else None
        self.output = directory / "received.jsonl"
        self.tcp_port = free_port()
        self.udp_port = free_port(socket.SOCK_DGRAM)
        self.tls_port = free_port() if self.driver else None
        self.mtls_port = free_port() if self.driver else None
        conf = directory / "rsyslog.conf"
        conf.write_text(self._config())
        self._log = (directory / "rsyslogd.log").open("wb")
        self.process = subprocess.Popen(
            [binary, "-n", "-f", str(conf), "-i", str(directory / "rsyslogd.pid")],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=directory,
        )
        self._wait_ready()

    def _config(self) -> str:
        d = self.directory
        tls_files = ""
        if self.driver and self.pki:
            p = self.pki
            tls_files = (
                f'\n       defaultNetstreamDriverCAFile="{p.ca_cert}"'
                f'\n       defaultNetstreamDriverCertFile="{p.server_cert}"'
                f'\n       defaultNetstreamDriverKeyFile="{p.server_key}"'
            )
        lines = [
            f'global(workDirectory="{d}" maxMessageSize="256k"',
            f'       parser.escapeControlCharactersOnReceive="off"{tls_files})',
            'module(load="imudp")',
            'module(load="mmpstrucdata")',
            'template(name="jsonline" type="string" string="%jsonmesg%\\n")',
            'ruleset(name="capture") {',
            '  action(type="mmpstrucdata" sd_name.lowercase="off")',
            f'  action(type="omfile" file="{self.output}" template="jsonline")',
            "}",
            f'input(type="imudp" address="127.0.0.1" port="{self.udp_port}" ruleset="capture")',
        ]
        if self.driver and self.pki:
            lines += [
                f'module(load="imtcp" streamDriver.name="{self.driver}" streamDriver.mode="1"',
                '       streamDriver.authMode="anon")',
                f'input(type="imtcp" address="127.0.0.1" port="{self.tcp_port}" ruleset="capture"',
                '      streamDriver.mode="0")',
                f'input(type="imtcp" address="127.0.0.1" port="{self.tls_port}" ruleset="capture")',
                f'input(type="imtcp" address="127.0.0.1" port="{self.mtls_port}" ruleset="capture"',
                '      streamDriver.authMode="x509/certvalid")',
            ]
        else:
            lines += [
                'module(load="imtcp")',
                f'input(type="imtcp" address="127.0.0.1" port="{self.tcp_port}" ruleset="capture")',
            ]
        return "\n".join(lines) + "\n"

    def _wait_ready(self, timeout: float = 10.0) -> None:
        ports = [p for p in (self.tcp_port, self.tls_port, self.mtls_port) if p]
        deadline = time.monotonic() + timeout
        while ports:
            if self.process.poll() is not None:
                raise RuntimeError(f"rsyslogd exited with {self.process.returncode}:\n{self.log_text()}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"rsyslogd did not open {ports} within {timeout} s:\n{self.log_text()}")
            try:
                socket.create_connection(("127.0.0.1", ports[0]), timeout=0.5).close()
                ports.pop(0)
            except OSError:
                time.sleep(0.05)

    def log_text(self) -> str:
        return (self.directory / "rsyslogd.log").read_text(errors="replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()

    def messages(self, app_name: str | None = None) -> list[dict[str, Any]]:
        """Every message received so far (parsed JSON lines), optionally only those from ``app_name``."""
        if not self.output.exists():
            return []
        out = []
        text = self.output.read_text(encoding="utf-8")
        # rsyslog may be half-way through writing the last line: only complete lines count.
        for line in text[: text.rfind("\n") + 1].splitlines():
            message = json.loads(line)
            if app_name is None or message.get("app-name") == app_name:
                out.append(message)
        return out

    def wait_for(self, app_name: str, count: int, timeout: float = 5.0, settle: float = 0.3) -> list[dict]:
        """Wait until ``count`` messages from ``app_name`` arrived, then a little longer so that extra ones
        would show too; returns them all."""
        deadline = time.monotonic() + timeout
        while len(self.messages(app_name)) < count and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(settle)
        return self.messages(app_name)


def structured_data(message: dict[str, Any], sd_id: str) -> dict[str, str]:
    """The SD-PARAMs of ``sd_id`` as rsyslog's mmpstrucdata parsed them (values unescaped)."""
    elements = (message.get("$!") or {}).get("rfc5424-sd") or {}
    if sd_id not in elements:
        raise AssertionError(f"rsyslog found no parsable {sd_id} element in {message.get('rawmsg')!r}")
    return dict(elements[sd_id])


def msg_text(message: dict[str, Any]) -> str:
    """The MSG part of a received message, without the UTF-8 BOM that marks it as UTF-8."""
    return str(message["msg"]).removeprefix("\ufeff")


@pytest.fixture(scope="module")
def rsyslog(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RsyslogServer]:
    """A real rsyslogd for the module's tests (skips when rsyslog is not installed)."""
    directory = tmp_path_factory.mktemp("rsyslog")
    server = RsyslogServer(directory, write_test_pki(directory / "pki"))
    try:
        yield server
    finally:
        server.stop()
