"""When the standby webmail opens: the domain's setting in the Control Panel and on the
command line (both audited), and the link people find on their own page."""

from __future__ import annotations

import pytest

from gateway.retention import StandbyIMAP
from roster.config import Config
from roster.standby import store_uses_tls
from tests.portal_support import (
    STAFF_PASSWORD,
    Portal,
    signed_in_client,
    submit,
    text,
)


def test_an_admin_opens_the_webmail_only_during_outages_and_people_see_it(portal: Portal) -> None:
    portal.add_person("ana")
    portal.sync()
    portal.set_domain(active=True)
    portal.add_staff("admin@acme.test", "admin")
    ana = signed_in_client(portal, "ana@acme.test")
    assert 'id="open-webmail"' in ana.get("/me").get_data(as_text=True)
    admin = signed_in_client(portal, "admin@acme.test", STAFF_PASSWORD)

    answer = submit(
        admin,
        "/admin/domains/acme.test",
        {"access": "outage"},
        action="/admin/domains/acme.test/webmail",
    )

    assert answer.status_code == 302
    shown = text(admin.get("/admin/domains/acme.test"))
    assert "now opens only during a continuity event" in shown
    assert 'id="webmail-outage" checked' in admin.get("/admin/domains/acme.test").get_data(
        as_text=True
    )
    page = ana.get("/me").get_data(as_text=True)
    assert 'id="open-webmail"' not in page
    assert "opens here if your mail server goes down" in page
    closed = ana.get("/webmail")
    assert closed.status_code == 403
    assert "only while your mail server is down" in text(closed)
    assert ("webmail.access_changed", "admin@acme.test") in portal.audit_actions()


def test_the_command_line_sets_when_the_webmail_opens(portal: Portal) -> None:
    result = portal.tool.run("domain", "set", "acme.test", "--webmail", "outage")

    assert result.exit_code == 0, result.output
    assert "webmail_access: outage" in result.output
    shown = portal.tool.run("domain", "set", "acme.test", "--webmail", "sometimes")
    assert shown.exit_code == 2
    assert [a for a, _actor in portal.audit_actions() if a == "webmail.access_changed"] == [
        "webmail.access_changed"
    ]


@pytest.mark.parametrize(
    ("host", "setting", "tls"),
    [
        ("127.0.0.1", None, False),
        ("127.0.0.53", None, False),
        ("::1", None, False),
        ("[::1]", None, False),
        ("localhost", None, False),
        ("10.0.0.5", None, True),
        ("store.example", None, True),
        ("127.0.0.1", True, True),
        ("store.example", False, False),
    ],
)
def test_the_webmail_and_retention_reach_the_store_under_tls_off_loopback(
    host: str, setting: bool | None, tls: bool
) -> None:
    """One rule for both: [standby] imap_tls when set, else TLS unless on loopback."""
    assert store_uses_tls(host, setting) is tls
    standby = {"imap": f"{host}:143", "master_user": "portal", "master_password": "x"}
    if setting is not None:
        standby["imap_tls"] = setting
    reading = StandbyIMAP.from_config(Config(database_url="sqlite://", standby=standby))
    assert reading is not None and reading._uses_tls() is tls
