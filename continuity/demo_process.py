"""`continuity demo` driven from another program: started as a child on free loopback
ports, read line by line until it says ``ready``, stopped with Ctrl-C (SIGINT).

The demo prints what a script needs one per line, labelled (``portal: URL``, ``end
user: ADDRESS``, ...); ``printed`` holds those labels' values. The test suite's demo
test and the README's tour (docs/tour.py) both drive the demo through this.
"""

from __future__ import annotations

import queue
import signal
import subprocess  # noqa: S404 - starts our own command, with an argument list
import sys
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from continuity.localslapd import free_port

COMMAND = Path(sys.executable).with_name("continuity")


class DemoNotReady(Exception):
    """The demo ended, or did not say ``ready`` in time; the message holds what it printed."""


@dataclass
class DemoProcess:
    """A running `continuity demo`: its process, work directory and what it printed."""

    process: subprocess.Popen[str]
    workdir: Path
    lines: queue.Queue[str | None]
    reader: threading.Thread
    printed: dict[str, str] = field(default_factory=dict)
    seen: list[str] = field(default_factory=list)

    @property
    def base(self) -> str:
        """The portal's address."""
        return self.printed["portal"].removesuffix("/sign-in")

    def wait_until_ready(self, seconds: float) -> None:
        """Read what the demo prints until ``ready``; DemoNotReady if it ends first or
        takes longer than ``seconds``."""
        deadline = time.monotonic() + seconds
        while True:
            try:
                line = self.lines.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                raise DemoNotReady(
                    f"the demo was not ready within {seconds:.0f} s; it printed:\n"
                    + "\n".join(self.seen)
                ) from None
            if line is None:
                raise DemoNotReady(
                    f"the demo ended before it was ready (exit status {self.process.wait()});"
                    " it printed:\n" + "\n".join(self.seen)
                )
            self.seen.append(line)
            if line.startswith("ready"):
                return
            label, _, value = line.partition(": ")
            self.printed.setdefault(label, value)

    def said_since(self) -> list[str]:
        """The lines it printed since they were last read."""
        said: list[str] = []
        while True:
            try:
                line = self.lines.get_nowait()
            except queue.Empty:
                return said
            if line is not None:
                said.append(line)

    def stop(self, seconds: float = 60.0) -> int:
        """Ctrl-C, as a visitor stops it (SIGKILL if it has not ended within
        ``seconds``); its exit status once it has ended."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
        try:
            status = self.process.wait(timeout=seconds)
        except subprocess.TimeoutExpired:
            self.process.kill()
            status = self.process.wait()
        self.reader.join(timeout=10)
        if self.process.stdout is not None:
            self.process.stdout.close()
        return status


def start_demo(
    workdir: Path, arguments: Iterable[str] = (), *, ready_seconds: float
) -> DemoProcess:
    """`continuity demo --workdir WORKDIR` with the portal and the gateway on free
    loopback ports and ``arguments``; returns once it printed ``ready`` (stopped, and
    DemoNotReady, if it does not)."""
    process = subprocess.Popen(  # noqa: S603 - our own command, arguments built here
        [str(COMMAND), "demo", "--workdir", str(workdir)]
        + ["--listen", f"127.0.0.1:{free_port()}", "--gateway", f"127.0.0.1:{free_port()}"]
        + list(arguments),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: queue.Queue[str | None] = queue.Queue()
    reader = threading.Thread(target=_read, args=(process.stdout, lines), daemon=True)
    reader.start()
    demo = DemoProcess(process, workdir, lines, reader)
    try:
        demo.wait_until_ready(ready_seconds)
    except DemoNotReady:
        demo.stop()
        raise
    return demo


def _read(stream: Iterable[str], lines: queue.Queue[str | None]) -> None:
    for line in stream:
        lines.put(line.rstrip("\n"))
    lines.put(None)
