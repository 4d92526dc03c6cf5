"""One gateway for the gateway benchmark, in a process of its own.

``continuity gateway`` runs every part of the gateway; the benchmark needs some parts
paused (receiving with delivery and standby copies paused, as Postfix's deliveries are;
delivering alone; copying alone), so this module builds ``Gateway(config, receive=...,
deliver=..., copy=...)`` the way the command does otherwise: same configuration file,
same engine, same logging level (warnings only, the command's default).

It talks to the benchmark over its standard streams, one line at a time:

- it prints ``ready`` once the gateway is built (imports and configuration done);
- on ``go`` it starts the gateway and prints ``started`` (the receiver listens by then);
- on ``stop`` (or at the end of its input) it stops the gateway and prints one JSON
  line: the group committer's counters and the process's peak memory.

With ``--profile FILE`` every thread of the process runs under cProfile (the receiver's
event loop, the group committer, the executor threads of the roster look-ups, the
runners, the copiers) and FILE gets the merged figures.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import logging
import pstats
import sys
import threading
import time
from pathlib import Path
from typing import Any

PARTS = ("receive", "deliver", "copy")


class ThreadProfiles:
    """cProfile in every thread started from now on (and in this one)."""

    def __init__(self) -> None:
        self.profiles: list[tuple[str, cProfile.Profile]] = []
        self._lock = threading.Lock()
        self._original_run = threading.Thread.run

    def install(self) -> None:
        """Wrap Thread.run so that each new thread profiles itself."""
        profiles = self
        original = self._original_run

        def run(thread: threading.Thread) -> None:
            profile = cProfile.Profile()
            with profiles._lock:
                profiles.profiles.append((thread.name, profile))
            profile.enable()
            try:
                original(thread)
            finally:
                profile.disable()

        threading.Thread.run = run  # type: ignore[method-assign,assignment]
        main = cProfile.Profile()
        self.profiles.append(("main", main))
        main.enable()

    def write(self, path: Path) -> None:
        """The merged figures, by own time and by cumulative time, and each thread's
        total, as text into ``path``."""
        with self._lock:
            profiles = list(self.profiles)
        merged: pstats.Stats | None = None
        per_thread: dict[str, float] = {}
        for name, profile in profiles:
            profile.disable()  # only stops the calling thread's; then snapshots
            profile.create_stats()
            stats = pstats.Stats(profile)
            kind = name.split("_")[0].rstrip("0123456789-")
            per_thread[kind] = per_thread.get(kind, 0.0) + stats.total_tt  # type: ignore[attr-defined]
            merged = stats if merged is None else merged.add(stats)
        with path.open("w", encoding="utf-8") as out:
            out.write("seconds of CPU and waiting profiled per kind of thread:\n")
            for kind, seconds in sorted(per_thread.items(), key=lambda item: -item[1]):
                out.write(f"  {kind:30} {seconds:8.2f}\n")
            if merged is not None:
                merged.stream = out  # type: ignore[attr-defined]
                out.write("\nby own time:\n")
                merged.sort_stats("tottime").print_stats(45)
                out.write("\nby cumulative time:\n")
                merged.sort_stats("cumulative").print_stats(45)


def _peak_kb() -> dict[str, int]:
    """This process's current and peak resident memory (VmRSS, VmHWM) in kB."""
    found: dict[str, int] = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            found[key] = int(value.split()[0])
    return found


def main(argv: list[str] | None = None) -> int:
    """Build, start on ``go``, stop on ``stop``; report on standard output."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("config", help="the gateway's TOML configuration")
    parser.add_argument(
        "--parts", default=",".join(PARTS), help="comma-separated: receive, deliver, copy"
    )
    parser.add_argument("--profile", type=Path, help="write cProfile figures to this file")
    args = parser.parse_args(argv)
    parts = {part.strip() for part in args.parts.split(",") if part.strip()}
    unknown = parts - set(PARTS)
    if unknown:
        parser.error(f"unknown parts: {', '.join(sorted(unknown))}")

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(message)s")
    profiles = ThreadProfiles() if args.profile else None
    if profiles is not None:
        profiles.install()

    from gateway.service import Gateway
    from roster.config import load_config

    gateway = Gateway(
        load_config(args.config),
        receive="receive" in parts,
        deliver="deliver" in parts,
        copy="copy" in parts,
    )
    print("ready", flush=True)
    for line in sys.stdin:
        if line.strip() == "go":
            break
    else:
        return 1
    gateway.start()
    started = time.monotonic()
    print("started", flush=True)
    for line in sys.stdin:
        if line.strip() == "stop":
            break
    ran = time.monotonic() - started
    gateway.stop()
    report: dict[str, Any] = {
        "seconds": round(ran, 3),
        "commits": gateway.committer.commits,
        "committed": gateway.committer.messages,
        "commit_seconds": round(getattr(gateway.committer, "seconds", 0.0), 3),
        **_peak_kb(),
    }
    if profiles is not None:
        profiles.write(args.profile)
    print(json.dumps(report), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
