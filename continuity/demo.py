"""`continuity demo`: the whole product on this machine, from nothing, on loopback.

It starts, each as the product runs it: a local slapd with the demo directory
(continuity.demo_directory), the Dovecot standby store (continuity.localdovecot), a
stand-in primary mail server for each demo domain and a stand-in outbound relay
(continuity.demo_mail, threads of this process), the gateway (`continuity gateway`) and
the portal (`continuity serve`) as child processes; it runs a first sync and sends a few
days of mail through the gateway (continuity.demo_seed), prints what a visitor needs,
one labelled line each, then ``ready``.

`continuity demo outage D` and `recover D` (or the portal's demo page) reach the running
demo through files in its work directory (portal.demo.DemoControl), which this process
watches. Ctrl-C (SIGINT) or SIGTERM stops every process it started and waits for them.
The work directory is made anew on every run.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Collection, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

import click
from sqlalchemy import Engine, func, select

from continuity import demo_directory as directory
from continuity import demo_seed
from continuity.demo_mail import StandInPrimary, StandInRelay
from continuity.localdovecot import Dovecot, DovecotError, unreachable_by_others
from continuity.localslapd import PR_SET_PDEATHSIG, Slapd, SlapdError, log_tail
from portal.demo import DemoControl, DemoNotRunning
from roster import service
from roster.config import Config, load_config
from roster.db import make_engine, session_factory, transaction, upgrade
from roster.domains import add_domain, check_primary, parse_primary
from roster.models import COPY_PENDING, PENDING_STATES, Domain, MailRecipient, StandbyCopy
from sync.run import SyncOptions, run_sync

ACTOR = "demo"  # who the audit trail says made the demo's changes
MARKER = ".continuity-demo"
START_TIMEOUT = 60.0
SEED_TIMEOUT = 120.0
STOP_TIMEOUT = 20.0
WATCH_SECONDS = 0.2
# The Control Panel's floor for the probe interval; the demo may go below it (tests).
FAILURES_BEFORE_FAILOVER = 2
RECOVER_AFTER = 1
PRIVATE_UMASK = 0o077
DOVECOT_UMASK = 0o022


class DemoError(Exception):
    """The demo cannot start or go on; the message says why and what to do."""


@dataclass(frozen=True)
class DemoOptions:
    """What `continuity demo` was asked for."""

    workdir: Path
    listen: str
    gateway: str
    probe_interval: int = 10
    serve: bool = True
    seed: bool = True


def _private_file(path: Path, text: str) -> None:
    """Write a file only its owner can read, created that way (never chmod'ed after)."""
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
        handle.write(text)


def _split(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


def say(label: str, value: object) -> None:
    """One labelled line for the visitor and for scripts, flushed at once."""
    click.echo(f"{label}: {value}")
    sys.stdout.flush()


def prepare_workdir(workdir: Path) -> None:
    """Start from an empty work directory; only ever delete one the demo made itself.

    Mode 0711: Dovecot's users (mail, dovecot) pass through to the store's own folder;
    nobody else reads anything: run_demo's umask keeps every other file and folder of
    the demo root's alone (the secrets are 0600 files, created that way)."""
    if workdir.exists():
        try:
            DemoControl(workdir / "control").primaries()
        except DemoNotRunning:
            pass
        else:
            raise DemoError(
                f"a demo is running in {workdir}; stop it (Ctrl-C in its terminal) first,"
                " or choose another --workdir"
            )
        if not (workdir / MARKER).is_file():
            if any(workdir.iterdir()):
                raise DemoError(
                    f"{workdir} exists and was not made by `continuity demo`; choose another"
                    " --workdir (the demo empties its work directory on every run)"
                )
            workdir.rmdir()
        else:
            shutil.rmtree(workdir)
    workdir.mkdir(parents=True, mode=0o700)
    workdir.chmod(0o711)
    (workdir / MARKER).write_text("made by `continuity demo`; deleted on its next run\n")


def port_is_free(address: str) -> bool:
    """Whether nothing listens on HOST:PORT and we may bind it."""
    host, port = _split(address)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


@dataclass
class Ports:
    """Where each part listens."""

    portal: str
    gateway: str
    primaries: dict[str, int]
    relay: int
    imap: int
    lmtp: int


def _loopback_socket() -> socket.socket:
    """A socket bound to a free port of 127.0.0.1 that the kernel chose."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.bind(("127.0.0.1", 0))
    except OSError:
        sock.close()
        raise
    return sock


def free_ports_except(
    count: int,
    excluded: Collection[int],
    bind: Callable[[], socket.socket] = _loopback_socket,
) -> list[int]:
    """``count`` distinct free ports on 127.0.0.1, none of them in ``excluded`` (the
    visitor's --listen and --gateway, which the portal and the gateway bind only later:
    a stand-in primary, which binds first, must not take one)."""
    held: list[socket.socket] = []
    try:
        found: list[int] = []
        # Each drawn port stays bound until the end, so no port comes back twice.
        while len(found) < count:
            if len(held) >= count + 64:
                raise DemoError("no free ports on 127.0.0.1 for the demo's mail servers")
            sock = bind()
            held.append(sock)
            port: int = sock.getsockname()[1]
            if port not in excluded:
                found.append(port)
        return found
    finally:
        for sock in held:
            sock.close()


def choose_ports(options: DemoOptions) -> Ports:
    """The visitor's two fixed addresses (checked free when serving) and free ports for
    the rest."""
    for address, option in ((options.listen, "--listen"), (options.gateway, "--gateway")):
        if options.serve and not port_is_free(address):
            raise DemoError(
                f"{address} is taken by another process (a demo still running?);"
                f" stop it or choose another address with {option}"
            )
    requested = {_split(options.listen)[1], _split(options.gateway)[1]}
    free = free_ports_except(len(directory.DOMAINS) + 3, requested)
    return Ports(
        portal=options.listen,
        gateway=options.gateway,
        primaries={d.name: free[i] for i, d in enumerate(directory.DOMAINS)},
        relay=free[-3],
        imap=free[-2],
        lmtp=free[-1],
    )


def write_config(
    workdir: Path, slapd: Slapd, ports: Ports, store: Dovecot | None
) -> tuple[Path, Config]:
    """The demo's configuration file, with its secrets in files of its own."""
    secret = workdir / "ldap-password"
    _private_file(secret, slapd.root_password)
    portal_key = workdir / "portal-key"
    _private_file(portal_key, secrets.token_hex(32))
    quoted = json.dumps
    text = f"""# Written by `continuity demo`; made anew on every run.
[database]
url = {quoted(f"sqlite:///{workdir / 'roster.db'}")}

[[directory]]
name = "demo"
url = {quoted(slapd.url)}
bind_dn = {quoted(slapd.root_dn)}
bind_password_file = {quoted(str(secret))}
base_dn = "ou=people,{directory.SUFFIX}"
profile = "openldap"
domains = {quoted([d.name for d in directory.DOMAINS])}
disabled_filter = "(description=disabled)"
admin_group = "cn=continuity-admins,ou=groups,{directory.SUFFIX}"
helpdesk_group = "cn=helpdesk,ou=groups,{directory.SUFFIX}"
group_base_dn = "ou=groups,{directory.SUFFIX}"

[gateway]
listen = {quoted(ports.gateway)}
hostname = "gateway.demo.test"
allow_local_primary = true  # the demo's primary mail servers run on this host

[outbound]
relay = {quoted(f"127.0.0.1:{ports.relay}")}
sender = "continuity@gateway.demo.test"

[portal]
listen = {quoted(ports.portal)}
base_url = {quoted(f"http://{ports.portal}")}
secret_key_file = {quoted(str(portal_key))}
secure_cookies = false  # the demo serves plain HTTP on loopback

[demo]
enabled = true  # the portal's demo page; never in production
control_dir = {quoted(str(workdir / "control"))}
"""
    if store is not None:
        text += f"""
[standby]
imap = "127.0.0.1:{store.imap[1]}"
lmtp = "127.0.0.1:{store.lmtp[1]}"
master_user = {quoted(store.master_user)}
master_password_file = {quoted(str(store.master_password_file))}
users_file = {quoted(str(store.users_file))}
"""
    path = workdir / "continuity.toml"
    _private_file(path, text)
    return path, load_config(path, environ={})


def set_up_roster(engine: Engine, ports: Ports, probe_interval: int) -> None:
    """The demo domains, made through the functions an admin's commands and pages call,
    so that the Control Panel's audit trail tells how each came to be as it is."""
    upgrade(engine)
    with transaction(session_factory(engine), writing=True) as session:
        for demo_domain in directory.DOMAINS:
            primary = f"127.0.0.1:{ports.primaries[demo_domain.name]}"
            domain = add_domain(session, demo_domain.name, ACTOR, parse_primary(primary))
            service.activate(session, domain, ACTOR)
            service.switch_emergency_password(session, domain, True, ACTOR)
            settings = check_primary(
                "127.0.0.1",
                ports.primaries[demo_domain.name],
                "none",  # the stand-ins speak plain SMTP on loopback
                True,
                max(probe_interval, 10),
                FAILURES_BEFORE_FAILOVER,
                recover_after=RECOVER_AFTER,
                language=demo_domain.language,
                sent_copies=True,
            )
            service.set_primary(session, domain, settings, ACTOR)
            if probe_interval < 10:
                # Below the Control Panel's floor, for the tests only (--probe-interval).
                domain.probe_interval_seconds = probe_interval


@dataclass
class Child:
    """A process the demo started in a session of its own, with its log file."""

    name: str
    process: subprocess.Popen[bytes]
    log_file: Path

    def stop(self, first: signal.Signals) -> None:
        """Send ``first`` to its process group, wait, and kill whatever is left of it."""
        group = self.process.pid
        if self.process.poll() is None:
            self.process.send_signal(first)
            try:
                self.process.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=STOP_TIMEOUT)
        # Its own children (gunicorn's workers) are in its process group.
        deadline = time.monotonic() + STOP_TIMEOUT
        while _group_alive(group):
            if time.monotonic() > deadline:
                os.killpg(group, signal.SIGKILL)
                deadline = time.monotonic() + STOP_TIMEOUT
            time.sleep(0.05)


def _group_alive(group: int) -> bool:
    try:
        os.killpg(group, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# Run by the child before it becomes ``python ARGUMENTS``: the kernel is to SIGTERM it when
# the demo dies (the setting outlives exec), and if the demo died already, it goes at once.
# Not preexec_fn: the demo's mail threads run by then, and code run between fork and exec
# in a process with threads can deadlock (the subprocess module's documentation).
_DIE_WITH_PARENT = f"""\
import ctypes, os, signal, sys
ctypes.CDLL(None).prctl({PR_SET_PDEATHSIG}, signal.SIGTERM)
if os.getppid() != int(sys.argv[1]):
    sys.exit(1)
os.execv(sys.executable, [sys.executable, *sys.argv[2:]])
"""


def child_command(*arguments: str) -> list[str]:
    """``python ARGUMENTS``, started so that it dies with the demo (no preexec_fn)."""
    return [sys.executable, "-c", _DIE_WITH_PARENT, str(os.getpid()), *arguments]


def start_child(name: str, config_path: Path, workdir: Path, *arguments: str) -> Child:
    """``continuity --config CONFIG ARGUMENTS`` as a child in a session of its own."""
    log_file = workdir / f"{name}.log"
    with log_file.open("ab") as log_handle:
        process = subprocess.Popen(  # noqa: S603 - our own command, arguments we built
            child_command("-m", "continuity", "--config", str(config_path), "-v", *arguments),
            stdin=subprocess.DEVNULL,
            stdout=log_handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return Child(name, process, log_file)


def wait_until(child: Child, ready: Callable[[], bool], what: str) -> None:
    """Wait until ``ready``; a DemoError with the child's log if it exits or takes too long."""
    deadline = time.monotonic() + START_TIMEOUT
    while not ready():
        if child.process.poll() is not None:
            raise DemoError(
                f"the {child.name} exited with status {child.process.returncode} at start;"
                f" its log {child.log_file}:\n{log_tail(child.log_file)}"
            )
        if time.monotonic() > deadline:
            raise DemoError(f"{what} within {START_TIMEOUT:.0f} s; see {child.log_file}")
        time.sleep(0.1)


def _answers(address: str) -> bool:
    """Whether something accepts connections at HOST:PORT."""
    try:
        with socket.create_connection(_split(address), timeout=1):
            return True
    except OSError:
        return False


def _portal_answers(address: str) -> bool:
    """Whether the portal answers its health page."""
    try:
        with urllib.request.urlopen(  # noqa: S310 - http on loopback, our own address
            f"http://{address}/health?format=json", timeout=2
        ) as response:
            return int(response.status) == 200
    except OSError:
        return False


def waiting_mail(engine: Engine) -> int:
    """Recipients and standby copies the gateway has still to do."""
    with engine.connect() as connection:
        recipients = connection.scalar(
            select(func.count(MailRecipient.id)).where(MailRecipient.status.in_(PENDING_STATES))
        )
        copies = connection.scalar(
            select(func.count(StandbyCopy.id)).where(StandbyCopy.status == COPY_PENDING)
        )
    return (recipients or 0) + (copies or 0)


def seed(engine: Engine, gateway: str, people: list[demo_seed.Recipient]) -> int:
    """Send the demo's mail through the gateway; wait until it is delivered and copied."""
    messages = demo_seed.plan(people, directory.END_USER)
    sent = demo_seed.send(_split(gateway), messages)
    deadline = time.monotonic() + SEED_TIMEOUT
    while waiting_mail(engine):
        if time.monotonic() > deadline:
            raise DemoError("the demo's mail was not delivered in time; see gateway.log")
        time.sleep(0.2)
    return sent


def covered_people(engine: Engine) -> list[demo_seed.Recipient]:
    """The demo people the roster covers, as the seed's recipients."""
    languages = {d.name: d.language for d in directory.DOMAINS}
    with transaction(session_factory(engine)) as session:
        found = []
        for domain in session.scalars(select(Domain).order_by(Domain.name)):
            for person in service.covered_people(session, domain):
                found.append(
                    demo_seed.Recipient(
                        person.mail, person.display_name or person.mail, languages[domain.name]
                    )
                )
    return found


class Stopped(Exception):
    """SIGINT or SIGTERM arrived: stop everything."""


def _stop_on_signals() -> None:
    def handler(number: int, _frame: FrameType | None) -> None:
        # Once: the cleanup that follows is not to be cut short by a second Ctrl-C.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise Stopped(signal.Signals(number).name)

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)


# In a directory every user may write to: run_demo takes it only when it is no link and
# is root's own, and prepare_workdir empties only a directory the demo made.
SHARED_WORKDIR = Path("/var/tmp/continuity-demo")  # noqa: S108


def demo_workdir(given: str | None) -> Path:
    """The work directory: the one given, else ``.demo`` here, or SHARED_WORKDIR when
    Dovecot's users cannot reach this directory (a checkout under /root, mode 0700)."""
    if given:
        return Path(given)
    here = Path(".demo")
    return SHARED_WORKDIR if unreachable_by_others(here.resolve()) else here


def run_demo(options: DemoOptions) -> int:
    """Set everything up, then run until SIGINT or SIGTERM; stop everything it started."""
    if os.geteuid() != 0:
        raise DemoError(
            "the demo runs slapd and Dovecot under their own users and installs what is"
            " missing: run it as root (sudo scripts/demo)"
        )
    given = options.workdir
    if given.is_symlink() or (given.exists() and given.lstat().st_uid != os.geteuid()):
        raise DemoError(f"{given} is a link or another user's: choose another --workdir")
    workdir = given.resolve()
    _stop_on_signals()
    # Everything the demo, its threads and its children write (the roster, logs, the mail
    # the stand-ins keep, the control files) is root's alone; Dovecot's own files get the
    # modes its users need (see _run).
    with _umask(PRIVATE_UMASK), ExitStack() as cleanup:
        try:
            return _run(options, workdir, cleanup)
        except Stopped:
            say("stopping", "every process the demo started")
            return 0
        finally:
            for number in (signal.SIGINT, signal.SIGTERM):
                signal.signal(number, signal.SIG_IGN)
            cleanup.close()
            if options.serve:
                say("stopped", "nothing the demo started is running; a new run starts clean")


@contextmanager
def _umask(mask: int) -> Iterator[None]:
    """The process's umask set to ``mask`` inside, and the one before it restored after."""
    before = os.umask(mask)
    try:
        yield
    finally:
        os.umask(before)


def _run(options: DemoOptions, workdir: Path, cleanup: ExitStack) -> int:
    ports = choose_ports(options)
    prepare_workdir(workdir)
    say("work directory", workdir)
    slapd = Slapd(workdir / "slapd", directory.SUFFIX)
    try:
        slapd.start(directory.ldif())
    except SlapdError as error:
        raise DemoError(f"the demo directory (slapd) cannot start: {error}") from None
    cleanup.callback(slapd.stop)
    store = None
    if options.serve:
        try:
            # Dovecot runs as mail and dovecot: localdovecot sets the modes they need (some
            # through mkdir's mode, which the umask would narrow), and the store's
            # processes keep their own umask. Nothing runs in a thread yet.
            with _umask(DOVECOT_UMASK):
                store = Dovecot(workdir / "dovecot", ports=(ports.imap, ports.lmtp))
                store.start()
        except DovecotError as error:
            raise DemoError(f"the standby store (Dovecot) cannot start: {error}") from None
        cleanup.callback(store.stop)
    config_path, config = write_config(workdir, slapd, ports, store)
    engine = make_engine(config.database_url, create=True)
    cleanup.callback(engine.dispose)
    set_up_roster(engine, ports, options.probe_interval)
    (report,) = run_sync(config, engine, SyncOptions(full=True))
    say("directory", f"{slapd.url} ({len(directory.PEOPLE)} people under {directory.SUFFIX})")
    say("configuration", config_path)
    say(
        "directory sync",
        f"{report.outcome}, {report.counts.get('created', 0)} people,"
        f" {report.counts.get('staff_roles', 0)} staff roles",
    )
    if report.exit_status != 0:
        click.echo(f"the demo sync failed: {report.error}", err=True)
        return report.exit_status
    if not options.serve or store is None:
        say("try", f"continuity --config {config_path} roster list --domain acme.test")
        return 0

    control = DemoControl(workdir / "control")
    control.prepare()
    primaries = {
        name: StandInPrimary(name, port, workdir / "primaries" / name)
        for name, port in ports.primaries.items()
    }
    for primary in primaries.values():
        primary.start()
        cleanup.callback(primary.stop)
    relay = StandInRelay(ports.relay, workdir / "outbound", set(primaries), _split(ports.gateway))
    relay.start()
    cleanup.callback(relay.stop)

    slapd_pid = int(slapd.pid_file.read_text(encoding="ascii").strip())
    children: list[Child] = []
    gateway = start_child("gateway", config_path, workdir, "gateway")
    children.append(gateway)
    cleanup.callback(gateway.stop, signal.SIGTERM)
    # gunicorn: SIGINT is its quick shutdown (SIGTERM waits for the webmail's requests).
    portal = start_child("portal", config_path, workdir, "serve", "--workers", "2")
    children.append(portal)
    cleanup.callback(portal.stop, signal.SIGINT)
    (workdir / "pids").write_text(
        "".join(
            f"{name} {pid}\n"
            for name, pid in [
                ("demo", os.getpid()),
                ("slapd", slapd_pid),
                ("dovecot", store.master_pid),
                *((c.name, c.process.pid) for c in children),
            ]
        )
    )
    wait_until(gateway, lambda: _answers(ports.gateway), "the gateway did not listen")
    wait_until(portal, lambda: _portal_answers(ports.portal), "the portal did not answer")
    _publish(control, primaries)
    if options.seed:
        sent = seed(engine, ports.gateway, covered_people(engine))
        say("seeded", f"{sent} messages through the gateway, delivered and copied")

    base = f"http://{ports.portal}"
    say("portal", f"{base}/sign-in")
    say("end user", directory.END_USER)
    say("helpdesk", directory.HELPDESK)
    say("admin", directory.ADMIN)
    say("password", directory.PASSWORD)
    say("demo page", f"{base}/demo")
    say("gateway", f"{ports.gateway} (SMTP, the demo domains' MX)")
    for name, primary in primaries.items():
        say(
            f"primary {name}",
            f"127.0.0.1:{primary.port}, its mail in {primary.folder.directory}/new",
        )
    say("outbound relay", f"127.0.0.1:{ports.relay}, its mail in {relay.folder.directory}/new")
    say("outage", f"continuity demo --workdir {workdir} outage acme.test")
    say("recover", f"continuity demo --workdir {workdir} recover acme.test")
    say(
        "pids",
        " ".join(
            str(pid)
            for pid in (slapd_pid, store.master_pid, *(c.process.pid for c in children))
            if pid
        ),
    )
    click.echo("ready (Ctrl-C stops the demo)")
    sys.stdout.flush()
    cleanup.callback(control.clear_state)
    return _watch(control, primaries, children)


def _publish(control: DemoControl, primaries: dict[str, StandInPrimary]) -> None:
    control.write_state(
        os.getpid(),
        [
            {
                "domain": name,
                "address": f"127.0.0.1:{primary.port}",
                "up": primary.up,
                "received": primary.folder.count,
            }
            for name, primary in primaries.items()
        ],
    )


def _watch(
    control: DemoControl, primaries: dict[str, StandInPrimary], children: list[Child]
) -> int:
    """Follow the outage flags and the primaries' mail until stopped; 1 if a child dies."""
    published: list[tuple[bool, int]] = []
    while True:
        for name, primary in primaries.items():
            down = control.wanted_down(name)
            if down and primary.up:
                primary.stop()
                say("outage", f"the primary of {name} is down")
            elif not down and not primary.up:
                primary.start()
                say("recover", f"the primary of {name} is back")
        now = [(p.up, p.folder.count) for p in primaries.values()]
        if now != published:
            _publish(control, primaries)
            published = now
        for child in children:
            if child.process.poll() is not None:
                click.echo(
                    f"continuity demo: the {child.name} exited with status"
                    f" {child.process.returncode}; its log {child.log_file}:\n"
                    + log_tail(child.log_file),
                    err=True,
                )
                return 1
        time.sleep(WATCH_SECONDS)


def switch_primary(workdir: Path, domain: str, down: bool) -> str:
    """Ask the running demo in ``workdir`` to take ``domain``'s primary down or back."""
    control = DemoControl(workdir.resolve() / "control")
    try:
        state = control.ask(domain.strip().lower(), down)
    except DemoNotRunning:
        raise DemoError(
            f"no demo is running in {workdir}; start one with `continuity demo`"
            " (or name its work directory with --workdir)"
        ) from None
    except KeyError:
        names = ", ".join(d.name for d in directory.DOMAINS)
        raise DemoError(f"{domain!r} is not a demo domain; choose one of {names}") from None
    except TimeoutError:
        raise DemoError("the demo did not answer within 5 s; is it stuck?") from None
    if down:
        return (
            f"the primary of {state.domain} ({state.address}) is down: the continuity event"
            " starts after a few failed checks"
        )
    return (
        f"the primary of {state.domain} ({state.address}) is back: the held mail is handed"
        " back and the event ends by itself"
    )
