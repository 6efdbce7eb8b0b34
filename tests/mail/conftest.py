"""A real IMAP server for the mail tests: Dovecot with a throwaway config and user.

Debian's `dovecot-imapd` (`.ci/services` installs it). The server runs in the
foreground on a free loopback port with its state in a temporary folder; mail is
stored as the `dovecot` system user (Dovecot refuses mail access as root). Without
Dovecot the tests skip on a developer machine and fail under CI=true.
"""

from __future__ import annotations

import imaplib
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import trustme

from tests.conftest import service_unavailable

DOVECOT = shutil.which("dovecot") or "/usr/sbin/dovecot"
USER, PASSWORD = "intake@vendor.example", "imap-test-password"

_CONFIG = """\
protocols = imap
listen = 127.0.0.1
base_dir = {root}/run
state_dir = {root}/state
log_path = {root}/dovecot.log
{ssl}
disable_plaintext_auth = no
auth_mechanisms = plain login
first_valid_uid = 1
{users}
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {root}/passwd
}}
userdb {{
  driver = static
  args = uid={uid} gid={gid} home={root}/home/%u
}}
mail_location = maildir:~/Maildir
namespace inbox {{
  inbox = yes
  separator = /
}}
service imap-login {{
  chroot =
  inet_listener imap {{
    address = 127.0.0.1
    port = {port}
  }}
  inet_listener imaps {{
    address = 127.0.0.1
    port = {tls_port}
  }}
}}
service anvil {{
  chroot =
}}
"""


@dataclass
class Dovecot:
    host: str
    port: int
    user: str
    password: str
    root: Path
    tls_port: int = 0  # imaps (TLS from the first byte); 0: no TLS at all
    ca_file: Path | None = None  # the test CA that signed the server's certificate

    def connect(self) -> imaplib.IMAP4:
        client = imaplib.IMAP4(self.host, self.port, timeout=10)
        client.login(self.user, self.password)
        return client

    def append(self, raw: bytes, folder: str = "INBOX") -> None:
        client = self.connect()
        try:
            status, detail = client.append(folder, None, None, raw)
            assert status == "OK", detail
        finally:
            client.logout()

    def log(self) -> str:
        path = self.root / "dovecot.log"
        return path.read_text(errors="replace") if path.exists() else ""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
            return sock.recv(64).startswith(b"* OK")
    except OSError:
        return False


@pytest.fixture(scope="session")
def dovecot() -> Iterator[Dovecot]:
    with _running_dovecot(tls=False) as server:
        yield server


@pytest.fixture(scope="session")
def dovecot_tls() -> Iterator[Dovecot]:
    """Dovecot with a certificate from a test CA: imaps on `tls_port`, STARTTLS offered
    on `port`. The CA is trusted only where a test points SSL_CERT_FILE at `ca_file`."""
    with _running_dovecot(tls=True) as server:
        yield server


@contextmanager
def _running_dovecot(*, tls: bool) -> Iterator[Dovecot]:
    if not Path(DOVECOT).exists():
        service_unavailable("Dovecot", FileNotFoundError(DOVECOT))
    # Not under pytest's own temp folder: that is 0700, and Dovecot's auth and mail
    # processes run as the dovecot user.
    root = Path(tempfile.mkdtemp(prefix="airlock-dovecot-"))
    root.chmod(0o711)
    for folder in ("run", "state", "home"):
        (root / folder).mkdir()
    mail_user = pwd.getpwnam("dovecot") if os.geteuid() == 0 else pwd.getpwuid(os.geteuid())
    os.chown(root / "home", mail_user.pw_uid, mail_user.pw_gid)
    passwd = root / "passwd"
    passwd.write_text(f"{USER}:{{PLAIN}}{PASSWORD}\n")
    os.chown(passwd, os.geteuid(), mail_user.pw_gid)
    passwd.chmod(0o640)
    # Not root: the server runs as this user entirely (no privilege separation).
    users = "" if os.geteuid() == 0 else (f"default_internal_user = {mail_user.pw_name}\n"
                                          f"default_login_user = {mail_user.pw_name}")
    port, tls_port = _free_port(), _free_port() if tls else 0
    ca_file = _certificates(root) if tls else None
    ssl = (f"ssl = yes\nssl_cert = <{root}/server.pem\nssl_key = <{root}/server.key\n"
           "ssl_min_protocol = TLSv1.2") if tls else "ssl = no"
    config = root / "dovecot.conf"
    config.write_text(_CONFIG.format(root=root, port=port, tls_port=tls_port, ssl=ssl,
                                     uid=mail_user.pw_uid, gid=mail_user.pw_gid,
                                     users=users))
    process = subprocess.Popen([DOVECOT, "-F", "-c", str(config)], stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 30
    while not _answers(port):
        if process.poll() is not None or time.monotonic() > deadline:
            output = process.stdout.read().decode(errors="replace") if process.stdout else ""
            process.kill()
            log = root / "dovecot.log"
            tail = log.read_text()[-800:] if log.exists() else ""
            service_unavailable("Dovecot", RuntimeError(f"did not start: {output[-500:]} {tail}"))
        time.sleep(0.05)
    try:
        yield Dovecot("127.0.0.1", port, USER, PASSWORD, root, tls_port, ca_file)
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        shutil.rmtree(root, ignore_errors=True)


def _certificates(root: Path) -> Path:
    """A test CA and a server certificate for 127.0.0.1 signed by it; the CA's file."""
    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost")
    server.private_key_pem.write_to_path(str(root / "server.key"))
    (root / "server.pem").write_bytes(b"".join(pem.bytes() for pem in server.cert_chain_pems))
    ca.cert_pem.write_to_path(str(root / "ca.pem"))
    return root / "ca.pem"
