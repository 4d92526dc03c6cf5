"""When the standby webmail opens: the domain's setting in the Control Panel and on the
command line (both audited), and the link people find on their own page."""

from __future__ import annotations

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
