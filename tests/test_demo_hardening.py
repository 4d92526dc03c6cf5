"""`continuity demo`'s processes and files: its children die with it without preexec_fn,
what it writes is root's alone, and the ports it draws for its mail servers never take
the visitor's --listen or --gateway.

Regressions pinned: the children were started with preexec_fn after the stand-in mail
servers' threads ran (code between fork and exec can deadlock in a process with
threads); the roster, logs, pids, state and the stand-ins' mail were readable by every
local user; a stand-in primary, which binds first, could draw the port asked for the
portal (tests and the tour pass ports that free_port() found free a moment before)."""

from __future__ import annotations

import os
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

from continuity.demo import child_command, free_ports_except
from continuity.demo_process import start_demo
from tests.test_demo import READY_SECONDS, primary_mail, workdir

__all__ = ["workdir"]  # the fixture, used by name

GONE_SECONDS = 10.0
SLEEPER = b"import time; time.sleep(120)"


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie has ended)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_a_child_of_the_demo_dies_with_it() -> None:
    parent = subprocess.Popen(  # a stand-in for the demo: starts one child, then waits
        [
            sys.executable,
            "-c",
            "import subprocess, sys, time\n"
            "from continuity.demo import child_command\n"
            f"child = subprocess.Popen(child_command('-c', {SLEEPER.decode()!r}),"
            " start_new_session=True)\n"
            "print(child.pid, flush=True)\n"
            "time.sleep(120)\n",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert parent.stdout is not None
    child = int(parent.stdout.readline())
    try:
        deadline = time.monotonic() + GONE_SECONDS
        # The wrapper has made itself the command asked for (exec keeps the setting).
        while SLEEPER not in Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0"):
            assert time.monotonic() < deadline, "the child did not exec its command"
            time.sleep(0.05)
        assert alive(child)

        parent.kill()  # the demo killed outright: no cleanup of its own runs
        parent.wait(timeout=GONE_SECONDS)
        deadline = time.monotonic() + GONE_SECONDS
        while alive(child):
            assert time.monotonic() < deadline, "the child outlived the demo"
            time.sleep(0.05)
    finally:
        parent.kill()
        parent.wait(timeout=GONE_SECONDS)
        parent.stdout.close()
        if alive(child):
            os.kill(child, signal.SIGKILL)


def test_the_child_runs_its_command_with_its_arguments_and_not_after_its_parent() -> None:
    command = child_command("-c", "import sys; print(sys.argv[1:])", "two words", "--x")
    ran = subprocess.run(command, capture_output=True, text=True, timeout=30, check=False)
    assert (ran.returncode, ran.stdout) == (0, "['two words', '--x']\n")

    command[3] = "1"  # a parent that is not the one it has: it died before the setting
    orphan = subprocess.run(command, capture_output=True, text=True, timeout=30, check=False)
    assert (orphan.returncode, orphan.stdout) == (1, "")


def test_the_ports_drawn_for_the_mail_servers_leave_the_visitors_alone() -> None:
    with socket.socket() as portal, socket.socket() as gateway:
        # The kernel cannot be made to hand these out next: the draw gets them first.
        portal.bind(("127.0.0.1", 0))
        gateway.bind(("127.0.0.1", 0))
        asked = {portal.getsockname()[1], gateway.getsockname()[1]}
        queue = sorted(asked)
        portal.close()
        gateway.close()

        def bind() -> socket.socket:
            sock = socket.socket()
            sock.bind(("127.0.0.1", queue.pop(0) if queue else 0))
            return sock

        drawn = free_ports_except(5, asked, bind)

    assert len(set(drawn)) == 5
    assert not asked & set(drawn)


def test_the_demos_files_are_roots_alone(workdir: Path) -> None:
    demo = start_demo(workdir, ["--probe-interval", "1"], ready_seconds=READY_SECONDS)
    try:
        assert primary_mail(demo, "acme.test"), "the seed reached the stand-in primary"
        open_to_others = []
        for path in sorted(workdir.rglob("*")):
            relative = path.relative_to(workdir)
            if relative.parts[0] == "dovecot" or path.is_symlink():
                continue  # Dovecot's users need their modes (continuity.localdovecot)
            mode = stat.S_IMODE(path.lstat().st_mode)
            if path.stat().st_uid != 0 or mode & 0o077:
                open_to_others.append(f"{relative} {mode:o} uid {path.stat().st_uid}")
        found = {p.relative_to(workdir).as_posix() for p in workdir.rglob("*")}
    finally:
        status = demo.stop()
    assert status == 0
    for expected in ("roster.db", "gateway.log", "portal.log", "pids", "control/state.json"):
        assert expected in found, expected
    assert any(name.startswith("primaries/acme.test/new/") for name in found)
    assert open_to_others == []
    assert stat.S_IMODE(workdir.stat().st_mode) == 0o711  # Dovecot's users pass through
