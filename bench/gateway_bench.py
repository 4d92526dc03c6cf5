"""Gateway benchmark: accepted, delivered and copied per second, each next to its limit.

One command (``.venv/bin/python -m bench.gateway_bench``, or ``scripts/bench gateway``)
measures, in the same run, on a SQLite roster (or ``--postgres URL``: a database of the
run's own, dropped afterwards), with the gateway in a process of its own
(bench/gateway_runner.py) so that it never shares an interpreter with the load:

1. accepted per second: ``smtp-source -s 20 -l 10240 -m 2000`` (20 sessions, 10 KB
   messages to a covered person) against Debian's Postfix queueing without delivering
   (its own configuration directory and queue in a temp directory, its own loopback
   port), then against the gateway with delivery and standby copies paused;
2. delivered per second: the gateway delivering only, from the queue that (1) filled to
   ``smtp-sink`` (Postfix's C sink, its own process) until the queue is empty, next to a
   bare smtplib loop sending the same messages to the same sink over as many
   connections as the gateway has delivery workers (the raw limit);
3. standby copies per second: the gateway copying only, into a real Dovecot, next to
   Dovecot's own LMTP rate over 8 raw connections (bench/standby_bench.py's raw_lmtp);
4. the gateway process's memory (VmRSS from /proc every second) at 10%, 50% and 100%
   of each of its runs: with ``--messages 100000`` that is the long run that shows
   whether the peak stays flat (``--only accept,deliver`` took 16 minutes here, the
   copies add about as much again).

Every measure runs a few turns, alternating which side goes first, and the medians are
compared: this machine's speed drifts. Packages missing (postfix, dovecot-imapd,
dovecot-lmtpd) are installed when run as root; otherwise the line to run is printed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import smtplib
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, overload

ROOT = Path(__file__).resolve().parent.parent
SENDER = "s@sender.test"
RECIPIENT = "ana@acme.test"
ACCEPT_TARGET = 1.0
MEASURES = {"accept", "deliver", "copy"}
COPY_TARGET = 0.8
# What each measure needs, by the file it runs, and the Debian package that has it.
NEEDED = {
    "/usr/sbin/smtp-source": "postfix",
    "/usr/sbin/smtp-sink": "postfix",
    "/usr/sbin/postfix": "postfix",
    "/usr/sbin/dovecot": "dovecot-imapd",
    "/usr/lib/dovecot/lmtp": "dovecot-lmtpd",
}


# ---------------------------------------------------------------------------
# Set-up
# ---------------------------------------------------------------------------
def ensure_packages() -> None:
    """Install the Debian packages the benchmark runs (as root), or say how."""
    missing = sorted({package for path, package in NEEDED.items() if not Path(path).exists()})
    if not missing:
        return
    line = "apt-get install -y " + " ".join(missing)
    if os.geteuid() != 0:
        sys.exit(f"gateway benchmark: missing packages; as root run:\n  {line}")
    print(f"gateway benchmark: installing {', '.join(missing)}", file=sys.stderr)
    environment = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    if "postfix" in missing:
        # No system mail server: the benchmark runs its own Postfix instance.
        subprocess.run(
            ["debconf-set-selections"],
            input=b"postfix postfix/main_mailer_type select No configuration\n",
            check=True,
        )
    if subprocess.run(["apt-get", "install", "-y", *missing], env=environment).returncode:
        subprocess.run(["apt-get", "update"], env=environment, check=True)
        subprocess.run(["apt-get", "install", "-y", *missing], env=environment, check=True)


def free_port() -> int:
    """A TCP port nobody listens on right now on 127.0.0.1."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_for_port(port: int, timeout: float = 30.0) -> None:
    """Until something accepts connections on 127.0.0.1:port."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port}")


def make_database(postgres: str | None, workdir: Path) -> str:
    """A SQLite file in the work directory, or a new PostgreSQL database; migrated, with
    acme.test active and Ana covered, her primary at the sink (set later)."""
    from roster.db import make_engine, upgrade

    if postgres:
        from sqlalchemy import create_engine, text
        from sqlalchemy.engine import make_url

        name = f"continuity_gateway_bench_{os.getpid()}"
        admin = create_engine(postgres, isolation_level="AUTOCOMMIT")
        with admin.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
        admin.dispose()
        url = make_url(postgres).set(database=name).render_as_string(hide_password=False)
    else:
        url = f"sqlite:///{workdir}/roster.db"
    engine = make_engine(url, create=True)
    upgrade(engine)
    engine.dispose()
    return url


def drop_database(postgres: str, url: str) -> None:
    """Drop the run's PostgreSQL database."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    admin = create_engine(postgres, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'DROP DATABASE IF EXISTS "{make_url(url).database}" WITH (FORCE)'))
    admin.dispose()


def mailboxes(count: int) -> list[str]:
    """The covered people whose standby mailboxes the copies go to: Ana, then others."""
    return [RECIPIENT, *(f"copy{n:02d}@acme.test" for n in range(1, count))]


def add_people(url: str, primary_port: int, count: int) -> None:
    """acme.test, active for all its users, its primary the sink; Ana and the others
    whose mailboxes take the standby copies, all covered."""
    from sqlalchemy.orm import Session

    from roster.db import make_engine
    from roster.domains import add_domain, parse_primary
    from roster.models import Person

    engine = make_engine(url)
    with Session(engine) as session, session.begin():
        acme = add_domain(session, "acme.test", "bench", parse_primary(f"127.0.0.1:{primary_port}"))
        acme.primary_tls = "none"
        acme.continuity_active = True
        session.flush()
        for address in mailboxes(count):
            local = address.split("@")[0]
            session.add(
                Person(
                    domain_id=acme.id,
                    source="bench",
                    external_id=local,
                    dn=f"uid={local}",
                    mail=address,
                )
            )
    engine.dispose()


def spread_copies(url: str, count: int) -> None:
    """Send the queued standby copies to ``count`` mailboxes in turn instead of all to
    Ana's: smtp-source has one recipient, and Dovecot writes one Maildir at a time
    (about 190 deliveries a second here whoever sends them)."""
    if count < 2:
        return
    from sqlalchemy import text

    from roster.db import make_engine

    engine = make_engine(url)
    with engine.begin() as connection:
        connection.execute(
            text(
                "UPDATE standby_copy SET mailbox = CASE WHEN id % :n = 0 THEN :ana"
                " ELSE 'copy' || substr(CAST(100 + id % :n AS VARCHAR), 2) || '@acme.test' END"
            ),
            {"n": count, "ana": RECIPIENT},
        )
    engine.dispose()


def write_config(path: Path, url: str, args: argparse.Namespace, lmtp: tuple[str, int]) -> int:
    """The gateway's TOML; returns the port it listens on."""
    port = free_port()
    path.write_text(
        f'[database]\nurl = "{url}"\n\n'
        f'[gateway]\nlisten = "127.0.0.1:{port}"\nhostname = "gateway.bench"\n'
        f"allow_local_primary = true\ndelivery_workers = {args.delivery_workers}\n"
        f"copy_workers = {args.copy_workers}\n\n"
        f'[standby]\nlmtp = "{lmtp[0]}:{lmtp[1]}"\n'
        f"copy_connections = {args.lmtp_connections}\n",
        encoding="utf-8",
    )
    return port


# ---------------------------------------------------------------------------
# Postfix, queueing without delivering (RECIPES.md), in a directory of its own
# ---------------------------------------------------------------------------
class Postfix:
    """Debian's Postfix with its own configuration directory, queue and loopback port:
    relays acme.test to a port where nothing listens, with smtp deliveries deferred."""

    def __init__(self, workdir: Path) -> None:
        self.dir = workdir / "postfix"
        self.etc = self.dir / "etc"
        self.port = free_port()

    def _postconf(self, *words: str) -> None:
        subprocess.run(["postconf", "-c", str(self.etc), *words], check=True)

    def start(self) -> None:
        """Write the configuration and start the instance."""
        import pwd

        for name in ("etc", "spool", "data"):
            (self.dir / name).mkdir(parents=True)
        self.dir.chmod(0o755)
        os.chown(self.dir / "data", pwd.getpwnam("postfix").pw_uid, -1)
        shutil.copy("/usr/share/postfix/main.cf.debian", self.etc / "main.cf")
        shutil.copy("/usr/share/postfix/master.cf.dist", self.etc / "master.cf")
        self._postconf(
            "-e",
            f"queue_directory={self.dir / 'spool'}",
            f"data_directory={self.dir / 'data'}",
            "compatibility_level=3.6",
            "myhostname=postfix.bench",
            "mydestination=",
            "alias_maps=",
            "alias_database=",
            "relay_domains=acme.test",
            "relayhost=[127.0.0.1]:1",
            "defer_transports=smtp",
            "inet_interfaces=loopback-only",
            "inet_protocols=ipv4",
            "mynetworks=127.0.0.0/8",
            f"maillog_file={self.dir / 'postfix.log'}",
            f"maillog_file_prefixes={self.dir}",
        )
        self._postconf("-M#", "smtp/inet")
        self._postconf(
            "-M", f"127.0.0.1:{self.port}/inet=127.0.0.1:{self.port} inet n - n - - smtpd"
        )
        self._postconf("-F", "*/*/chroot=n")
        subprocess.run(["postfix", "-c", str(self.etc), "start"], check=True, capture_output=True)
        wait_for_port(self.port)

    def queued(self) -> int:
        """How many messages its queue holds."""
        out = subprocess.run(
            ["postqueue", "-c", str(self.etc), "-p"], capture_output=True, text=True, check=False
        ).stdout.strip()
        last = out.splitlines()[-1] if out else ""
        return int(last.split()[-2]) if last.startswith("--") else 0

    def settle(self, timeout: float = 30.0) -> int:
        """How many messages its queue holds once the count stops moving (the last
        messages of a run are still being filed by cleanup when the client is done)."""
        deadline = time.monotonic() + timeout
        count = self.queued()
        while True:
            time.sleep(0.3)
            again = self.queued()
            if again == count:
                return count
            if time.monotonic() > deadline:
                raise RuntimeError(f"Postfix's queue did not settle ({count}, then {again})")
            count = again

    def clean(self) -> None:
        """Delete every queued message, once the queue has settled (a run's last
        messages filed after the delete would be counted in the next run's)."""
        deadline = time.monotonic() + 30
        while self.settle():
            if time.monotonic() > deadline:
                raise RuntimeError("Postfix's queue could not be emptied")
            subprocess.run(
                ["postsuper", "-c", str(self.etc), "-d", "ALL"], capture_output=True, check=False
            )

    def stop(self) -> None:
        """Empty the queue and stop."""
        if not (self.etc / "main.cf").exists():
            return
        self.clean()
        subprocess.run(["postfix", "-c", str(self.etc), "stop"], capture_output=True, check=False)


# ---------------------------------------------------------------------------
# The gateway in its own process
# ---------------------------------------------------------------------------
@dataclass
class Run:
    """One timed run of the gateway process, with its memory samples."""

    seconds: float
    report: dict[str, Any]
    rss_kb: list[tuple[float, int]] = field(default_factory=list)  # (seconds in, VmRSS)

    def rss_at(self, fraction: float) -> int:
        """VmRSS of the last sample taken by ``fraction`` of the run (kB)."""
        moment = self.seconds * fraction
        before = [kb for at, kb in self.rss_kb if at <= moment + 1e-6]
        return before[-1] if before else self.rss_kb[0][1]


def _vm_rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


class GatewayProcess:
    """bench/gateway_runner.py with some parts of the gateway running."""

    def __init__(self, config: Path, parts: str, log: Path, profile: Path | None) -> None:
        command = [sys.executable, "-m", "bench.gateway_runner", str(config), "--parts", parts]
        if profile is not None:
            command += ["--profile", str(profile)]
        self._log = log.open("ab")
        self.process = subprocess.Popen(
            command,
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
        )
        self._expect("ready")
        self.samples: list[tuple[float, int]] = []
        self._started = 0.0
        self._sampling = threading.Event()
        self._sampler = threading.Thread(target=self._sample, daemon=True)

    def _line(self) -> str:
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line:
            self._log.flush()
            tail = Path(self._log.name).read_text(errors="replace")[-2000:]
            raise RuntimeError(f"the gateway process ended; its log ends:\n{tail}")
        return line.strip()

    def _expect(self, word: str) -> None:
        line = self._line()
        if line != word:
            raise RuntimeError(f"the gateway process said {line!r}, not {word!r}")

    def _send(self, word: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(word + "\n")
        self.process.stdin.flush()

    def go(self) -> float:
        """Start the gateway; the moment (perf_counter) it was told to."""
        self._started = time.perf_counter()
        self._send("go")
        self._expect("started")
        self._sampler.start()
        return self._started

    def _sample(self) -> None:
        while True:
            try:
                rss = _vm_rss(self.process.pid)
            except OSError:
                return
            self.samples.append((time.perf_counter() - self._started, rss))
            if self._sampling.wait(1.0):
                return

    def stop(self, seconds: float) -> Run:
        """Stop the gateway; the run with its report and memory samples."""
        self.samples.append((time.perf_counter() - self._started, _vm_rss(self.process.pid)))
        self._sampling.set()
        self._sampler.join()
        self._send("stop")
        report = json.loads(self._line())
        self.process.wait(timeout=120)
        self._log.close()
        return Run(seconds, report, list(self.samples))

    def kill(self) -> None:
        """Make sure the process is gone (after a failure)."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self._sampling.set()
        self._log.close()


@contextmanager
def gateway(
    config: Path, parts: str, workdir: Path, name: str, profile_dir: Path | None
) -> Iterator[GatewayProcess]:
    """A gateway process for one run, killed if the run fails."""
    profile = profile_dir / f"{name}.txt" if profile_dir else None
    process = GatewayProcess(config, parts, workdir / f"{name}.log", profile)
    try:
        yield process
    finally:
        process.kill()


def pending(url: str, table: str) -> int:
    """Recipients still to deliver, or standby copies still to make."""
    from sqlalchemy import text

    from roster.db import make_engine

    status = "('queued', 'deferred')" if table == "mail_recipient" else "('pending')"
    engine = make_engine(url)
    with engine.connect() as connection:
        count = connection.scalar(text(f"SELECT count(*) FROM {table} WHERE status IN {status}"))  # noqa: S608 - our names
    engine.dispose()
    return int(count or 0)


def wait_until_done(url: str, table: str, timeout: float) -> float:
    """Poll until nothing is pending in ``table``; the moment (perf_counter) it was so."""
    from sqlalchemy import text

    from roster.db import make_engine

    status = "('queued', 'deferred')" if table == "mail_recipient" else "('pending')"
    query = text(f"SELECT 1 FROM {table} WHERE status IN {status} LIMIT 1")  # noqa: S608 - our names
    engine = make_engine(url)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            with engine.connect() as connection:
                if connection.scalar(query) is None:
                    return time.perf_counter()
            time.sleep(0.02)
    finally:
        engine.dispose()
    raise RuntimeError(f"{pending(url, table)} rows of {table} still pending after {timeout} s")


def clear_queue(url: str) -> None:
    """Empty the queue's tables between turns."""
    from sqlalchemy import text

    from roster.db import make_engine

    engine = make_engine(url)
    with engine.begin() as connection:
        for table in ("standby_copy", "mail_recipient", "mail_message"):
            connection.execute(text(f"DELETE FROM {table}"))  # noqa: S608 - our names
    engine.dispose()


class Bodies(Sequence[bytes]):
    """``count`` messages cycling through a few stored ones (a long run's bodies are not
    all held in memory)."""

    def __init__(self, stored: list[bytes], count: int) -> None:
        self._stored = stored
        self._count = count

    def __len__(self) -> int:
        return self._count

    @overload
    def __getitem__(self, index: int) -> bytes: ...
    @overload
    def __getitem__(self, index: slice) -> Sequence[bytes]: ...
    def __getitem__(self, index: int | slice) -> bytes | Sequence[bytes]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(self._count))]
        if not -self._count <= index < self._count:
            raise IndexError(index)
        return self._stored[index % self._count % len(self._stored)]


def stored_bodies(url: str, limit: int = 2000) -> list[bytes]:
    """Bodies of the queued messages, as the gateway stored them (Received line in)."""
    from sqlalchemy import text

    from roster.db import make_engine

    engine = make_engine(url)
    with engine.connect() as connection:
        rows = connection.execute(
            text("SELECT body FROM mail_message ORDER BY queue_id LIMIT :n"), {"n": limit}
        )
        bodies = [bytes(row[0]) for row in rows]
    engine.dispose()
    return bodies


# ---------------------------------------------------------------------------
# The measures
# ---------------------------------------------------------------------------
def smtp_source(port: int, args: argparse.Namespace) -> float:
    """Seconds smtp-source takes to send the load to 127.0.0.1:port."""
    command = [
        "smtp-source",
        "-s",
        str(args.sessions),
        "-l",
        str(args.size),
        "-m",
        str(args.messages),
        "-f",
        SENDER,
        "-t",
        RECIPIENT,
        f"127.0.0.1:{port}",
    ]
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - started
    if done.returncode != 0 or done.stderr.strip():
        raise RuntimeError(f"smtp-source failed ({done.returncode}): {done.stderr[-500:]}")
    return seconds


def postfix_accept(postfix: Postfix, args: argparse.Namespace) -> float:
    """Messages per second Postfix accepts into its queue."""
    postfix.clean()
    seconds = smtp_source(postfix.port, args)
    queued = postfix.settle()
    postfix.clean()
    if queued != args.messages:
        raise RuntimeError(f"Postfix queued {queued} of {args.messages} messages")
    return int(args.messages) / seconds


def gateway_accept(config: Path, port: int, url: str, ctx: Context, name: str) -> Run:
    """Messages per second the gateway accepts, delivery and copies paused."""
    with gateway(config, "receive", ctx.workdir, name, ctx.profile_dir) as process:
        process.go()
        seconds = smtp_source(port, ctx.args)
        run = process.stop(seconds)
    if run.report["committed"] != ctx.args.messages:
        raise RuntimeError(f"the gateway stored {run.report['committed']} messages")
    return run


def gateway_drain(config: Path, url: str, parts: str, table: str, ctx: Context, name: str) -> Run:
    """The gateway with one part running, until ``table`` has nothing pending."""
    with gateway(config, parts, ctx.workdir, name, ctx.profile_dir) as process:
        started = process.go()
        finished = wait_until_done(url, table, timeout=max(600.0, ctx.args.messages / 10))
        return process.stop(finished - started)


def raw_smtp(port: int, bodies: Sequence[bytes], connections: int) -> float:
    """Messages per second a bare smtplib loop sends over ``connections`` connections."""
    from bench.standby_bench import _run_threads

    def work(index: int) -> None:
        client = smtplib.SMTP("127.0.0.1", port, local_hostname="raw.bench", timeout=60)
        client.ehlo()
        for number in range(index, len(bodies), connections):
            client.sendmail(SENDER, [RECIPIENT], bodies[number])
        client.quit()

    return len(bodies) / _run_threads(connections, work)


@dataclass
class Context:
    """What every measure of the run needs."""

    args: argparse.Namespace
    workdir: Path
    profile_dir: Path | None


@dataclass
class Figures:
    """Per-turn rates of each side of each measure, and the gateway's runs."""

    rates: dict[str, list[float]] = field(default_factory=dict)
    runs: dict[str, list[Run]] = field(default_factory=dict)

    def add(self, name: str, rate: float, run: Run | None = None) -> None:
        """One turn's rate (and the run behind it)."""
        self.rates.setdefault(name, []).append(rate)
        if run is not None:
            self.runs.setdefault(name, []).append(run)

    def median(self, name: str) -> float:
        """The median rate of ``name`` over the turns."""
        return statistics.median(self.rates[name])


def sides_of(name: str, turn: int, args: argparse.Namespace) -> tuple[str, ...]:
    """The two sides of a measure in this turn's order; none when it is not asked for."""
    if name not in args.only:
        return ()
    return ("gateway", "raw") if turn % 2 == 0 else ("raw", "gateway")


def measure(args: argparse.Namespace, workdir: Path, url: str, out: IO[str]) -> Figures:
    """Run every turn of every measure; the figures."""
    from bench.standby_bench import raw_lmtp
    from gateway.standby_users import write_users_file
    from tests.servers.dovecot import DovecotServer

    ctx = Context(args, workdir, args.profile.resolve() if args.profile else None)
    if ctx.profile_dir:
        ctx.profile_dir.mkdir(parents=True, exist_ok=True)
    figures = Figures()
    with ExitStack() as stack:
        sink_port = free_port()
        sink = subprocess.Popen(
            ["smtp-sink", "-u", "nobody", "-4", f"127.0.0.1:{sink_port}", "256"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        stack.callback(sink.wait)
        stack.callback(sink.terminate)
        wait_for_port(sink_port)
        boxes = mailboxes(args.mailboxes)
        add_people(url, sink_port, args.mailboxes)
        dovecot = stack.enter_context(DovecotServer())
        write_users_file(dovecot.users_file, boxes)
        postfix = Postfix(workdir)
        stack.callback(postfix.stop)
        postfix.start()
        # Warm up: Postfix's smtpd and cleanup processes start and stay, as on a server.
        smtp_source(postfix.port, argparse.Namespace(**{**vars(args), "messages": 200}))
        postfix.clean()
        config = workdir / "gateway.toml"
        port = write_config(config, url, args, dovecot.lmtp)
        time.sleep(1.1)  # Dovecot looks at the users file at most once a second
        for turn in range(args.turns):
            print(f"turn {turn + 1} of {args.turns}...", file=out, flush=True)
            # 1. accepted per second, the side going first alternating
            sides = ["postfix", "gateway"] if turn % 2 == 0 else ["gateway", "postfix"]
            for side in sides:
                if side == "postfix":
                    figures.add("postfix_accept", postfix_accept(postfix, args))
                else:
                    run = gateway_accept(config, port, url, ctx, f"accept-{turn + 1}")
                    figures.add("gateway_accept", args.messages / run.seconds, run)
            bodies = Bodies(stored_bodies(url), args.messages)
            # 2. delivered per second, next to a bare smtplib loop to the same sink
            for side in sides_of("deliver", turn, args):
                if side == "raw":
                    figures.add("raw_smtp", raw_smtp(sink_port, bodies, args.delivery_workers))
                else:
                    run = gateway_drain(
                        config, url, "deliver", "mail_recipient", ctx, f"deliver-{turn + 1}"
                    )
                    figures.add("gateway_deliver", args.messages / run.seconds, run)
            # 3. standby copies per second, next to Dovecot's own LMTP rate
            spread_copies(url, args.mailboxes)
            for side in sides_of("copy", turn, args):
                if side == "raw":
                    figures.add(
                        "dovecot_lmtp",
                        raw_lmtp(dovecot, bodies, boxes, args.lmtp_connections),  # type: ignore[arg-type]
                    )
                else:
                    run = gateway_drain(
                        config, url, "copy", "standby_copy", ctx, f"copy-{turn + 1}"
                    )
                    figures.add("gateway_copy", args.messages / run.seconds, run)
            clear_queue(url)
    return figures


# ---------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------
def report(args: argparse.Namespace, figures: Figures, database: str) -> dict[str, Any]:
    """The figures as one JSON-able object."""
    medians = {name: round(figures.median(name), 1) for name in figures.rates}
    pairs = {
        "accept": ("gateway_accept", "postfix_accept"),
        "deliver": ("gateway_deliver", "raw_smtp"),
        "copy": ("gateway_copy", "dovecot_lmtp"),
    }
    ratios = {
        measure: medians[ours] / medians[limit]
        for measure, (ours, limit) in pairs.items()
        if ours in medians
    }
    memory = {}
    for name, runs in figures.runs.items():
        longest = max(runs, key=lambda run: run.seconds)
        memory[name] = {
            "rss_mb_at_10_50_100": [round(longest.rss_at(f) / 1024, 1) for f in (0.1, 0.5, 1.0)],
            # Linux updates VmHWM lazily: it can be below an RSS sampled earlier.
            "peak_mb": round(
                max(max(run.report.get("VmHWM", 0), *(kb for _, kb in run.rss_kb)) for run in runs)
                / 1024,
                1,
            ),
        }
    accepts = figures.runs["gateway_accept"]
    group = [run.report["committed"] / max(run.report["commits"], 1) for run in accepts]
    busy = [run.report.get("commit_seconds", 0.0) / run.seconds for run in accepts]
    per_commit = [
        1000 * run.report.get("commit_seconds", 0.0) / max(run.report["commits"], 1)
        for run in accepts
    ]
    return {
        "database": database,
        "messages": args.messages,
        "size": args.size,
        "sessions": args.sessions,
        "turns": args.turns,
        "rates": {name: [round(r, 1) for r in rates] for name, rates in figures.rates.items()},
        "medians": medians,
        "ratios": {name: round(value, 3) for name, value in ratios.items()},
        "targets": {"accept": ACCEPT_TARGET, "copy": COPY_TARGET},
        "messages_per_commit": round(statistics.median(group), 1),
        "committer_busy": round(statistics.median(busy), 2),
        "ms_per_commit": round(statistics.median(per_commit), 1),
        "memory": memory,
    }


def print_table(result: dict[str, Any], args: argparse.Namespace) -> None:
    """The figures as a table, like the other benchmarks."""
    medians, ratios, rates = result["medians"], result["ratios"], result["rates"]
    print(
        f"gateway: {args.messages} messages of {args.size} bytes, {args.sessions} sessions, "
        f"{result['database']} roster; median of {args.turns} turns (per-turn rates in brackets)"
    )
    rows = [
        ("Postfix accepting, smtp-source (the limit)", "postfix_accept", None, None),
        (
            "gateway accepting, delivery and copies paused",
            "gateway_accept",
            "accept",
            ACCEPT_TARGET,
        ),
        (
            f"bare smtplib to smtp-sink, {args.delivery_workers} connections (the limit)",
            "raw_smtp",
            None,
            None,
        ),
        (
            f"gateway delivering, {args.delivery_workers} workers",
            "gateway_deliver",
            "deliver",
            None,
        ),
        (
            f"Dovecot LMTP, {args.lmtp_connections} raw connections (the limit)",
            "dovecot_lmtp",
            None,
            None,
        ),
        (
            f"gateway standby copies, {args.copy_workers} copiers",
            "gateway_copy",
            "copy",
            COPY_TARGET,
        ),
    ]
    print(f"  {'run':62} {'messages/s':>10} {'ratio':>6} {'target':>7}  turns")
    for label, name, ratio, target in rows:
        if name not in medians:
            continue
        shown_ratio = f"{ratios[ratio]:.2f}" if ratio else "1.00"  # a limit is 1
        shown_target = f">= {target}" if target else "-"
        turns = ", ".join(f"{rate:.0f}" for rate in rates[name])
        print(f"  {label:62} {medians[name]:10.1f} {shown_ratio:>6} {shown_target:>7}  ({turns})")
    print(
        f"  group commit, median of the accept turns: {result['messages_per_commit']} messages "
        f"a commit, {result['ms_per_commit']} ms a commit, the committing threads busy "
        f"{result['committer_busy']:.0%} of the run (summed over them: one on SQLite, two on"
        " PostgreSQL)"
    )
    print("  gateway process memory, VmRSS at 10% / 50% / 100% of its longest run, and peak:")
    for name, memory in result["memory"].items():
        at = " / ".join(f"{mb:.0f}" for mb in memory["rss_mb_at_10_50_100"])
        print(f"    {name:16} {at} MB, peak {memory['peak_mb']:.0f} MB")


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print the figures; exit 1 when a target is missed."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=2000, help="messages per turn")
    parser.add_argument("--size", type=int, default=10_240, help="bytes per message")
    parser.add_argument("--sessions", type=int, default=20, help="smtp-source sessions")
    parser.add_argument(
        "--turns", type=int, help="turns of each measure (3; 1 from 10,001 messages up)"
    )
    parser.add_argument("--delivery-workers", type=int, default=4, help="the gateway's default")
    parser.add_argument(
        "--copy-workers", type=int, default=8, help="the gateway's default (its LMTP connections)"
    )
    parser.add_argument(
        "--mailboxes", type=int, default=20, help="standby mailboxes the copies go to"
    )
    parser.add_argument("--lmtp-connections", type=int, default=8, help="both sides' LMTP")
    parser.add_argument(
        "--postgres",
        metavar="URL",
        help="run on PostgreSQL: a database of the run's own is made (and dropped) there",
    )
    parser.add_argument(
        "--profile", type=Path, metavar="DIR", help="cProfile each gateway run into DIR"
    )
    parser.add_argument(
        "--only",
        default="accept,deliver,copy",
        help="comma-separated measures to run (accept, deliver, copy): deliver and copy "
        "work on the messages accept queued, so it always runs",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    if not 1 <= args.mailboxes <= 100:
        parser.error("--mailboxes: from 1 to 100")
    args.only = {name.strip() for name in args.only.split(",") if name.strip()} | {"accept"}
    if args.only - MEASURES:
        parser.error(f"--only: unknown {', '.join(sorted(args.only - MEASURES))}")
    if args.turns is None:
        args.turns = 3 if args.messages <= 10_000 else 1
    ensure_packages()

    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="continuity-gateway-bench-") as tmp:
        workdir = Path(tmp)
        workdir.chmod(0o755)
        url = make_database(args.postgres, workdir)
        try:
            figures = measure(args, workdir, url, sys.stderr)
        finally:
            if args.postgres:
                drop_database(args.postgres, url)
    result = report(args, figures, "PostgreSQL" if args.postgres else "SQLite")
    result["seconds"] = round(time.monotonic() - started, 1)
    if args.json:
        print(json.dumps(result))
    else:
        print_table(result, args)
        print(f"  ({result['seconds']:.0f} s in all)")
    targets = {"accept": ACCEPT_TARGET, "copy": COPY_TARGET}
    met = all(
        result["ratios"][name] >= target
        for name, target in targets.items()
        if name in result["ratios"]
    )
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
