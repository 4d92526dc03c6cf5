"""The demo as a visitor meets it: `continuity demo`, its real command in a subprocess,
then the outage story in Chromium (sign in as the end user, take the primary down, see
the event start, read and send mail, bring the primary back, see the hand-back end, find
it all in Email Live Tracking as the admin), then Ctrl-C (SIGINT) and nothing it started
is still running. Also: setting up only (--no-serve), and a port that is taken."""

from __future__ import annotations

import json
import os
import shutil
import smtplib
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from email.message import EmailMessage
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect
from sqlalchemy import select

from continuity.demo import SHARED_WORKDIR, demo_workdir
from continuity.demo_process import COMMAND, DemoProcess, start_demo
from continuity.localslapd import free_port
from roster.db import make_engine
from roster.models import AuditEvent, Domain
from tests.test_browser import chromium, chromium_path

READY_SECONDS = 90
TIMEOUT_MS = 20_000
EVENT_MS = 30_000


def primary_mail(demo: DemoProcess, domain: str) -> list[bytes]:
    """What the demo's stand-in primary of ``domain`` received so far."""
    folder = demo.workdir / "primaries" / domain / "new"
    return [path.read_bytes() for path in sorted(folder.iterdir())]


def sessions_alive(sessions: set[int]) -> list[str]:
    """Processes of this host whose session is one of ``sessions``: 'pid command' each."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rpartition(")")[2].split()
        state, session = fields[0], int(fields[3])
        if session in sessions and state != "Z":
            found.append(f"{entry.name} {stat.split(')')[0]})")
    return found


@pytest.fixture
def workdir() -> Iterator[Path]:
    """A work directory Dovecot's users can reach (pytest's own is private to root)."""
    folder = Path(tempfile.mkdtemp(prefix="continuity-demo-test-"))
    folder.chmod(0o755)
    try:
        yield folder / "demo"
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def sign_in(page: Page, base: str, address: str, password: str) -> None:
    """Through the sign-in form."""
    page.goto(f"{base}/sign-in")
    page.fill("#address", address)
    page.fill("#password", password)
    with page.expect_navigation():
        page.get_by_role("button", name="Sign in").click()


def until(page: Page, url: str, check: Callable[[], bool], what: str, seconds: float) -> None:
    """Reload ``url`` until ``check`` holds, as a visitor pressing F5 would."""
    deadline = time.monotonic() + seconds
    while True:
        page.goto(url)
        if check():
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"not in time: {what}")
        time.sleep(0.5)


def outside_mail(gateway: str, to: str, subject: str) -> None:
    """A message from the Internet to the gateway (the domains' MX)."""
    message = EmailMessage()
    message["From"] = "Carla Pérez <carla@partner.example>"
    message["To"] = to
    message["Subject"] = subject
    message.set_content("Sent while your server was down.\n")
    host, _, port = gateway.partition(" ")[0].rpartition(":")
    with smtplib.SMTP(host, int(port), timeout=30) as smtp:
        smtp.send_message(message)


def test_the_outage_story_in_the_browser_then_ctrl_c_leaves_nothing(workdir: Path) -> None:
    """The demo's promise, end to end, with its real command."""
    started = time.monotonic()
    demo = start_demo(workdir, ["--probe-interval", "1"], ready_seconds=READY_SECONDS)
    try:
        printed = demo.printed
        for label in ("portal", "end user", "helpdesk", "admin", "password"):
            assert printed.get(label), f"no '{label}:' line in {printed}"
        assert printed["portal"].endswith("/sign-in")
        user, admin, password = printed["end user"], printed["admin"], printed["password"]
        held_subject = f"Held while the server was down {os.getpid()}"
        sent_subject = f"Written in the webmail during the outage {os.getpid()}"
        second = subprocess.run(
            [str(COMMAND), "demo", "--workdir", str(workdir)]
            + ["--listen", f"127.0.0.1:{free_port()}", "--gateway", f"127.0.0.1:{free_port()}"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert second.returncode == 1
        assert f"a demo is running in {workdir}" in second.stderr
        seeded = len(primary_mail(demo, "acme.test"))
        assert seeded > 10, "the seed mail reached the stand-in primary"

        with chromium(chromium_path()) as browser:
            page = browser.new_page()
            page.set_default_timeout(TIMEOUT_MS)
            sign_in(page, demo.base, user, password)
            page.click("#open-webmail")
            expect(page.locator("#state")).to_contain_text("Your mail server is working")
            expect(page.locator("table.messages")).to_contain_text("Your order #48213 has shipped")

            # The primary goes down from the demo page; the event starts by itself.
            page.goto(f"{demo.base}/demo")
            page.click('[id="outage-acme.test"]')
            expect(page.locator(".flash")).to_contain_text("is down")
            expect(page.locator('[id="primary-acme.test"] .primary-state')).to_contain_text("down")
            until(
                page,
                f"{demo.base}/webmail",
                lambda: "Your mail server is down" in page.locator("#state").inner_text(),
                "the continuity event starts by itself",
                EVENT_MS / 1000,
            )

            # Mail arriving meanwhile is readable; mail written in the webmail is sent.
            outside_mail(printed["gateway"], user, held_subject)
            until(
                page,
                f"{demo.base}/webmail",
                lambda: held_subject in page.locator("table.messages").inner_text(),
                "the held message is in the standby mailbox",
                20,
            )
            page.click(f"text={held_subject}")
            expect(page.locator("pre.body")).to_contain_text("Sent while your server was down.")
            page.goto(f"{demo.base}/webmail/compose")
            page.fill("#to", "emma.brown@acme.test")
            page.fill("#subject", sent_subject)
            page.fill("#body", "The server is down; I am writing from the standby webmail.\n")
            page.click("#send")
            expect(page.locator(".flash")).to_contain_text("Your message was sent.")
            time.sleep(1)  # what a held message must not do: reach the primary
            assert not any(held_subject.encode() in m for m in primary_mail(demo, "acme.test"))

            # The primary comes back: the held mail is handed back once, the event ends.
            # (From another terminal this time: the command the demo printed.)
            recovered = subprocess.run(
                [str(COMMAND), "demo", "--workdir", str(workdir), "recover", "acme.test"],
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert recovered.returncode == 0, recovered.stderr
            assert "the primary of acme.test" in recovered.stdout
            assert "is back" in recovered.stdout
            until(
                page,
                f"{demo.base}/demo",
                lambda: (
                    "Normal"
                    in page.locator('[id="primary-acme.test"] .continuity-state').inner_text()
                ),
                "the hand-back ends the event",
                EVENT_MS / 1000,
            )
            at_primary = primary_mail(demo, "acme.test")
            assert sum(held_subject.encode() in m for m in at_primary) == 1
            assert sum(sent_subject.encode() in m for m in at_primary) >= 1

            # The admin finds it all in Email Live Tracking.
            page.context.clear_cookies()
            sign_in(page, demo.base, admin, password)
            page.goto(f"{demo.base}/admin/domains/acme.test/tracking")
            expect(page.locator("#tracking")).to_contain_text("via Continuity Service")
            expect(page.locator("#tracking")).to_contain_text(user)
            events = page.locator("#continuity-events tbody tr")
            expect(events).to_have_count(1)
            expect(events.first).to_contain_text("monitor")
            expect(events.first.locator("td").nth(3)).not_to_have_text("0")
    finally:
        pids = {int(p) for p in demo.printed.get("pids", "").split()}
        status = demo.stop()
    assert status == 0
    assert pids, "the demo printed the pids of the processes it started"
    assert sessions_alive(pids | {demo.process.pid}) == []
    print(f"\nthe whole story took {time.monotonic() - started:.1f} s")


def test_setting_up_only_syncs_the_demo_directory(workdir: Path) -> None:
    """--no-serve: the directory, the roster and a full sync, then it ends.

    Bug pinned (moved from test_cli.py): the demo set its domain active behind the
    audit's back, so its trail said the service was off while the demo ran it active; it
    now changes it as an admin does."""
    result = subprocess.run(
        [str(COMMAND), "demo", "--workdir", str(workdir), "--no-serve"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "directory sync: success, 30 people, 4 staff roles" in result.stdout
    listed = subprocess.run(
        [str(COMMAND), "--config", str(workdir / "continuity.toml")]
        + ["roster", "list", "--domain", "acme.test", "--json"],
        capture_output=True,
        text=True,
        check=True,
    )
    people = {p["mail"]: p for p in json.loads(listed.stdout)}
    assert people["jorge.ruiz@acme.test"]["status"] == "disabled"
    assert people["maria.lopez@acme.test"]["aliases"] == ["contacto@acme.test", "info@acme.test"]
    engine = make_engine(f"sqlite:///{workdir / 'roster.db'}")
    try:
        with engine.connect() as connection:
            domains = connection.execute(select(Domain).order_by(Domain.name)).all()
            actions = connection.scalars(
                select(AuditEvent.action)
                .where(AuditEvent.domain_id == domains[0].id, AuditEvent.person_id.is_(None))
                .order_by(AuditEvent.id)
            ).all()
    finally:
        engine.dispose()
    assert [d.name for d in domains] == ["acme.test", "sierra.test"]
    assert all(d.continuity_active and d.emergency_password_enabled for d in domains)
    # Made as an admin makes it, so that the audit trail tells how.
    assert actions[:4] == [
        "domain.added",
        "service.activated",
        "emergency_password.enabled",
        "primary.changed",
    ]


def test_a_taken_port_is_named_and_nothing_is_started(workdir: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [str(COMMAND), "demo", "--workdir", str(workdir), "--listen", f"127.0.0.1:{port}"],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert result.returncode == 1
    assert f"127.0.0.1:{port} is taken by another process" in result.stderr
    assert "--listen" in result.stderr
    assert not workdir.exists()


def test_outage_without_a_running_demo_says_so(workdir: Path) -> None:
    result = subprocess.run(
        [str(COMMAND), "demo", "--workdir", str(workdir), "outage", "acme.test"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert "no demo is running" in result.stderr


def test_the_demo_page_exists_only_in_the_demo_and_asks_for_a_sign_in(tmp_path: Path) -> None:
    """A portal without [demo] has no demo page; with it, the page and its buttons are for
    signed-in people, and a POST without the CSRF token is refused."""
    from portal import create_app
    from roster.config import Config

    url = f"sqlite:///{tmp_path / 'roster.db'}"
    plain = create_app(config=Config(database_url=url))
    assert not any(rule.rule.startswith("/demo") for rule in plain.url_map.iter_rules())
    assert plain.test_client().get("/demo").status_code == 404

    app = create_app(
        config=Config(database_url=url, demo={"enabled": True, "control_dir": str(tmp_path)})
    )
    tags = {
        endpoint: getattr(view, "_access", None)
        for endpoint, view in app.view_functions.items()
        if endpoint.startswith("demo.")
    }
    assert tags == {"demo.index": "signed_in", "demo.switch": "signed_in"}
    client = app.test_client()
    assert "/sign-in" in client.get("/demo").headers["Location"]
    assert client.post("/demo/acme.test/outage").status_code == 400  # no CSRF token


def test_a_checkout_dovecot_cannot_reach_runs_the_demo_in_var_tmp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Cloned under /root (mode 0700), the demo's default work directory would be out of
    Dovecot's reach: it is /var/tmp/continuity-demo then, for `outage` and `recover` too.
    A work directory that is a link, or another user's, is refused."""
    private = tmp_path / "private"
    (private / "checkout").mkdir(parents=True)
    private.chmod(0o700)
    monkeypatch.chdir(private / "checkout")
    assert demo_workdir(None) == SHARED_WORKDIR
    open_to_all = Path(tempfile.mkdtemp(prefix="continuity-demo-test-"))
    try:
        open_to_all.chmod(0o755)
        monkeypatch.chdir(open_to_all)
        assert demo_workdir(None) == Path(".demo")
        assert demo_workdir("elsewhere") == Path("elsewhere")
        (open_to_all / "link").symlink_to(open_to_all)
        result = subprocess.run(
            [str(COMMAND), "demo", "--workdir", str(open_to_all / "link"), "--no-serve"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 1
        assert "is a link or another user's" in result.stderr
    finally:
        shutil.rmtree(open_to_all, ignore_errors=True)
