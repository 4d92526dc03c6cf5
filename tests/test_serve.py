"""`continuity serve`: the portal under gunicorn as systemd runs it. It answers, logs
one key=value line per request with the real client behind the reverse proxy (and no
query string), stops on SIGTERM with status 0 and leaves no worker behind."""

from __future__ import annotations

import contextlib
import http.client
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from continuity.localslapd import free_port
from portal import server
from tests.directory import Continuity
from tests.portal_support import SECRET_KEY


@pytest.fixture
def roster(tmp_path: Path, sqlite_template: Path) -> str:
    """A migrated SQLite roster of this test's own."""
    path = tmp_path / "roster.db"
    shutil.copy(sqlite_template, path)
    return f"sqlite:///{path}"


def _configure(tmp_path: Path, roster: str, portal: str) -> Path:
    path = tmp_path / "continuity.toml"
    path.write_text(
        f'[database]\nurl = "{roster}"\n\n[portal]\nsecret_key = "{SECRET_KEY}"\n'
        f"secure_cookies = false\n{portal}",
        encoding="utf-8",
    )
    return path


def _children(pid: int) -> set[int]:
    """The processes ``pid`` started (gunicorn's workers)."""
    found: set[int] = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            found |= {int(p) for p in (task / "children").read_text().split()}
    return found


def _workers(pid: int, count: int) -> set[int]:
    """gunicorn's workers once ``count`` of them run (they boot one after the other)."""
    deadline = time.monotonic() + 20
    while len(found := _children(pid)) < count and time.monotonic() < deadline:
        time.sleep(0.05)
    return found


def _holds(pid: int, server_port: int, client_port: int) -> bool:
    """True when ``pid`` holds the server's end of the connection from ``client_port``
    (the accepted socket, found by its inode in /proc/net/tcp)."""
    inodes = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote, inode = fields[1], fields[2], fields[9]
        if int(local.split(":")[1], 16) == server_port and int(remote.split(":")[1], 16) == (
            client_port
        ):
            inodes.add(f"socket:[{inode}]")
    held = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):  # closed meanwhile
            held.add(os.readlink(fd))
    return bool(inodes & held)


def _until(condition: Callable[[], bool], seconds: float = 10) -> None:
    """Wait until ``condition`` holds (fail after ``seconds``)."""
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


def _alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0] != "Z"
    except OSError:
        return False


@contextmanager
def serving(
    tmp_path: Path, config: Path, *args: str
) -> Iterator[tuple[subprocess.Popen[str], int]]:
    """`continuity serve` on a free loopback port, as systemd starts it (HOME its own)."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONTINUITY_")}
    env |= {"HOME": str(tmp_path / "home"), "PYTHONUNBUFFERED": "1"}
    env.pop("XDG_RUNTIME_DIR", None)
    log = (tmp_path / "serve.log").open("w", encoding="utf-8")
    command = [sys.executable, "-m", "continuity", "--config", str(config), "serve"]
    process = subprocess.Popen(
        [*command, "--listen", f"127.0.0.1:{port}", *args],
        env=env,
        cwd=tmp_path,
        stdout=log,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                connection.request("GET", "/health")
                connection.getresponse().read()
                connection.close()
                break
            except OSError:
                assert process.poll() is None, (tmp_path / "serve.log").read_text()
                assert time.monotonic() < deadline, "serve did not start"
                time.sleep(0.1)
        yield process, port
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
        log.close()


def _get(port: int, path: str, headers: dict[str, str]) -> tuple[int, str]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request("GET", path, headers=headers)
        response = connection.getresponse()
        return response.status, response.read().decode("utf-8")
    finally:
        connection.close()


def test_serve_answers_logs_and_stops_on_sigterm_without_leaving_a_worker(
    tmp_path: Path, roster: str
) -> None:
    """The portal unit's life: start, serve the sign-in page (the client's address from
    X-Forwarded-For, one reverse proxy trusted), SIGTERM from `systemctl stop`: the
    command exits 0 within seconds, and its workers are gone too."""
    config = _configure(tmp_path, roster, "access_log = true\ntrusted_proxies = 1\nworkers = 3\n")
    with serving(tmp_path, config) as (process, port):
        workers = _workers(process.pid, 3)
        assert len(workers) == 3  # [portal] workers

        status, page = _get(
            port, "/sign-in?next=/webmail/search%3Fq%3Dsalary", {"X-Forwarded-For": "203.0.113.7"}
        )
        assert status == 200 and 'name="password"' in page

        started = time.monotonic()
        process.send_signal(signal.SIGTERM)
        assert process.wait(10) == 0
        took = time.monotonic() - started
        deadline = time.monotonic() + 5
        while any(_alive(pid) for pid in workers) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not any(_alive(pid) for pid in workers)
    assert took < 5
    log = (tmp_path / "serve.log").read_text(encoding="utf-8")
    lines = [line for line in log.splitlines() if "event=request" in line]
    assert any(
        "event=request client=203.0.113.7 method=GET path=/sign-in status=200 bytes=" in line
        for line in lines
    ), log
    assert "salary" not in log  # the query string stays out of the journal
    # gunicorn's control socket (~/.gunicorn/gunicorn.ctl) is not opened.
    assert not (tmp_path / "home" / ".gunicorn").exists()
    assert "Control socket" not in log


def test_a_request_in_flight_at_sigterm_gets_its_answer(tmp_path: Path, roster: str) -> None:
    """Graceful: a form half sent when `systemctl stop` comes is still read and answered
    (here the sign-in's "form may have expired", it carries no CSRF token), then the
    command exits 0."""
    config = _configure(tmp_path, roster, "")
    with serving(tmp_path, config, "--workers", "1") as (process, port):
        body = b"address=ana%40acme.test&password=wrong&csrf_token=none"
        head = (
            b"POST /sign-in HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
            b"Content-Type: application/x-www-form-urlencoded\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body)
        )
        (worker,) = _workers(process.pid, 1)
        with socket.create_connection(("127.0.0.1", port), timeout=10) as client:
            client.sendall(head + body[:10])
            mine = client.getsockname()[1]
            _until(lambda: _holds(worker, port, mine))  # the worker took the connection
            process.send_signal(signal.SIGTERM)
            _until(lambda: "Handling signal: term" in (tmp_path / "serve.log").read_text())
            assert process.poll() is None  # still finishing the request
            client.sendall(body[10:])
            answer = b""
            while chunk := client.recv(65536):
                answer += chunk
        assert process.wait(10) == 0
    status_line, _, rest = answer.partition(b"\r\n")
    assert status_line == b"HTTP/1.1 400 BAD REQUEST"
    assert b"The form may have expired" in rest


def test_serve_logs_no_request_unless_asked(tmp_path: Path, roster: str) -> None:
    """Without [portal] access_log the reverse proxy logs requests; the portal does not,
    and --workers wins over the default."""
    config = _configure(tmp_path, roster, "")
    with serving(tmp_path, config, "--workers", "1") as (process, port):
        assert len(_workers(process.pid, 1)) == 1
        assert _get(port, "/sign-in", {})[0] == 200
        process.send_signal(signal.SIGTERM)
        assert process.wait(10) == 0
    assert "event=request" not in (tmp_path / "serve.log").read_text(encoding="utf-8")


def test_serve_refuses_a_bad_worker_count_in_the_configuration(tmp_path: Path, roster: str) -> None:
    tool = Continuity(tmp_path, roster)
    _configure(tmp_path, roster, "workers = 0\n")
    result = tool.run("serve")
    assert result.exit_code == 2
    refusal = "[portal].workers: must be at least 1, got 0"
    assert result.stderr == f"continuity: configuration error: {refusal}\n"


@pytest.mark.parametrize(("cores", "workers"), [(1, 3), (2, 5), (16, 5)])
def test_the_default_worker_count_follows_the_cores_this_process_may_use(
    monkeypatch: pytest.MonkeyPatch, cores: int, workers: int
) -> None:
    """Two a core plus one, at most five: a person's webmail connections from one portal
    host (two per worker) stay within Dovecot's ten per person and address."""
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: set(range(cores)))
    assert server.default_workers() == workers
