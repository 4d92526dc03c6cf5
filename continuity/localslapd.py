"""A real OpenLDAP slapd on loopback, from a generated slapd.conf: the demo directory and the
test suites' directory server."""

from __future__ import annotations

import base64
import contextlib
import ctypes
import os
import re
import secrets
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Literal

import ldap3
from ldap3.core.exceptions import LDAPException
from ldap3.utils.dn import parse_dn

SCHEMA_DIR = Path("/etc/ldap/schema")
STANDARD_SCHEMAS = ("core", "cosine", "inetorgperson", "nis")

# Debian's misc.schema gives this OID to mailLocalAddress, so it is not loaded: the
# attribute here is the iPlanet/Sun name for it, which real mail directories use.
EXTRA_SCHEMA = """\
attributetype ( 2.16.840.1.113730.3.1.13
    NAME 'mailAlternateAddress'
    DESC 'Another RFC 822 address of this recipient'
    EQUALITY caseIgnoreIA5Match
    SUBSTR caseIgnoreIA5SubstringsMatch
    SYNTAX 1.3.6.1.4.1.1466.115.121.1.26{256} )

attributetype ( 1.3.6.1.4.1.99999.1.1.1
    NAME 'mailForwardingAddress'
    DESC 'An RFC 822 address mail for this recipient is forwarded to'
    EQUALITY caseIgnoreIA5Match
    SUBSTR caseIgnoreIA5SubstringsMatch
    SYNTAX 1.3.6.1.4.1.1466.115.121.1.26{256} )

objectclass ( 1.3.6.1.4.1.99999.1.2.1
    NAME 'continuityMailUser'
    DESC 'A mail recipient with aliases, for Continuity tests'
    SUP top AUXILIARY
    MAY ( mailAlternateAddress $ mailForwardingAddress ) )
"""

START_TIMEOUT = 10.0
STOP_TIMEOUT = 10.0
LOG_TAIL_LINES = 30
PR_SET_PDEATHSIG = 1
_HEX_PAIR = re.compile(r"[0-9A-Fa-f]{2}")


class SlapdError(RuntimeError):
    """slapd could not be configured, loaded, started or stopped."""


class PortInUseError(SlapdError):
    """slapd could not listen because another process holds one of its ports."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _free_ports(count: int) -> list[int]:
    """``count`` distinct free ports on 127.0.0.1."""
    sockets = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _is_safe_string(value: str) -> bool:
    """Whether ``value`` may be written as a plain LDIF value (RFC 2849 SAFE-STRING)."""
    if not value:
        return True
    if value[0] in " :<" or value[-1] == " ":
        return False
    return all(0 < ord(char) < 128 and char not in "\r\n" for char in value)


def ldif_line(name: str, value: str | bytes) -> str:
    """One ``name: value`` LDIF line, base64-encoded (``name:: ...``) unless the value is safe."""
    if isinstance(value, str) and _is_safe_string(value):
        return f"{name}: {value}"
    raw = value.encode("utf-8") if isinstance(value, str) else value
    return f"{name}:: {base64.b64encode(raw).decode('ascii')}"


def ldif_entry(dn: str, attrs: Mapping[str, Sequence[str | bytes] | str | bytes]) -> str:
    """One LDIF record (ending in a newline) for ``dn`` with these attribute values."""
    lines = [ldif_line("dn", dn)]
    for name, values in attrs.items():
        for value in [values] if isinstance(values, str | bytes) else values:
            lines.append(ldif_line(name, value))
    return "\n".join(lines) + "\n"


def unescape_dn_value(value: str) -> str:
    """An RDN value with its RFC 4514 escapes (``\\,`` and ``\\2C`` alike) undone."""
    raw = bytearray()
    index = 0
    while index < len(value):
        char = value[index]
        if char == "\\" and _HEX_PAIR.fullmatch(value[index + 1 : index + 3]):
            raw.append(int(value[index + 1 : index + 3], 16))
            index += 3
        elif char == "\\" and index + 1 < len(value):
            raw += value[index + 1].encode("utf-8")
            index += 2
        else:
            raw += char.encode("utf-8")
            index += 1
    return raw.decode("utf-8")


def suffix_entry(suffix: str) -> str:
    """The LDIF record of the suffix entry itself, by the type of its first RDN."""
    attribute, value, _separator = parse_dn(suffix)[0]
    plain = unescape_dn_value(value)
    match attribute.lower():
        case "dc":
            attrs = {"objectClass": ["dcObject", "organization"], "dc": plain, "o": plain}
        case "o":
            attrs = {"objectClass": ["organization"], "o": plain}
        case "ou":
            attrs = {"objectClass": ["organizationalUnit"], "ou": plain}
        case _:
            raise SlapdError(f"cannot make a suffix entry for {suffix!r}: use dc=, o= or ou=")
    return ldif_entry(suffix, attrs)


def log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    """The last ``lines`` lines of a log file, or a note that there is none."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return f"(no log at {path})"
    return "\n".join(text.splitlines()[-lines:])


class ClosingConnection(ldap3.Connection):
    """An ldap3 connection that ``with`` closes on exit, though it was bound before entering.

    A plain ldap3 connection only unbinds on exit if ``with`` itself bound it, so a bound
    one would leak its socket (a ResourceWarning, an error under pytest's warning filter).
    """

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_val: BaseException | None,
        exc_tb: TracebackType | None,
    ) -> Literal[False]:
        """Unbind and close the socket."""
        close_connection(self)
        return False


def bound_connection(
    url: str, user: str, password: str, *, receive_timeout: int = 30
) -> ClosingConnection:
    """A connection to ``url`` bound as ``user``; its socket is closed if the bind fails."""
    server = ldap3.Server(url, get_info=ldap3.NONE, connect_timeout=5)
    conn = ClosingConnection(
        server,
        user=user,
        password=password,
        raise_exceptions=True,
        receive_timeout=receive_timeout,
    )
    try:
        conn.open()
        conn.bind()
    except LDAPException:
        close_connection(conn)
        raise
    return conn


def close_connection(conn: ldap3.Connection) -> None:
    """Unbind and close, including the socket ldap3 leaves open after a failed connect."""
    with contextlib.suppress(LDAPException, OSError):
        conn.unbind()
    if conn.socket is not None:
        with contextlib.suppress(OSError):
            conn.socket.close()
        conn.socket = None


def die_with_parent() -> None:
    """In a child before exec: have the kernel SIGTERM it when the process that forked it dies."""
    # A test run killed outright (SIGKILL, pytest-timeout's thread method) runs no teardown;
    # without this its servers would keep their ports, and Samba's fixed 389, for good.
    # The kernel watches the forking thread, so start servers from a long-lived thread.
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def _run(command: list[str], what: str) -> None:
    """Run a short command; raise SlapdError with its output if it fails."""
    result = subprocess.run(
        command, stdin=subprocess.DEVNULL, capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise SlapdError(f"{what} failed ({result.returncode}): {result.stderr or result.stdout}")


def make_test_ca(directory: Path) -> tuple[Path, Path, Path]:
    """A throwaway CA and a server cert for 127.0.0.1 and localhost; returns (ca, cert, key)."""
    directory.mkdir(parents=True, exist_ok=True)
    ca_key, ca_cert = directory / "ca.key", directory / "ca.pem"
    key, csr, cert = directory / "server.key", directory / "server.csr", directory / "server.pem"
    extensions = directory / "server.ext"
    curve = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    _run(
        ["openssl", "req", "-x509", *curve, "-days", "2", "-subj", "/CN=Continuity test CA"]
        + ["-addext", "basicConstraints=critical,CA:TRUE"]
        + ["-addext", "keyUsage=critical,keyCertSign,cRLSign"]
        + ["-keyout", str(ca_key), "-out", str(ca_cert)],
        "making the test CA",
    )
    _run(
        ["openssl", "req", "-new", *curve, "-subj", "/CN=localhost"]
        + ["-keyout", str(key), "-out", str(csr)],
        "making the server key",
    )
    extensions.write_text(
        "basicConstraints=critical,CA:FALSE\n"
        "keyUsage=critical,digitalSignature\n"
        "extendedKeyUsage=serverAuth\n"
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n"
        "subjectKeyIdentifier=hash\n"
        "authorityKeyIdentifier=keyid\n",
        encoding="ascii",
    )
    _run(
        ["openssl", "x509", "-req", "-in", str(csr), "-CA", str(ca_cert), "-CAkey", str(ca_key)]
        + ["-set_serial", f"0x{secrets.token_hex(8)}", "-days", "2"]
        + ["-extfile", str(extensions), "-out", str(cert)],
        "signing the server certificate",
    )
    return ca_cert, cert, key


class ServerExited(Exception):
    """A server process ended while we waited for it to answer."""

    def __init__(self, status: int) -> None:
        super().__init__(f"exited with status {status}")
        self.status = status


def wait_for_bind(
    process: subprocess.Popen[bytes],
    ready: Callable[[], bool],
    url: str,
    user: str,
    password: str,
    *,
    receive_timeout: int,
    interval: float,
    timeout: float = START_TIMEOUT,
) -> str | None:
    """Poll a starting server until a bind as ``user`` works.

    ``ready`` says when trying is worth it. Returns None once bound, or the last error
    seen when ``timeout`` runs out; raises ServerExited if the process ends first.
    """
    deadline = time.monotonic() + timeout
    last_error = "no attempt"
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise ServerExited(process.returncode)
        if ready():
            try:
                close_connection(
                    bound_connection(url, user, password, receive_timeout=receive_timeout)
                )
                return None
            except LDAPException as error:
                last_error = repr(error)
        time.sleep(interval)
    return last_error


class LocalServer:
    """A server process of ours started for a demo or a test: in its own session (so
    its whole group can be stopped), dying with its parent, its output appended to
    ``log_file``, and waited for until a bind as an account of its own works.

    Subclasses set ``url``, ``log_file`` and ``error`` and implement ``stop``.
    """

    error: type[Exception] = RuntimeError
    url: str
    log_file: Path
    _process: subprocess.Popen[bytes] | None = None
    _log: IO[bytes] | None = None

    @property
    def running(self) -> bool:
        """Whether the process started by this object is alive."""
        return self._process is not None and self._process.poll() is None

    def stop(self) -> None:
        """Stop the server and wait until it has exited; does nothing if not running."""
        raise NotImplementedError

    def _start_and_wait(
        self,
        command: list[str],
        ready: Callable[[], bool],
        user: str,
        password: str,
        *,
        receive_timeout: int,
        interval: float,
        timeout: float = START_TIMEOUT,
    ) -> None:
        """Start ``command`` and wait until a bind as ``user`` works; on failure stop it
        and raise ``error`` with the end of its log."""
        name = Path(command[0]).name
        self._log = self.log_file.open("ab")
        log_start = self._log.tell()
        self._process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=die_with_parent,
        )
        try:
            last_error = wait_for_bind(
                self._process,
                ready,
                self.url,
                user,
                password,
                receive_timeout=receive_timeout,
                interval=interval,
                timeout=timeout,
            )
        except ServerExited as exited:
            self.stop()
            raise self._start_error(
                f"{name} exited with status {exited.status} at start", log_start
            ) from None
        if last_error is None:
            return
        self.stop()
        raise self._start_error(
            f"{name} at {self.url} did not accept a bind as {user} within {timeout:.0f} s"
            f" ({last_error})",
            log_start,
        )

    def _start_error(self, message: str, log_start: int) -> Exception:
        """The error a failed start raises (``log_start``: where this start's log began)."""
        return self.error(f"{message}; log {self.log_file}:\n" + log_tail(self.log_file))

    def _log_since(self, log_start: int) -> str:
        """What the server wrote to its log since ``log_start``."""
        with self.log_file.open("rb") as log:
            log.seek(log_start)
            return log.read().decode("utf-8", errors="replace")


MIN_MAP_SIZE = 1 << 30
MAP_SIZE_PER_LDIF_BYTE = 16
"""LMDB map size for a load, in bytes per byte of LDIF: room for the entries, their
substring indexes and later changes (a million benchmark people load into it)."""


class Slapd(LocalServer):
    """A real OpenLDAP slapd in a temp directory on a free loopback port."""

    error = SlapdError
    alias_object_class = "continuityMailUser"
    alias_attribute = "mailAlternateAddress"

    def __init__(
        self,
        workdir: Path,
        suffix: str = "dc=acme,dc=test",
        *,
        sizelimit: int | None = None,
        tls: bool = False,
    ) -> None:
        self.workdir = workdir
        self.suffix = suffix
        self.sizelimit = sizelimit
        self.tls = tls
        self.root_dn = f"cn=admin,{suffix}"
        self.root_password = secrets.token_urlsafe(18)
        self.config_file = workdir / "slapd.conf"
        self.pid_file = workdir / "slapd.pid"
        self.log_file = workdir / "slapd.log"
        self.ca_file: Path | None = workdir / "tls" / "ca.pem" if tls else None
        self.url = ""
        self.ldaps_url: str | None = None
        self._choose_ports()
        self._process = None
        self._log = None
        self._loaded = False
        self.maxsize = MIN_MAP_SIZE

    def _choose_ports(self) -> None:
        """Pick free loopback ports for ldap:// and, with TLS, ldaps://."""
        ports = _free_ports(2 if self.tls else 1)
        self.url = f"ldap://127.0.0.1:{ports[0]}"
        self.ldaps_url = f"ldaps://127.0.0.1:{ports[1]}" if self.tls else None

    def start(self, ldif: str = "") -> None:
        """Configure, load ``ldif`` (with the suffix entry on first start), start and wait."""
        if self.running:
            raise SlapdError(f"slapd at {self.url} is already running")
        first = not self._loaded
        if first:
            # LMDB's map is a cap, not an allocation: room for what is loaded now, its
            # indexes and the changes a test or benchmark makes afterwards.
            self.maxsize = max(MIN_MAP_SIZE, len(ldif) * MAP_SIZE_PER_LDIF_BYTE)
            self._configure()
            self._slapadd(suffix_entry(self.suffix) + "\n" + ldif)
            self._loaded = True
        elif ldif.strip():
            self._slapadd(ldif)
        # Another process may take a port between choosing and binding it; only the first
        # start may move to new ports, later ones must keep the URLs clients already hold.
        attempts = 3 if first else 1
        for attempt in range(1, attempts + 1):
            try:
                self._launch()
                return
            except PortInUseError:
                if attempt == attempts:
                    raise
                self._choose_ports()

    def stop(self) -> None:
        """Stop slapd and wait until its process has exited; does nothing if not running."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=STOP_TIMEOUT)
        if self._log is not None:
            self._log.close()
            self._log = None

    def restart(self) -> None:
        """Stop, then start again on the same ports with the same data."""
        self.stop()
        self.start()

    def connection(self) -> ClosingConnection:
        """A new connection bound as the root DN that raises on LDAP errors; ``with`` closes it."""
        return bound_connection(self.url, self.root_dn, self.root_password)

    def add(self, dn: str, object_class: list[str], attributes: Mapping[str, Any]) -> None:
        """Add one entry as the root DN."""
        with self.connection() as conn:
            conn.add(dn, object_class, dict(attributes))

    def modify(self, dn: str, changes: Mapping[str, list[tuple[str, list[Any]]]]) -> None:
        """Modify one entry as the root DN, with changes in ldap3's format."""
        with self.connection() as conn:
            conn.modify(dn, dict(changes))

    def delete(self, dn: str) -> None:
        """Delete one entry as the root DN."""
        with self.connection() as conn:
            conn.delete(dn)

    def __enter__(self) -> Slapd:
        """Return self; the caller starts it with the LDIF it needs."""
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        """Stop slapd."""
        self.stop()

    def _configure(self) -> None:
        """Write slapd.conf, the extra schema and, with TLS, a CA and server certificate."""
        database = self.workdir / "data"
        database.mkdir(parents=True, exist_ok=True)
        extra_schema = self.workdir / "continuity.schema"
        extra_schema.write_text(EXTRA_SCHEMA, encoding="ascii")
        lines = [f"include {SCHEMA_DIR / name}.schema" for name in STANDARD_SCHEMAS]
        lines += [
            f"include {extra_schema}",
            f"pidfile {self.pid_file}",
            f"argsfile {self.workdir / 'slapd.args'}",
            "modulepath /usr/lib/ldap",
            "moduleload back_mdb",
        ]
        if self.sizelimit is not None:
            lines.append(f"sizelimit {self.sizelimit}")
        if self.tls:
            ca, cert, key = make_test_ca(self.workdir / "tls")
            lines += [
                f"TLSCACertificateFile {ca}",
                f"TLSCertificateFile {cert}",
                f"TLSCertificateKeyFile {key}",
            ]
        lines += [
            "database mdb",
            f"maxsize {self.maxsize}",
            f'suffix "{self.suffix}"',
            f'rootdn "{self.root_dn}"',
            f"rootpw {self.root_password}",
            f"directory {database}",
            "index objectClass eq",
            "index uid,mail eq,sub",
            "index mailAlternateAddress eq,sub",
            # What an incremental sync asks for (modifyTimestamp>=mark): without it
            # slapd reads every entry, 1.5 s a million on this machine, for each run.
            "index modifyTimestamp eq",
        ]
        self.config_file.write_text("\n".join(lines) + "\n", encoding="utf-8")
        os.chmod(self.config_file, 0o600)

    def _slapadd(self, ldif: str) -> None:
        """Load LDIF into the (stopped) database with slapadd -q."""
        data = self.workdir / "load.ldif"
        data.write_text(ldif, encoding="utf-8")
        _run(
            ["slapadd", "-q", "-f", str(self.config_file), "-l", str(data)],
            f"slapadd of {data}",
        )

    def _launch(self) -> None:
        """Start slapd in the foreground of a child process and wait until a root bind works."""
        urls = " ".join(f"{url}/" for url in (self.url, self.ldaps_url) if url)
        self.pid_file.unlink(missing_ok=True)
        # "-d none" keeps slapd in the foreground as our child, so stop() can wait() for it;
        # a daemonised slapd is reparented to PID 1, which here reaps it only lazily, so it
        # lingers as a zombie. The flag still lets configuration and bind errors reach the log.
        # It is ready once it writes its pid file, which it does once it listens: connecting
        # earlier only collects refusals (or, on a port someone else took, a peer that
        # never answers).
        self._start_and_wait(
            ["slapd", "-f", str(self.config_file), "-h", urls, "-d", "none"],
            self.pid_file.exists,
            self.root_dn,
            self.root_password,
            receive_timeout=1,
            interval=0.005,
        )

    def _start_error(self, message: str, log_start: int) -> Exception:
        """A port taken by another process is an error of its own: start() moves ports."""
        error = super()._start_error(message, log_start)
        if "Address already in use" in self._log_since(log_start):
            return PortInUseError(str(error))
        return error
