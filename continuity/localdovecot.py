"""A real Dovecot standby store on loopback, rendered from deploy/dovecot/dovecot.conf: the
demo's store and the test suites'.

The production file is the template: its paths and ports are replaced with this
instance's (each replacement must find its text, so a change of the deploy file that this
module does not follow fails loudly instead of running another configuration).
"""

from __future__ import annotations

import grp
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

from continuity.localslapd import _free_ports, die_with_parent, log_tail

DEPLOY_CONFIG = Path(__file__).resolve().parents[1] / "deploy" / "dovecot" / "dovecot.conf"
START_TIMEOUT = 30.0
STOP_TIMEOUT = 20.0
MASTER_USER = "portal"


class DovecotError(RuntimeError):
    """Dovecot could not be configured, started or stopped."""


def _listening(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def render_config(template: str, replacements: dict[str, str]) -> str:
    """``template`` with each key replaced by its value; every key must occur."""
    for old, new in replacements.items():
        if old not in template:
            raise DovecotError(f"{DEPLOY_CONFIG}: no {old!r} to replace")
        template = template.replace(old, new)
    return template


def unreachable_by_others(path: Path) -> Path | None:
    """The first directory above ``path`` that other users cannot walk through.

    Dovecot's processes run as ``mail`` and ``dovecot``: they must pass every directory
    above their own (root's private pytest directory, a home of mode 0700, ...)."""
    for directory in reversed(path.resolve().parents):
        if directory.exists() and not directory.stat().st_mode & 0o001:
            return directory
    return None


class Dovecot:
    """Dovecot (IMAP and LMTP on loopback ports) from the deploy configuration."""

    def __init__(
        self,
        workdir: Path | None = None,
        *,
        tls: tuple[Path, Path] | None = None,
        ports: tuple[int, int] | None = None,
    ) -> None:
        """``workdir``: an empty (or missing) directory of its own, else a new temp
        directory (which ``remove`` deletes); ``ports``: IMAP and LMTP, else free ones;
        ``tls``: a certificate and key (PEM files) for IMAP with STARTTLS required, as
        deploy/dovecot/dovecot.conf says to set up for a portal on another host."""
        self.tls = tls
        # Not under a private directory: Dovecot's processes run as "mail" and "dovecot".
        self._own_workdir = workdir is None
        if workdir is None:
            workdir = Path(tempfile.mkdtemp(prefix="continuity-dovecot-"))
        else:
            workdir.mkdir(parents=True, exist_ok=True)
        blocked = unreachable_by_others(workdir)
        if blocked is not None:
            raise DovecotError(
                f"Dovecot runs as the users mail and dovecot, who cannot reach {workdir}:"
                f" {blocked} is closed to other users; choose a directory they can pass"
            )
        self.workdir = workdir
        self.workdir.chmod(0o755)
        self.host = "127.0.0.1"
        imap_port, lmtp_port = ports or _free_ports(2)
        self.imap = (self.host, imap_port)
        self.lmtp = (self.host, lmtp_port)
        self.master_user = MASTER_USER
        self.master_password = secrets.token_urlsafe(32)
        self.config_file = self.workdir / "dovecot.conf"
        self.log_file = self.workdir / "dovecot.log"
        self.mail_dir = self.workdir / "mail"
        self.users_file = self.workdir / "standby" / "continuity-users"
        self.master_password_file = self.workdir / "master-password"
        self._process: subprocess.Popen[bytes] | None = None
        self._configure()

    # -- setup ---------------------------------------------------------------------------
    def _configure(self) -> None:
        """Write the configuration, the master user and an empty users file, with the
        owners and modes deploy/README.md gives them."""
        dovecot_gid = grp.getgrnam("dovecot").gr_gid
        mail = pwd.getpwnam("mail")
        for name in ("run", "state"):
            (self.workdir / name).mkdir(mode=0o755)
        self.mail_dir.mkdir(mode=0o750)
        os.chown(self.mail_dir, mail.pw_uid, mail.pw_gid)
        self.users_file.parent.mkdir()
        os.chown(self.users_file.parent, -1, dovecot_gid)
        self.users_file.parent.chmod(0o2750)
        self.users_file.write_bytes(b"")
        self.users_file.chmod(0o640)

        hashed = subprocess.run(  # noqa: S603 - a fixed command, arguments of our own
            ["doveadm", "pw", "-s", "SHA512-CRYPT", "-p", self.master_password],  # noqa: S607
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        ).stdout.strip()
        master_file = self.workdir / "continuity-master.passwd"
        master_file.write_text(f"{self.master_user}:{hashed}\n", encoding="ascii")
        os.chown(master_file, 0, dovecot_gid)
        master_file.chmod(0o640)
        descriptor = os.open(self.master_password_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w", encoding="ascii") as handle:
            handle.write(self.master_password)

        replacements = {
            "base_dir = /run/dovecot/": f"base_dir = {self.workdir / 'run'}/",
            "state_dir = /var/lib/dovecot": f"state_dir = {self.workdir / 'state'}",
            "log_path = syslog": f"log_path = {self.log_file}",
            "instance_name = dovecot": f"instance_name = continuity-{self.workdir.name}",
            "/etc/dovecot/continuity-master.passwd": str(master_file),
            "/var/lib/continuity-standby/continuity-users": str(self.users_file),
            "/var/mail/continuity/": f"{self.mail_dir}/",
            "    port = 143\n": f"    port = {self.imap[1]}\n",
            "    port = 24\n": f"    port = {self.lmtp[1]}\n",
        }
        if self.tls is not None:
            # Dovecot reads the files as root at start; "required": no plaintext sign-in
            # at all, even from loopback.
            cert, key = self.tls
            replacements["\nssl = no\n"] = (
                f"\nssl = required\nssl_cert = <{cert}\nssl_key = <{key}\n"
                "disable_plaintext_auth = yes\n"
            )
        text = render_config(DEPLOY_CONFIG.read_text(encoding="utf-8"), replacements)
        self.config_file.write_text(text, encoding="utf-8")
        check = subprocess.run(  # noqa: S603 - a fixed command, arguments of our own
            ["dovecot", "-n", "-c", str(self.config_file)],  # noqa: S607
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            timeout=30,
        )
        if check.returncode != 0:
            raise DovecotError(f"dovecot -n refused {self.config_file}: {check.stderr}")

    # -- running -------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        """Whether the Dovecot started by this object is alive."""
        return self._process is not None and self._process.poll() is None

    @property
    def master_pid(self) -> int | None:
        """The pid of Dovecot's master process (its children share its session)."""
        return self._process.pid if self.running and self._process else None

    def start(self) -> None:
        """Start Dovecot in the foreground of a child process; wait until both ports answer."""
        if self.running:
            raise DovecotError("dovecot is already running")
        for port in (self.imap, self.lmtp):
            if _listening(*port):
                raise DovecotError(f"{port[0]}:{port[1]} is taken by another process")
        # Its output goes to a file: a pipe nobody reads would block it (RECIPES.md).
        with self.log_file.open("ab") as log:
            self._process = subprocess.Popen(  # noqa: S603 - a fixed command
                ["dovecot", "-F", "-c", str(self.config_file)],  # noqa: S607
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=die_with_parent,
            )
        deadline = time.monotonic() + START_TIMEOUT
        while not (_listening(*self.imap) and _listening(*self.lmtp)):
            if self._process.poll() is not None:
                status = self._process.returncode
                self._process = None
                raise DovecotError(
                    f"dovecot exited with status {status} at start; log {self.log_file}:\n"
                    + log_tail(self.log_file)
                )
            if time.monotonic() > deadline:
                self.stop()
                raise DovecotError(f"dovecot did not listen within {START_TIMEOUT} s")
            time.sleep(0.02)

    def stop(self) -> None:
        """``doveadm stop`` and wait for the process to exit; nothing if not running."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        subprocess.run(  # noqa: S603 - a fixed command
            ["doveadm", "-c", str(self.config_file), "stop"],  # noqa: S607
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=STOP_TIMEOUT,
            check=False,
        )
        try:
            process.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=STOP_TIMEOUT)
        # The children (imap, lmtp, auth) leave with the master; wait for the ports too.
        deadline = time.monotonic() + STOP_TIMEOUT
        while (_listening(*self.imap) or _listening(*self.lmtp)) and time.monotonic() < deadline:
            time.sleep(0.02)

    def remove(self) -> None:
        """Stop and delete the work directory (only one this object made itself)."""
        self.stop()
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    # -- reading the store ---------------------------------------------------------------
    def maildir(self, address: str) -> Path:
        """Where ``address``'s INBOX lives (mail_home .../%d/%n, then Maildir)."""
        local, _, domain = address.lower().rpartition("@")
        return self.mail_dir / domain / local / "Maildir"

    def __enter__(self) -> Dovecot:
        """Start and return self."""
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        """Stop and delete what it made."""
        self.remove()
