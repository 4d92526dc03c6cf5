"""A real Samba Active Directory domain controller, provisioned into a temp directory."""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

import ldap3
from ldap3.core.exceptions import LDAPException
from ldap3.utils.conv import escape_filter_chars
from ldap3.utils.dn import escape_rdn

from continuity.localslapd import (
    ClosingConnection,
    LocalServer,
    bound_connection,
    close_connection,
)

START_TIMEOUT = 60.0
STOP_TIMEOUT = 20.0
TOOL_TIMEOUT = 120.0
LDAP_PORT = 389


class SambaError(RuntimeError):
    """The Samba DC could not be provisioned, started, stopped or changed."""


def _listening(host: str, port: int) -> bool:
    """Whether something accepts TCP connections on ``host``:``port``."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.settimeout(0.5)
            return sock.connect_ex((host, port)) == 0
    except OSError:
        # A machine without IPv6 has nothing listening on ::1.
        return False


def _process_group(pgid: int) -> list[int]:
    """The live (not zombie) processes of process group ``pgid``."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # The command name in parentheses may hold spaces; the fields after it do not.
        state, _ppid, group = stat.rsplit(")", 1)[1].split()[:3]
        if int(group) == pgid and state != "Z":
            members.append(int(entry.name))
    return members


class SambaDC(LocalServer):
    """A real Samba AD DC provisioned into a temp directory, LDAP on 127.0.0.1:389.

    It needs root, and only one can run at a time on a machine since the port is fixed.
    """

    error = SambaError
    realm = "CORP.EXAMPLE.ORG"
    domain = "CORP"
    dns_domain = "corp.example.org"
    base_dn = "DC=corp,DC=example,DC=org"
    users_dn = "CN=Users,DC=corp,DC=example,DC=org"
    url = f"ldap://127.0.0.1:{LDAP_PORT}"
    ldaps_url = "ldaps://127.0.0.1:636"
    admin_bind = "Administrator@corp.example.org"

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.config_file = workdir / "etc" / "smb.conf"
        # A domain provisioned earlier into the same directory keeps its password.
        self._password_file = workdir / "admin-password"
        if self._password_file.exists():
            self.admin_password = self._password_file.read_text().strip()
        else:
            # Four character classes and no part of the account name meet AD's complexity rule.
            self.admin_password = f"Ct1!{secrets.token_urlsafe(15)}"
        self.log_file = workdir / "samba.log"
        self._process = None
        self._log = None

    @staticmethod
    def unavailable_reason() -> str | None:
        """Why a Samba DC cannot start on this machine now (for a skip), or None if it can."""
        if os.geteuid() != 0:
            return "a Samba DC needs root (it listens on port 389)"
        missing = [tool for tool in ("samba", "samba-tool") if shutil.which(tool) is None]
        if missing:
            return f"{' and '.join(missing)} not installed (Debian package samba-ad-dc)"
        for host in ("127.0.0.1", "::1"):
            if _listening(host, LDAP_PORT):
                return f"something already listens on [{host}]:{LDAP_PORT}"
        return None

    @property
    def provisioned(self) -> bool:
        """Whether the domain has been provisioned into the work directory."""
        return (self.workdir / "private" / "sam.ldb").exists()

    def start(self) -> None:
        """Provision (once), start samba and wait until an Administrator bind works."""
        if self.running:
            raise SambaError("this Samba DC is already running")
        reason = self.unavailable_reason()
        if reason is not None:
            raise SambaError(
                f"cannot start a Samba DC: {reason}; only one can run at a time on a machine"
            )
        if not self.provisioned:
            self._provision()
        self._launch()

    def stop(self) -> None:
        """Terminate the samba process group and wait until it has exited; idempotent."""
        process, self._process = self._process, None
        if process is not None:
            pgid = process.pid
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGTERM)
            try:
                process.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pgid, signal.SIGKILL)
                process.wait(timeout=STOP_TIMEOUT)
            self._wait_for_group_exit(pgid)
        if self._log is not None:
            self._log.close()
            self._log = None

    def samba_tool(self, *args: str) -> str:
        """Run ``samba-tool ARGS -s smb.conf`` on the local database; returns its stdout."""
        result = subprocess.run(
            ["samba-tool", *args, "-s", str(self.config_file)],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=TOOL_TIMEOUT,
            check=False,
        )
        if result.returncode != 0:
            raise SambaError(
                f"samba-tool {' '.join(args[:2])} failed ({result.returncode}): "
                f"{result.stderr.strip() or result.stdout.strip()}"
            )
        return result.stdout

    def user_dn(self, name: str) -> str:
        """The DN a user or group made by this class gets: CN=<name>,CN=Users,<base>."""
        return f"CN={escape_rdn(name)},{self.users_dn}"

    def create_user(
        self,
        name: str,
        password: str,
        *,
        mail: str | None = None,
        given_name: str | None = None,
        surname: str | None = None,
    ) -> str:
        """Create an enabled user with samba-tool; returns its DN."""
        args = ["user", "create", name, password, "--use-username-as-cn"]
        if mail is not None:
            args.append(f"--mail-address={mail}")
        if given_name is not None:
            args.append(f"--given-name={given_name}")
        if surname is not None:
            args.append(f"--surname={surname}")
        self.samba_tool(*args)
        return self.user_dn(name)

    def create_users_fast(
        self, users: Mapping[str, str], *, domain: str | None = None
    ) -> list[str]:
        """Create enabled users ``{name: password}`` over LDAPS in one connection; returns DNs.

        Each gets ``mail`` ``name@domain`` when ``domain`` is given. AD only accepts a
        password (``unicodePwd``) over an encrypted connection, hence LDAPS.
        """
        dns = []
        with self._ldaps_connection() as conn:
            for name, password in users.items():
                dn = self.user_dn(name)
                attributes: dict[str, Any] = {
                    "sAMAccountName": name,
                    "userPrincipalName": f"{name}@{self.dns_domain}",
                    "unicodePwd": f'"{password}"'.encode("utf-16-le"),
                    "userAccountControl": 512,
                }
                if domain is not None:
                    attributes["mail"] = f"{name}@{domain}"
                conn.add(dn, ["top", "person", "organizationalPerson", "user"], attributes)
                dns.append(dn)
        return dns

    def disable_user(self, name: str) -> None:
        """Disable a user account (userAccountControl gets ACCOUNTDISABLE)."""
        self.samba_tool("user", "disable", name)

    def enable_user(self, name: str) -> None:
        """Enable a user account again."""
        self.samba_tool("user", "enable", name)

    def add_group(self, name: str) -> str:
        """Create a global security group; returns its DN."""
        self.samba_tool("group", "add", name)
        return self.user_dn(name)

    def add_members(self, group: str, *members: str) -> None:
        """Add users or groups (by sAMAccountName) to ``group``; groups may nest."""
        self._change_members(group, members, ldap3.MODIFY_ADD)

    def remove_members(self, group: str, *members: str) -> None:
        """Remove users or groups (by sAMAccountName) from ``group``."""
        self._change_members(group, members, ldap3.MODIFY_DELETE)

    def connection(self) -> ClosingConnection:
        """A new connection bound as Administrator, raising on LDAP errors; ``with`` closes it."""
        return bound_connection(self.url, self.admin_bind, self.admin_password)

    def modify(self, dn: str, changes: Mapping[str, list[tuple[str, list[Any]]]]) -> None:
        """Modify one entry as Administrator, with changes in ldap3's format."""
        with self.connection() as conn:
            conn.modify(dn, dict(changes))

    def find_dn(self, sam_account_name: str) -> str:
        """The DN of the object with this sAMAccountName."""
        with self.connection() as conn:
            return self._find_dn(conn, sam_account_name)

    def highest_usn(self) -> int:
        """The rootDSE highestCommittedUSN: every later change gets a higher uSNChanged."""
        with self.connection() as conn:
            conn.search("", "(objectClass=*)", ldap3.BASE, attributes=["highestCommittedUSN"])
            value = (conn.response or [{}])[0]["attributes"]["highestCommittedUSN"]
        return int(value[0] if isinstance(value, list) else value)

    def __enter__(self) -> SambaDC:
        """Return self; the caller starts it."""
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        """Stop samba."""
        self.stop()

    def _change_members(self, group: str, members: tuple[str, ...], operation: str) -> None:
        """Add or delete member DNs of ``group`` in one LDAP modify."""
        if not members:
            return
        with self.connection() as conn:
            group_dn = self._find_dn(conn, group)
            member_dns = [self._find_dn(conn, member) for member in members]
            conn.modify(group_dn, {"member": [(operation, member_dns)]})

    def _find_dn(self, conn: ldap3.Connection, sam_account_name: str) -> str:
        """The DN of the object with this sAMAccountName, looked up on ``conn``."""
        conn.search(
            self.base_dn,
            f"(sAMAccountName={escape_filter_chars(sam_account_name)})",
            attributes=["1.1"],
        )
        response = conn.response or []
        found = [entry["dn"] for entry in response if entry["type"] == "searchResEntry"]
        if len(found) != 1:
            raise SambaError(f"{len(found)} objects have sAMAccountName {sam_account_name!r}")
        dn: str = found[0]
        return dn

    def _ldaps_connection(self) -> ClosingConnection:
        """A connection over LDAPS bound as Administrator, trusting Samba's self-signed cert."""
        # Samba makes its own certificate for its host name at first start; these tests
        # only need the encryption AD insists on for passwords, not the server's identity.
        tls = ldap3.Tls(validate=ssl.CERT_NONE)
        server = ldap3.Server(self.ldaps_url, use_ssl=True, tls=tls, get_info=ldap3.NONE)
        conn = ClosingConnection(
            server,
            user=self.admin_bind,
            password=self.admin_password,
            raise_exceptions=True,
            receive_timeout=30,
        )
        try:
            conn.open()
            conn.bind()
        except LDAPException:
            close_connection(conn)
            raise
        return conn

    def _provision(self) -> None:
        """Provision the domain and set the [global] options the tests rely on."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._password_file.write_text(self.admin_password + "\n")
        self._password_file.chmod(0o600)
        result = subprocess.run(
            [
                "samba-tool",
                "domain",
                "provision",
                f"--realm={self.realm}",
                f"--domain={self.domain}",
                "--server-role=dc",
                "--dns-backend=NONE",
                "--use-rfc2307",
                f"--adminpass={self.admin_password}",
                f"--targetdir={self.workdir}",
                "--option=interfaces=lo",
                "--option=bind interfaces only=yes",
            ],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=TOOL_TIMEOUT,
            check=False,
        )
        (self.workdir / "provision.log").write_text(result.stdout + result.stderr)
        if result.returncode != 0:
            raise SambaError(
                f"samba-tool domain provision failed ({result.returncode}):\n"
                + "\n".join((result.stderr or result.stdout).splitlines()[-20:])
            )
        run_dir = self.workdir / "run"
        run_dir.mkdir(exist_ok=True)
        (self.workdir / "log").mkdir(exist_ok=True)
        # Provision writes the full service list and system pid/log paths: LDAP alone starts
        # fastest, the tests bind simply without TLS, and every file must stay in workdir.
        options = {
            "server services": "ldap",
            "ldap server require strong auth": "no",
            "pid directory": str(run_dir),
            "log file": str(self.workdir / "log" / "log.%m"),
        }
        text = self.config_file.read_text()
        for name, value in options.items():
            pattern = re.compile(
                rf"^[ \t]*{re.escape(name)}[ \t]*=.*\n", re.MULTILINE | re.IGNORECASE
            )
            text = pattern.sub("", text)
            text = text.replace("[global]\n", f"[global]\n\t{name} = {value}\n", 1)
        self.config_file.write_text(text)

    def _launch(self) -> None:
        """Start ``samba -i`` in its own process group and wait until Administrator can bind."""
        # Connecting first keeps the refusals before samba listens cheap and quiet; the
        # LDAP task may restart once while samba starts.
        self._start_and_wait(
            ["samba", "-i", "-s", str(self.config_file)],
            lambda: _listening("127.0.0.1", LDAP_PORT),
            self.admin_bind,
            self.admin_password,
            receive_timeout=5,
            interval=0.05,
            timeout=START_TIMEOUT,
        )

    def _wait_for_group_exit(self, pgid: int) -> None:
        """Wait until no live process of the group is left and port 389 is free."""
        deadline = time.monotonic() + STOP_TIMEOUT
        while time.monotonic() < deadline:
            if not _process_group(pgid) and not _listening("127.0.0.1", LDAP_PORT):
                return
            time.sleep(0.05)
        left = _process_group(pgid)
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        raise SambaError(f"samba processes {left} outlived SIGTERM for {STOP_TIMEOUT:.0f} s")
