"""Standby copy benchmark: the gateway's LMTP pool against Dovecot's own LMTP rate.

One command (``.venv/bin/python -m bench.standby_bench``) starts a real Dovecot from
deploy/dovecot/dovecot.conf on loopback ports (tests/servers/dovecot.py) and copies
2,000 messages of 10 KB, each to one of 20 covered mailboxes, two ways in the same run:

1. Dovecot's own rate: 8 threads, each with its own raw ``smtplib.LMTP`` connection
   (LHLO once, then ``sendmail`` per message), the fastest plain client;
2. the gateway's: 8 threads sharing one ``gateway.standby.StandbyStore`` with
   8 pooled connections, ``deliver`` per message, as the copy workers call it.

The two alternate for a few rounds (fresh mailboxes each time, so neither meets fuller
folders); the best round of each is compared. Target: the pool at least 0.8 of
Dovecot's own rate.
"""

from __future__ import annotations

import argparse
import json
import secrets
import smtplib
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from gateway.standby import StandbyStore
from gateway.standby_users import write_users_file
from tests.servers.dovecot import DovecotServer

SENDER = "bench@sender.test"
TARGET_RATIO = 0.8


def _messages(count: int, size: int) -> list[bytes]:
    """``count`` distinct messages of about ``size`` bytes with CRLF line ends."""
    line = b"The standby copy keeps the covered person's mail while the primary is down.\r\n"
    messages = []
    for number in range(count):
        head = (
            f"From: {SENDER}\r\nTo: people@acme.test\r\nSubject: bench {number}\r\n"
            f"Message-ID: <{number}.{secrets.token_hex(6)}@sender.test>\r\n\r\n"
        ).encode()
        body = line * max(1, (size - len(head)) // len(line))
        messages.append(head + body)
    return messages


def _run_threads(threads: int, work: Callable[[int], None]) -> float:
    """Run ``work(index)`` in ``threads`` threads at once; the seconds they took."""
    ready = threading.Barrier(threads + 1)
    errors: list[BaseException] = []

    def body(index: int) -> None:
        ready.wait()
        try:
            work(index)
        except BaseException as error:  # reported after the run
            errors.append(error)

    workers = [threading.Thread(target=body, args=(index,)) for index in range(threads)]
    for worker in workers:
        worker.start()
    ready.wait()
    started = time.perf_counter()
    for worker in workers:
        worker.join()
    elapsed = time.perf_counter() - started
    if errors:
        raise RuntimeError(f"{len(errors)} thread(s) failed: {errors[0]!r}")
    return elapsed


def raw_lmtp(
    server: DovecotServer, messages: list[bytes], mailboxes: list[str], threads: int
) -> float:
    """Messages per second over ``threads`` raw smtplib.LMTP connections."""
    host, port = server.lmtp

    def work(index: int) -> None:
        client = smtplib.LMTP(local_hostname="bench", timeout=60)
        client.connect(host, port)
        client.ehlo()
        for number in range(index, len(messages), threads):
            client.sendmail(SENDER, [mailboxes[number % len(mailboxes)]], messages[number])
        client.quit()

    return len(messages) / _run_threads(threads, work)


def pooled(
    server: DovecotServer, messages: list[bytes], mailboxes: list[str], threads: int
) -> float:
    """Messages per second through one StandbyStore of ``threads`` connections."""
    store = StandbyStore(*server.lmtp, connections=threads, timeout=60)
    failures: list[str] = []

    def work(index: int) -> None:
        for number in range(index, len(messages), threads):
            mailbox = mailboxes[number % len(mailboxes)]
            result = store.deliver(messages[number], [mailbox], sender=SENDER)[mailbox]
            if not result.copied:
                failures.append(result.reply)

    try:
        rate = len(messages) / _run_threads(threads, work)
    finally:
        store.close()
    if failures:
        raise RuntimeError(f"{len(failures)} copies failed: {failures[0]}")
    return rate


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print the figures; exit 1 below the target ratio."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--size", type=int, default=10_240, help="bytes per message")
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--mailboxes", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)

    messages = _messages(args.messages, args.size)
    runs: dict[str, list[float]] = {"dovecot_lmtp": [], "standby_pool": []}
    with DovecotServer() as server:
        every: list[str] = []
        plan: list[tuple[str, list[str]]] = []
        for round_number in range(args.rounds):
            for mode in ("dovecot_lmtp", "standby_pool"):
                boxes = [
                    f"bench{round_number}-{mode[:4]}-{n:02d}@acme.test"
                    for n in range(args.mailboxes)
                ]
                every += boxes
                plan.append((mode, boxes))
        write_users_file(server.users_file, every)
        time.sleep(1.1)  # Dovecot looks at the users file at most once a second
        # Warm up: the first LMTP and auth processes start.
        raw_lmtp(server, messages[: args.connections * 4], plan[0][1], args.connections)
        for round_number in range(args.rounds):
            pair = plan[2 * round_number : 2 * round_number + 2]
            if round_number % 2:
                pair.reverse()  # alternate who goes first
            for mode, boxes in pair:
                measure = raw_lmtp if mode == "dovecot_lmtp" else pooled
                runs[mode].append(measure(server, messages, boxes, args.connections))

    best = {mode: max(rates) for mode, rates in runs.items()}
    ratio = best["standby_pool"] / best["dovecot_lmtp"]
    report: dict[str, Any] = {
        "messages": args.messages,
        "size": args.size,
        "connections": args.connections,
        "rounds": {mode: [round(rate, 1) for rate in rates] for mode, rates in runs.items()},
        "dovecot_lmtp_per_second": round(best["dovecot_lmtp"], 1),
        "standby_pool_per_second": round(best["standby_pool"], 1),
        "ratio": round(ratio, 3),
        "target_ratio": TARGET_RATIO,
    }
    if args.json:
        print(json.dumps(report))
    else:
        print(
            f"standby copies: {args.messages} messages of {args.size} bytes, "
            f"{args.connections} connections, best of {args.rounds} rounds"
        )
        for mode, label in (
            ("dovecot_lmtp", "Dovecot LMTP, raw smtplib.LMTP"),
            ("standby_pool", "gateway StandbyStore pool  "),
        ):
            rates = ", ".join(f"{rate:.0f}" for rate in runs[mode])
            print(f"  {label}: {best[mode]:7.1f} messages/s  (rounds: {rates})")
        print(f"  ratio {ratio:.3f} (target >= {TARGET_RATIO})")
    return 0 if ratio >= TARGET_RATIO else 1


if __name__ == "__main__":
    sys.exit(main())
