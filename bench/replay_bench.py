"""Hand-back benchmark (issue #10): held messages handed back to the primary, next to
the rate a bare smtplib loop reaches against the same primary in the same run.

One command (``.venv/bin/python -m bench.replay_bench``, or ``scripts/bench replay``)
measures, on a SQLite roster (or ``--postgres URL``: a database of the run's own, dropped
afterwards), with the pieces of the gateway benchmark (bench/gateway_bench.py):

- set-up, each turn: acme.test with its primary at ``smtp-sink`` (Postfix's C sink, a
  process of its own), its probe_interval_seconds 1 and recover_after 1; a continuity
  event opened as an admin would (roster.continuity.start_event); then ``--messages``
  messages of ``--size`` bytes for Ana, who is covered, stored with roster.queue.store
  in transactions of ``--batch`` messages (what the receiver's group commit does, without
  the SMTP in front: the set-up is not what is measured). They are held, their standby
  copies queued, as the receiver leaves them during an event;
- the hand-back: the gateway in a process of its own (bench/gateway_runner.py), its
  monitor and its delivery runners only; the monitor's first check sees the primary
  answer and starts the recovery, the runners hand the held mail back, the monitor ends
  the event once none is left. The figures are the event's own: from
  ``recovery_started_at`` to ``ended_at`` (the rate is ``--messages`` over that), and the
  wall time from starting the gateway until the event has ended;
- the limit: a bare smtplib loop sending the same messages to the same sink over as many
  connections as the gateway has delivery workers (gateway_bench.raw_smtp).

Turns alternate which side goes first and the medians are compared: this machine's
speed drifts. The target is the issue's: the hand-back of 10,000 messages in under 60 s.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Any

from bench.gateway_bench import (
    RECIPIENT,
    SENDER,
    Bodies,
    Run,
    add_people,
    clear_queue,
    drop_database,
    ensure_packages,
    free_port,
    gateway,
    make_database,
    raw_smtp,
    wait_for_port,
    write_config,
)

TARGET_SECONDS = 60.0
DISTINCT_BODIES = 50  # the bodies cycle through these (the raw loop sends the same)


def make_bodies(size: int) -> list[bytes]:
    """A few distinct messages of ``size`` bytes, headers included."""
    bodies = []
    for number in range(DISTINCT_BODIES):
        head = (
            f"From: <{SENDER}>\r\nTo: <{RECIPIENT}>\r\nSubject: held {number}\r\n"
            f"Message-ID: <held-{number}@sender.test>\r\n\r\n"
        ).encode()
        line = b"x" * 76 + b"\r\n"
        text = (line * (size // len(line) + 1))[: max(size - len(head), 0)]
        bodies.append(head + text)
    return bodies


def set_up_turn(url: str, args: argparse.Namespace, bodies: Bodies) -> None:
    """An empty queue, acme.test checked every second and handed back after one answer,
    an event open, and the held messages stored."""
    from sqlalchemy import delete, update
    from sqlalchemy.orm import Session

    from roster.continuity import start_event
    from roster.db import make_engine
    from roster.models import ContinuityEvent, Domain, RunLock
    from roster.queue import Incoming, domain_named, new_queue_id, resolve_recipient, store

    clear_queue(url)
    engine = make_engine(url)
    try:
        with Session(engine) as session:
            acme = domain_named(session, "acme.test")
            assert acme is not None
            recipient = resolve_recipient(session, acme, RECIPIENT)
        assert recipient.mailbox, "Ana must be covered"
        with engine.begin() as connection:
            connection.execute(delete(ContinuityEvent))
            connection.execute(delete(RunLock))  # the last turn's monitor lease
            connection.execute(
                update(Domain)
                .where(Domain.id == recipient.domain_id)
                .values(
                    probe_interval_seconds=1,
                    recover_after=1,
                    last_check_at=None,
                    failures_in_a_row=0,
                    successes_in_a_row=0,
                )
            )
            # Open for two minutes; the messages came in over the last one, oldest first.
            start_event(
                connection,
                recipient.domain_id,
                reason="bench outage",
                actor="bench",
                now=datetime.now(UTC) - timedelta(seconds=120),
            )
        first = datetime.now(UTC) - timedelta(seconds=60)
        step = timedelta(seconds=60) / max(args.messages, 1)
        for start in range(0, args.messages, args.batch):
            batch = [
                Incoming(
                    queue_id=new_queue_id(),
                    sender=SENDER,
                    body=bodies[number],
                    recipients=[recipient],
                    message_id=f"<held-{number}@sender.test>",
                    client_address="127.0.0.1",
                    helo="sender.test",
                    received_at=first + step * number,
                )
                for number in range(start, min(start + args.batch, args.messages))
            ]
            with engine.begin() as connection:
                store(connection, batch)
    finally:
        engine.dispose()


def event_times(url: str) -> tuple[datetime | None, datetime | None, int, int]:
    """The bench event's recovery start and end, its held and handed-back counts."""
    from sqlalchemy import select

    from roster.db import make_engine
    from roster.models import ContinuityEvent

    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            row = connection.execute(
                select(
                    ContinuityEvent.recovery_started_at,
                    ContinuityEvent.ended_at,
                    ContinuityEvent.held,
                    ContinuityEvent.handed_back,
                )
            ).one()
    finally:
        engine.dispose()
    return row.recovery_started_at, row.ended_at, row.held, row.handed_back


def wait_for_end(url: str, timeout: float) -> float:
    """Poll until the event has ended; the moment (perf_counter) it was seen so."""
    from sqlalchemy import select

    from roster.db import make_engine
    from roster.models import ContinuityEvent

    query = select(ContinuityEvent.id).where(ContinuityEvent.ended_at.is_not(None))
    engine = make_engine(url)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            with engine.connect() as connection:
                if connection.scalar(query) is not None:
                    return time.perf_counter()
            time.sleep(0.05)
    finally:
        engine.dispose()
    raise RuntimeError(f"the event had not ended after {timeout:.0f} s")


def hand_back(
    config: Path, url: str, args: argparse.Namespace, workdir: Path, name: str
) -> dict[str, float]:
    """One hand-back by the gateway (monitor and delivery runners); its figures."""
    profile_dir = args.profile.resolve() if args.profile else None
    with gateway(config, "deliver", workdir, name, profile_dir) as process:
        started = process.go()
        ended = wait_for_end(url, timeout=max(600.0, args.messages / 10))
        run: Run = process.stop(ended - started)
    recovery, end, held, handed_back = event_times(url)
    if recovery is None or end is None:
        raise RuntimeError("the event ended without a recovery")
    if handed_back != args.messages:
        raise RuntimeError(f"the event handed back {handed_back} of {args.messages} ({held} held)")
    seconds = (end - recovery).total_seconds()
    return {
        "recovery_seconds": seconds,
        "wall_seconds": run.seconds,
        "rate": args.messages / seconds,
        "peak_mb": max(run.report.get("VmHWM", 0), *(kb for _, kb in run.rss_kb)) / 1024,
    }


def measure(args: argparse.Namespace, workdir: Path, url: str, out: IO[str]) -> dict[str, Any]:
    """Every turn of both sides; the per-turn figures."""
    bodies = Bodies(make_bodies(args.size), args.messages)
    turns: dict[str, list[Any]] = {"raw": [], "gateway": [], "setup_seconds": []}
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
        add_people(url, sink_port, 1)
        config = workdir / "gateway.toml"
        # No copier runs here: the standby LMTP address is never used.
        write_config(config, url, args, ("127.0.0.1", 1))
        for turn in range(args.turns):
            print(f"turn {turn + 1} of {args.turns}...", file=out, flush=True)
            started = time.perf_counter()
            set_up_turn(url, args, bodies)
            turns["setup_seconds"].append(time.perf_counter() - started)
            sides = ("gateway", "raw") if turn % 2 == 0 else ("raw", "gateway")
            for side in sides:
                if side == "raw":
                    turns["raw"].append(raw_smtp(sink_port, bodies, args.delivery_workers))
                else:
                    turns["gateway"].append(
                        hand_back(config, url, args, workdir, f"replay-{turn + 1}")
                    )
        clear_queue(url)
    return turns


def report(args: argparse.Namespace, turns: dict[str, Any], database: str) -> dict[str, Any]:
    """The figures as one JSON-able object."""
    runs = turns["gateway"]
    raw = statistics.median(turns["raw"])
    rate = statistics.median(run["rate"] for run in runs)
    recovery = statistics.median(run["recovery_seconds"] for run in runs)
    return {
        "database": database,
        "messages": args.messages,
        "size": args.size,
        "delivery_workers": args.delivery_workers,
        "turns": args.turns,
        "raw_rates": [round(r, 1) for r in turns["raw"]],
        "rates": [round(run["rate"], 1) for run in runs],
        "recovery_seconds": [round(run["recovery_seconds"], 2) for run in runs],
        "wall_seconds": [round(run["wall_seconds"], 2) for run in runs],
        "setup_seconds": [round(s, 1) for s in turns["setup_seconds"]],
        "median_raw_rate": round(raw, 1),
        "median_rate": round(rate, 1),
        "ratio": round(rate / raw, 3),
        "median_recovery_seconds": round(recovery, 2),
        "median_wall_seconds": round(statistics.median(run["wall_seconds"] for run in runs), 2),
        "target_seconds": TARGET_SECONDS,
        "peak_mb": round(max(run["peak_mb"] for run in runs), 1),
    }


def print_table(result: dict[str, Any]) -> None:
    """The figures as a table, like the other benchmarks."""
    print(
        f"replay: hand-back of {result['messages']} held messages of {result['size']} bytes, "
        f"{result['database']} roster; median of {result['turns']} turns (per turn in brackets)"
    )
    workers = result["delivery_workers"]
    print(f"  {'run':58} {'messages/s':>10} {'ratio':>6} {'seconds':>8} {'target':>7}")
    raw = result["median_raw_rate"]
    raw_turns = ", ".join(f"{r:.0f}" for r in result["raw_rates"])
    print(
        f"  {f'bare smtplib to smtp-sink, {workers} connections (the limit)':58} "
        f"{raw:10.1f} {'1.00':>6} {result['messages'] / raw:8.1f} {'-':>7}  ({raw_turns})"
    )
    rate_turns = ", ".join(f"{r:.0f}" for r in result["rates"])
    print(
        f"  {f'gateway hand-back, recovery start to event end, {workers} workers':58} "
        f"{result['median_rate']:10.1f} {result['ratio']:6.2f} "
        f"{result['median_recovery_seconds']:8.1f} {'< 60':>7}  ({rate_turns})"
    )
    wall_turns = ", ".join(f"{s:.1f}" for s in result["wall_seconds"])
    print(
        f"  {'gateway started to event ended (wall)':58} {'':10} {'':6} "
        f"{result['median_wall_seconds']:8.1f} {'':7}  ({wall_turns})"
    )
    print(
        f"  set-up per turn (store, not measured): {', '.join(map(str, result['setup_seconds']))}"
        f" s; gateway process peak memory {result['peak_mb']:.0f} MB"
    )


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print the figures; exit 1 when the target is missed."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=10_000, help="held messages")
    parser.add_argument("--size", type=int, default=10_240, help="bytes per message")
    parser.add_argument("--turns", type=int, default=3, help="turns of both sides")
    parser.add_argument("--batch", type=int, default=1000, help="messages stored a transaction")
    parser.add_argument("--delivery-workers", type=int, default=4, help="the gateway's default")
    parser.add_argument(
        "--postgres",
        metavar="URL",
        help="run on PostgreSQL: a database of the run's own is made (and dropped) there",
    )
    parser.add_argument(
        "--profile", type=Path, metavar="DIR", help="cProfile each gateway run into DIR"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    if args.messages < 1 or args.turns < 1 or args.batch < 1:
        parser.error("--messages, --turns and --batch: at least 1")
    # write_config's other settings; no copier runs in this benchmark.
    args.copy_workers = 1
    args.lmtp_connections = 1
    if args.profile:
        args.profile.mkdir(parents=True, exist_ok=True)
    ensure_packages()

    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="continuity-replay-bench-") as tmp:
        workdir = Path(tmp)
        workdir.chmod(0o755)
        url = make_database(args.postgres, workdir)
        try:
            turns = measure(args, workdir, url, sys.stderr)
        finally:
            if args.postgres:
                drop_database(args.postgres, url)
    result = report(args, turns, "PostgreSQL" if args.postgres else "SQLite")
    result["seconds"] = round(time.monotonic() - started, 1)
    if args.json:
        print(json.dumps(result))
    else:
        print_table(result)
        print(f"  ({result['seconds']:.0f} s in all)")
    return 0 if result["median_recovery_seconds"] < TARGET_SECONDS else 1


if __name__ == "__main__":
    sys.exit(main())
