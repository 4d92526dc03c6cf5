"""A sign-in never waits behind "Test connection" (issue #8 A3), measured on the real
server: `continuity serve` with gunicorn's two workers, a global admin pressing "Test
connection" for four domains at once against a server that never answers, and a
person opening the sign-in page meanwhile."""

from __future__ import annotations

import contextlib
import http.client
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.cookies import SimpleCookie
from pathlib import Path
from urllib.parse import urlencode

from continuity.localslapd import free_port
from tests.directory import Continuity
from tests.portal_support import SECRET_KEY, STAFF_PASSWORD, csrf_token

DOMAINS = ("a1.test", "a2.test", "a3.test", "a4.test")
ROOT = "root@example.net"


@contextmanager
def silent_server() -> Iterator[int]:
    """A TCP server on 127.0.0.1 that accepts connections and never says a word."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.1)
    held: list[socket.socket] = []
    stopping = threading.Event()

    def accept() -> None:
        while not stopping.is_set():
            with contextlib.suppress(TimeoutError):
                held.append(listener.accept()[0])

    acceptor = threading.Thread(target=accept, daemon=True)
    acceptor.start()
    try:
        yield listener.getsockname()[1]
    finally:
        stopping.set()
        acceptor.join(5)
        for client in held:
            client.close()
        listener.close()


class Browser:
    """A cookie-keeping HTTP client of one portal (plain http.client, as a browser talks)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.cookies: dict[str, str] = {}

    def request(
        self, method: str, path: str, form: dict[str, str] | None = None
    ) -> tuple[int, str]:
        """One request on a connection of its own; returns the status and the body."""
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        headers = {"Cookie": "; ".join(f"{k}={v}" for k, v in self.cookies.items())}
        body = None
        if form is not None:
            body = urlencode(form)
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        try:
            connection.request(method, path, body=body, headers=headers)
            response = connection.getresponse()
            for value in response.headers.get_all("Set-Cookie") or []:
                for name, morsel in SimpleCookie(value).items():
                    self.cookies[name] = morsel.value
            return response.status, response.read().decode("utf-8", "replace")
        finally:
            connection.close()

    def token(self, path: str) -> str:
        """The CSRF token of a page."""
        status, page = self.request("GET", path)
        assert status == 200, (path, status)
        return csrf_token(page)


@contextmanager
def serving(config: Path, env: dict[str, str]) -> Iterator[int]:
    """`continuity serve --workers 2` on a free port, stopped (by its pid) at the end."""
    port = free_port()
    command = [sys.executable, "-m", "continuity", "--config", str(config), "serve"]
    command += ["--listen", f"127.0.0.1:{port}", "--workers", "2"]
    server = subprocess.Popen(
        command, env=env, cwd=config.parent, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(OSError):
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            assert server.poll() is None and time.monotonic() < deadline, "serve did not start"
            time.sleep(0.2)
        yield port
    finally:
        server.terminate()
        server.wait(30)


def sign_in_while_probing(
    tmp_path: Path, database_url: str, env: dict[str, str], gateway: str
) -> tuple[float, list[int]]:
    """Four parallel "Test connection"s to a silent server, then GET /sign-in: returns
    the seconds the sign-in page took and the statuses of the probes."""
    tool = Continuity(tmp_path, database_url)
    tool.configure()
    for domain in DOMAINS:
        assert tool.run("domain", "add", domain).exit_code == 0
    secret = tmp_path / "staff.txt"
    secret.write_text(STAFF_PASSWORD + "\n", encoding="utf-8")
    added = tool.run("staff", "add", ROOT, "--role", "global-admin", "--password-file", str(secret))
    assert added.exit_code == 0, added.output
    portal = f'[portal]\nsecret_key = "{SECRET_KEY}"\nsecure_cookies = false\n'
    tool.configure(portal, gateway)

    with serving(tool.path, env) as port, silent_server() as silent:
        admin = Browser(port)
        form = {"csrf_token": admin.token("/sign-in"), "address": ROOT}
        status, _ = admin.request("POST", "/sign-in", {**form, "password": STAFF_PASSWORD})
        assert status == 302, status
        token = admin.token(f"/admin/domains/{DOMAINS[0]}")
        typed = {"csrf_token": token, "host": "127.0.0.1", "port": str(silent), "tls": "none"}
        typed |= {"probe_interval": "60", "failures_before_failover": "3"}
        statuses: list[int] = []

        def press(domain: str) -> None:
            action = f"/admin/domains/{domain}/primary/test"
            statuses.append(admin.request("POST", action, typed)[0])

        probes = [threading.Thread(target=press, args=(domain,)) for domain in DOMAINS]
        for probe in probes:
            probe.start()
        time.sleep(1.0)  # the probes hold their workers now
        started = time.monotonic()
        status, page = Browser(port).request("GET", "/sign-in")
        took = time.monotonic() - started
        assert status == 200 and 'name="password"' in page
        for probe in probes:
            probe.join(60)
    print(f"GET /sign-in during four probes of a silent server: {took:.3f} s; probes {statuses}")
    return took, sorted(statuses)


def test_a_sign_in_never_waits_behind_test_connection(tmp_path: Path, database_url: str) -> None:
    """Regression (issue #8 A3): four parallel probes to a silent server held both
    gunicorn workers for 10 s, so GET /sign-in took 9.6 s. One probe runs per server
    with two workers (the others are told to try again), and the sign-in page answers
    at once from the other worker."""
    gateway = "[gateway]\nallow_local_primary = true\n"
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONTINUITY_")}
    took, statuses = sign_in_while_probing(tmp_path, database_url, env, gateway)

    assert took < 1.0
    assert statuses == [200, 429, 429, 429]  # one ran its 5 s, three were turned away
