"""DKIM for the mail sent from the webmail: a key per domain, signatures that verify
against the record the domain publishes, the Control Panel's page of DNS records and
`continuity domain dkim`."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import dkim
import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

import portal.controlpanel.dkim  # noqa: F401 - its views join the Control Panel's blueprint
from portal import create_app
from portal.webmail.compose import build_message
from portal.webmail.sending import message_bytes
from roster.config import load_config
from roster.dkim import dns_records, ensure_key, sign, spf_mechanism
from roster.domains import add_domain
from roster.models import AuditEvent, Domain, utcnow
from tests.directory import Continuity
from tests.portal_support import (
    DOMAIN,
    OTHER_DOMAIN,
    STAFF_PASSWORD,
    Portal,
    csrf_token,
    location_path,
    portal_table,
    sign_in,
    text,
)

RELAY = "relay.example.net:587"


def new_domain(engine: Engine, name: str = DOMAIN) -> int:
    """A domain in the roster; its id."""
    with Session(engine) as session, session.begin():
        return add_domain(session, name, "cli:test").id


def keyed_domain(engine: Engine, name: str = DOMAIN) -> Domain:
    """A domain with its DKIM key made (detached from any session)."""
    domain_id = new_domain(engine, name)
    with Session(engine, expire_on_commit=False) as session, session.begin():
        domain = session.get_one(Domain, domain_id)
        ensure_key(session, domain, actor="admin@acme.test")
    return domain


def published(records: list[tuple[str, str, str]]) -> Callable[..., bytes | None]:
    """A DNS that answers TXT queries with ``records`` (what the domain published)."""
    zone = {name.lower(): value.encode("ascii") for name, kind, value in records if kind == "TXT"}

    def lookup(name: bytes, timeout: int = 5) -> bytes | None:
        return zone.get(name.decode("ascii").rstrip(".").lower())

    return lookup


def a_message(subject: str = "Quarterly figures") -> bytes:
    """A message as the webmail sends it."""
    return message_bytes(
        build_message(
            sender=("Ana García", "ana@acme.test"),
            to=[("Bo", "bo@example.test")],
            cc=[("", "cy@example.test")],
            bcc=[],
            subject=subject,
            body="The numbers are in.\n\n-- \nAna\n",
            attachments=[("figures.csv", "text/csv", b"q1,q2\n1,2\n")],
            in_reply_to="<m1@example.test>",
            references=["<m0@example.test>", "<m1@example.test>"],
            domain="acme.test",
        )
    )


# --- the key and the signature -----------------------------------------------------------


def test_a_domain_gets_one_key_made_once_and_audited(engine: Engine) -> None:
    domain_id = new_domain(engine)
    with Session(engine) as session, session.begin():
        domain = session.get_one(Domain, domain_id)
        selector, pem = ensure_key(session, domain, actor="admin@acme.test", client="10.0.0.9")
    with Session(engine) as session, session.begin():
        again = ensure_key(session, session.get_one(Domain, domain_id))
        events = session.execute(
            select(
                AuditEvent.actor, AuditEvent.domain_id, AuditEvent.after, AuditEvent.client
            ).where(AuditEvent.action == "dkim.key_created")
        ).all()

    assert selector == "continuity" + utcnow().strftime("%Y%m")
    assert pem.startswith("-----BEGIN RSA PRIVATE KEY-----")
    assert again == (selector, pem)
    assert [tuple(e) for e in events] == [
        ("admin@acme.test", domain_id, {"dkim_selector": selector}, "10.0.0.9")
    ]
    assert pem not in json.dumps([e.after for e in events])  # the key stays out of the trail


def test_a_signature_verifies_against_the_published_record(engine: Engine) -> None:
    domain = keyed_domain(engine)
    assert domain.dkim_selector and domain.dkim_private_key
    signed = sign(a_message(), domain.name, domain.dkim_selector, domain.dkim_private_key)
    dns = published(dns_records(domain, None))

    assert signed.startswith(b"DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed;")
    assert dkim.verify(signed, dnsfunc=dns)


def test_a_changed_body_or_subject_or_an_added_header_fails_verification(engine: Engine) -> None:
    domain = keyed_domain(engine)
    assert domain.dkim_selector and domain.dkim_private_key
    signed = sign(a_message(), domain.name, domain.dkim_selector, domain.dkim_private_key)
    dns = published(dns_records(domain, None))

    body_changed = signed.replace(b"The numbers are in.", b"The numbers are up.")
    subject_changed = signed.replace(b"Subject: Quarterly figures", b"Subject: Pay me now")
    from_added = signed.replace(b"\r\n\r\n", b"\r\nFrom: ceo@acme.test\r\n\r\n", 1)
    reply_to_added = signed.replace(b"\r\n\r\n", b"\r\nReply-To: eve@evil.test\r\n\r\n", 1)

    assert body_changed != signed and not dkim.verify(body_changed, dnsfunc=dns)
    assert subject_changed != signed and not dkim.verify(subject_changed, dnsfunc=dns)
    assert not dkim.verify(from_added, dnsfunc=dns)
    assert not dkim.verify(reply_to_added, dnsfunc=dns)


def test_another_domains_record_does_not_verify(engine: Engine) -> None:
    ours, theirs = keyed_domain(engine), keyed_domain(engine, OTHER_DOMAIN)
    assert ours.dkim_selector and ours.dkim_private_key
    signed = sign(a_message(), ours.name, ours.dkim_selector, ours.dkim_private_key)
    wrong = [(n.replace(OTHER_DOMAIN, DOMAIN), t, v) for n, t, v in dns_records(theirs, None)]

    assert not dkim.verify(signed, dnsfunc=published(wrong))


def test_the_records_name_the_key_and_the_relay(engine: Engine) -> None:
    domain = keyed_domain(engine)

    records = dns_records(domain, "relay.example.net")

    assert [(name, kind) for name, kind, _value in records] == [
        (f"{domain.dkim_selector}._domainkey.acme.test", "TXT"),
        ("acme.test", "TXT"),
    ]
    assert re.fullmatch(r"v=DKIM1; k=rsa; p=[A-Za-z0-9+/]{300,}={0,2}", records[0][2])
    assert records[1][2] == "v=spf1 a:relay.example.net ~all"


def test_a_domain_without_a_key_has_only_the_spf_record(engine: Engine) -> None:
    with Session(engine) as session:
        domain = session.get_one(Domain, new_domain(engine))
        assert dns_records(domain, None) == []
        assert dns_records(domain, "relay.example.net") == [
            ("acme.test", "TXT", "v=spf1 a:relay.example.net ~all")
        ]


@pytest.mark.parametrize(
    ("relay", "mechanism"),
    [
        ("Relay.Example.NET.", "a:relay.example.net"),
        ("192.0.2.25", "ip4:192.0.2.25"),
        ("[2001:db8::25]", "ip6:2001:db8::25"),
    ],
)
def test_the_spf_mechanism_fits_the_relay(relay: str, mechanism: str) -> None:
    assert spf_mechanism(relay) == mechanism


# --- the Control Panel's page ------------------------------------------------------------


@pytest.fixture
def panel(portal: Portal) -> Iterator[tuple[Portal, Flask]]:
    """The portal with an [outbound] relay, an admin of acme.test and one of other.test."""
    portal.add_staff("admin@acme.test", "admin")
    portal.add_staff("admin@other.test", "admin", OTHER_DOMAIN)
    portal.add_staff("helpdesk@acme.test", "helpdesk")
    portal.tool.configure(
        portal.source, portal_table(**portal.settings), f'[outbound]\nrelay = "{RELAY}"\n'
    )
    app = create_app(config=load_config(portal.tool.path, environ={}))
    yield portal, app
    app.extensions["roster_engine"].dispose()


def signed_in(app: Flask, address: str) -> FlaskClient:
    """A browser of ``address`` (a local staff account), signed in."""
    client = app.test_client()
    assert sign_in(client, address, STAFF_PASSWORD).status_code == 302
    return client


PAGE = f"/admin/domains/{DOMAIN}/dns"


def test_an_admin_makes_the_key_and_sees_the_records_to_publish(
    panel: tuple[Portal, Flask],
) -> None:
    portal, app = panel
    admin = signed_in(app, "admin@acme.test")

    before = admin.get(PAGE)
    made = admin.post(
        f"{PAGE}/dkim-key", data={"csrf_token": csrf_token(before.get_data(as_text=True))}
    )
    after = admin.get(location_path(made))

    assert before.status_code == 200
    assert "has no DKIM key yet" in text(before)
    assert "v=spf1 a:relay.example.net ~all" in text(before)
    assert made.status_code == 302 and location_path(made) == PAGE
    page = text(after)
    assert "The DKIM key is made." in page
    with Session(portal.engine) as session:
        domain = session.scalars(select(Domain).where(Domain.name == DOMAIN)).one()
        assert domain.dkim_selector
        (name, _kind, value), _spf = dns_records(domain, "relay.example.net")
    assert name in page and value in page
    assert "PRIVATE KEY" not in page
    assert 'id="make-key"' not in page
    assert ("dkim.key_created", "admin@acme.test") in portal.audit_actions()
    audit = text(admin.get(f"/admin/domains/{DOMAIN}/audit"))
    assert "DKIM key made for the mail sent from the webmail" in audit


def test_a_second_press_keeps_the_key(panel: tuple[Portal, Flask]) -> None:
    portal, app = panel
    admin = signed_in(app, "admin@acme.test")
    token = csrf_token(admin.get(PAGE).get_data(as_text=True))

    admin.post(f"{PAGE}/dkim-key", data={"csrf_token": token})
    with Session(portal.engine) as session:
        first = session.scalars(select(Domain.dkim_private_key).where(Domain.name == DOMAIN)).one()
    again = admin.post(f"{PAGE}/dkim-key", data={"csrf_token": token}, follow_redirects=True)

    with Session(portal.engine) as session:
        kept = session.scalars(select(Domain.dkim_private_key).where(Domain.name == DOMAIN)).one()
    assert kept == first
    assert "already has a DKIM key" in text(again)
    assert [a for a, _ in portal.audit_actions()].count("dkim.key_created") == 1


def test_making_the_key_needs_the_csrf_token(panel: tuple[Portal, Flask]) -> None:
    portal, app = panel
    admin = signed_in(app, "admin@acme.test")

    refused = admin.post(f"{PAGE}/dkim-key", data={})

    assert refused.status_code == 400
    assert ("dkim.key_created", "admin@acme.test") not in portal.audit_actions()


def test_only_the_domains_admin_reaches_its_records(panel: tuple[Portal, Flask]) -> None:
    portal, app = panel
    other = signed_in(app, "admin@other.test")
    helpdesk = signed_in(app, "helpdesk@acme.test")
    token = csrf_token(other.get(f"/admin/domains/{OTHER_DOMAIN}/dns").get_data(as_text=True))

    assert other.get(PAGE).status_code == 404
    assert other.post(f"{PAGE}/dkim-key", data={"csrf_token": token}).status_code == 404
    assert helpdesk.get(PAGE).status_code == 403
    assert location_path(app.test_client().get(PAGE)) == "/sign-in"
    assert "dkim.key_created" not in [a for a, _ in portal.audit_actions()]


def test_without_a_relay_the_page_says_so(portal: Portal) -> None:
    portal.add_staff("admin@acme.test", "admin")
    admin = signed_in(portal.app, "admin@acme.test")

    page = text(admin.get(PAGE))

    assert "No outbound relay is configured" in page
    assert "v=spf1" not in page


# --- the command line --------------------------------------------------------------------


@pytest.fixture
def tool(tmp_path: Path, database_url: str) -> Continuity:
    """The command line on a roster with acme.test and an [outbound] relay."""
    continuity = Continuity(tmp_path, database_url)
    continuity.configure(f'[outbound]\nrelay = "{RELAY}"\n')
    assert continuity.run("domain", "add", DOMAIN).exit_code == 0
    return continuity


def test_the_command_prints_the_records_and_makes_the_key_when_asked(tool: Continuity) -> None:
    before = tool.run("domain", "dkim", DOMAIN)
    made = tool.run("domain", "dkim", DOMAIN, "--create", "--json")
    again = tool.run("domain", "dkim", DOMAIN, "--json")

    assert before.exit_code == 0
    assert before.stdout == "acme.test\tTXT\tv=spf1 a:relay.example.net ~all\n"
    assert "has no DKIM key yet" in before.stderr
    assert made.exit_code == 0, made.output
    shown = json.loads(made.stdout)
    assert shown["domain"] == DOMAIN
    assert [r["name"] for r in shown["records"]] == [
        f"continuity{utcnow():%Y%m}._domainkey.acme.test",
        "acme.test",
    ]
    assert shown["records"][0]["value"].startswith("v=DKIM1; k=rsa; p=")
    assert json.loads(again.stdout) == shown  # the same key, not a new one


def test_the_command_names_a_domain_that_is_not_there(tool: Continuity) -> None:
    result = tool.run("domain", "dkim", "nowhere.test")

    assert result.exit_code == 1
    assert "nowhere.test is not in the roster" in result.stderr
