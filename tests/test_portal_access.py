"""Who may call what and for how long: the permission walk, sessions, CSRF, redirects after
sign-in, security headers on every response, and the two languages."""

from __future__ import annotations

import time
from typing import Any

from flask import Flask, url_for
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from tests.portal_support import (
    PASSWORD,
    STAFF_PASSWORD,
    WRONG,
    Portal,
    csrf_token,
    location_path,
    sign_in,
    signed_in_client,
    submit,
    text,
)

# Anyone may call these; every other endpoint needs a signed-in person or staff.
PUBLIC = {
    "auth.index",
    "auth.sign_in",
    "auth.language",
    "health.health",
    "health.healthz",
    "health.readyz",
    "me.reset",
}
# Monitors only: an allowed network or the metrics token (tests/test_metrics.py).
MONITORING = {"metrics.metrics"}
UNTAGGED = {"static"}
COOKIE = "continuity_session"


def routes(app: Flask) -> list[tuple[str, str, str]]:
    """(endpoint, method, url) for every route of the app, with 1 for each URL argument."""
    found = []
    with app.test_request_context():
        for rule in sorted(app.url_map.iter_rules(), key=lambda r: r.rule):
            if rule.endpoint in UNTAGGED:
                continue
            arguments: dict[str, Any] = dict.fromkeys(rule.arguments, 1)
            url = url_for(rule.endpoint, **arguments)
            for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
                found.append((rule.endpoint, method, url))
    return found


def access(app: Flask, endpoint: str) -> str:
    """The access tag an endpoint's view carries."""
    return str(getattr(app.view_functions[endpoint], "_access", ""))


def call(client: FlaskClient, method: str, url: str) -> TestResponse:
    """GET a URL, or POST to it with the browser's valid CSRF token."""
    if method == "GET":
        return client.get(url)
    token = csrf_token(client.get("/sign-in").get_data(as_text=True))
    return client.post(url, data={"csrf_token": token})


# The permission walk.


def test_every_endpoint_declares_who_may_call_it(portal: Portal) -> None:
    undeclared = [
        endpoint
        for endpoint in portal.app.view_functions
        if endpoint not in UNTAGGED and not access(portal.app, endpoint)
    ]
    assert undeclared == []


def test_public_endpoints_are_the_short_allow_list(portal: Portal) -> None:
    public = {e for e in portal.app.view_functions if access(portal.app, e) == "public"}
    assert public == PUBLIC
    monitoring = {e for e in portal.app.view_functions if access(portal.app, e) == "monitoring"}
    assert monitoring == MONITORING


def test_every_protected_endpoint_sends_anonymous_to_sign_in(portal: Portal) -> None:
    answers = {}
    for endpoint, method, url in routes(portal.app):
        if access(portal.app, endpoint) in ("public", "monitoring"):
            continue
        response = call(portal.client(), method, url)
        where = location_path(response) if response.status_code == 302 else None
        answers[(endpoint, method)] = (response.status_code, where)

    assert answers, "no protected endpoint found"
    assert answers == {key: (302, "/sign-in") for key in answers}


def test_every_staff_endpoint_forbids_an_end_user(portal: Portal) -> None:
    portal.add_person("ana")
    portal.sync()
    client = signed_in_client(portal, "ana@acme.test")
    answers = {
        (endpoint, method): call(client, method, url).status_code
        for endpoint, method, url in routes(portal.app)
        if access(portal.app, endpoint).startswith("staff")
    }

    assert answers, "no staff endpoint found"
    assert answers == dict.fromkeys(answers, 403)
    assert client.get("/me").status_code == 200  # still signed in


# CSRF.


def test_every_post_without_a_csrf_token_is_refused(portal: Portal) -> None:
    portal.add_person("ana")
    portal.sync()
    anonymous = portal.client()
    anonymous.get("/sign-in")
    person = signed_in_client(portal, "ana@acme.test")
    answers = {}
    for _endpoint, method, url in routes(portal.app):
        if method == "POST":
            answers[("anonymous", url)] = anonymous.post(url, data={}).status_code
            answers[("signed in", url)] = person.post(url, data={}).status_code

    assert answers == dict.fromkeys(answers, 400)
    assert person.get("/me").status_code == 200  # the refused sign-out changed nothing


def test_a_sign_in_with_another_browsers_token_is_refused(portal: Portal) -> None:
    portal.add_person("ana")
    portal.sync()
    other = csrf_token(portal.client().get("/sign-in").get_data(as_text=True))
    client = portal.client()
    client.get("/sign-in")

    response = client.post(
        "/sign-in", data={"csrf_token": other, "address": "ana@acme.test", "password": PASSWORD}
    )

    assert response.status_code == 400
    assert location_path(client.get("/me")) == "/sign-in"


# Sessions.


def session_cookie(response: TestResponse) -> dict[str, str]:
    """The attributes of the session cookie a response sets (lower-case names)."""
    for header in response.headers.getlist("Set-Cookie"):
        name, _, rest = header.partition("=")
        if name == COOKIE:
            value, *attributes = rest.split(";")
            parts = {"value": value}
            for attribute in attributes:
                key, _, setting = attribute.strip().partition("=")
                parts[key.lower()] = setting
            return parts
    raise AssertionError(f"no {COOKIE} cookie set: {response.headers.getlist('Set-Cookie')}")


def test_sign_in_gives_a_new_session(portal: Portal) -> None:
    """Session fixation: the cookie a browser had before signing in is not signed in."""
    portal.add_person("ana")
    portal.sync()
    client = portal.client()
    client.get("/sign-in")
    cookie = client.get_cookie(COOKIE)
    assert cookie is not None
    before = cookie.value

    response = sign_in(client, "ana@acme.test", PASSWORD)

    assert response.status_code == 302
    assert session_cookie(response)["value"] != before
    planted = portal.client()
    planted.set_cookie(COOKIE, before)
    assert location_path(planted.get("/me")) == "/sign-in"
    assert client.get("/me").status_code == 200


def test_session_cookie_is_httponly_and_samesite_lax(portal: Portal) -> None:
    portal.add_person("ana")
    portal.sync()

    cookie = session_cookie(sign_in(portal.client(), "ana@acme.test", PASSWORD))

    assert "httponly" in cookie
    assert cookie["samesite"].lower() == "lax"
    assert "secure" not in cookie  # secure_cookies = false: plain-HTTP development


def test_session_cookie_is_secure_when_configured(portal: Portal) -> None:
    portal.add_person("ana")
    portal.sync()
    client = portal.build(secure_cookies=True).test_client()

    response = sign_in(client, "ana@acme.test", PASSWORD)

    assert response.status_code == 302
    cookie = session_cookie(response)
    assert "secure" in cookie and "httponly" in cookie
    assert cookie["samesite"].lower() == "lax"


def test_an_idle_session_ends(portal: Portal) -> None:
    portal.add_person("ana")
    portal.sync()
    client = signed_in_client(portal, "ana@acme.test")
    with client.session_transaction() as session:
        session["seen"] = int(time.time()) - 29 * 60
    assert client.get("/me").status_code == 200  # activity keeps it going

    with client.session_transaction() as session:
        session["seen"] = int(time.time()) - 31 * 60

    assert location_path(client.get("/me")) == "/sign-in"
    assert location_path(client.get("/me")) == "/sign-in"


def test_a_session_ends_at_its_absolute_lifetime(portal: Portal) -> None:
    portal.add_person("ana")
    portal.sync()
    client = signed_in_client(portal, "ana@acme.test")
    with client.session_transaction() as session:
        session["since"] = int(time.time()) - 12 * 3600 + 60
    assert client.get("/me").status_code == 200

    with client.session_transaction() as session:
        session["since"] = int(time.time()) - 12 * 3600 - 60
        session["seen"] = int(time.time())

    assert location_path(client.get("/me")) == "/sign-in"


def test_sign_out_ends_the_session(portal: Portal) -> None:
    portal.add_person("ana")
    portal.sync()
    client = signed_in_client(portal, "ana@acme.test")

    response = submit(client, "/me", {}, action="/sign-out")

    assert location_path(response) == "/sign-in"
    assert "You have signed out." in text(client.get("/sign-in"))
    assert location_path(client.get("/me")) == "/sign-in"


def test_a_session_cookie_copied_before_sign_out_is_dead_after_it(portal: Portal) -> None:
    """Regression: a copied cookie (shared computer, theft) outlived sign-out (ASVS 3.3.1)."""
    portal.add_person("ana")
    portal.sync()
    client = signed_in_client(portal, "ana@acme.test")
    cookie = client.get_cookie(COOKIE)
    assert cookie is not None
    copy = portal.client()
    copy.set_cookie(COOKIE, cookie.value)
    assert copy.get("/me").status_code == 200

    submit(client, "/me", {}, action="/sign-out")

    assert location_path(copy.get("/me")) == "/sign-in"


def test_a_sync_that_disables_or_removes_a_person_ends_their_sessions(portal: Portal) -> None:
    for uid in ("ana", "bo", "carl"):
        portal.add_person(uid)
    portal.sync()
    ana, bo, carl = (signed_in_client(portal, f"{uid}@acme.test") for uid in ("ana", "bo", "carl"))

    portal.disable("ana")
    portal.tree.delete("bo")
    portal.sync("--allow-mass-removal")

    assert location_path(ana.get("/me")) == "/sign-in"
    assert location_path(bo.get("/me")) == "/sign-in"
    assert carl.get("/me").status_code == 200
    portal.tree.replace("ana", description=None)
    portal.sync()
    assert location_path(ana.get("/me")) == "/sign-in"  # enabled again: a new sign-in
    assert signed_in_client(portal, "ana@acme.test").get("/me").status_code == 200


# Redirects after sign-in go to this site only.

ELSEWHERE = [
    "//evil.test",
    "///evil.test",
    "https://evil.test",
    "http:evil.test",
    "/\\evil.test",
    "\\\\evil.test",
    "/\\/evil.test",
    "/\t/evil.test",
    " //evil.test",
    "javascript:alert(1)",
    "JavaScript:alert(document.cookie)",
    "data:text/html,<script>alert(1)</script>",
]


def test_sign_in_never_redirects_off_the_site(portal: Portal) -> None:
    """Whether the target came in the link to the sign-in page or in the posted form."""
    portal.add_person("ana")
    portal.sync()
    answers = {}
    for target in ELSEWHERE:
        from_link = sign_in(portal.client(), "ana@acme.test", PASSWORD, next=target)
        from_form = submit(
            portal.client(),
            "/sign-in",
            {"address": "ana@acme.test", "password": PASSWORD, "next": target},
        )
        answers[target] = [
            (response.status_code, location_path(response)) for response in (from_link, from_form)
        ]

    assert answers == dict.fromkeys(ELSEWHERE, [(302, "/me"), (302, "/me")])


def test_sign_in_goes_on_to_a_page_of_the_site(portal: Portal) -> None:
    portal.add_person("ana")
    portal.sync()
    client = portal.client()
    first = client.get("/helpdesk?q=ana")
    assert location_path(first) == "/sign-in"

    response = sign_in(client, "ana@acme.test", PASSWORD, next="/helpdesk?q=ana")

    assert response.headers["Location"] == "/helpdesk?q=ana"


def test_the_language_switch_never_redirects_off_the_site(portal: Portal) -> None:
    answers = {
        target: location_path(
            submit(
                portal.client(), "/sign-in", {"language": "es", "next": target}, action="/language"
            )
        )
        for target in ELSEWHERE
    }
    assert answers == dict.fromkeys(ELSEWHERE, "/")


# Security headers on every response.


def policy(response: TestResponse) -> dict[str, list[str]]:
    """The Content-Security-Policy of a response, by directive."""
    header = response.headers.get("Content-Security-Policy", "")
    directives = {}
    for part in header.split(";"):
        name, *values = part.split()
        directives[name.lower()] = values
    return directives


def test_security_headers_on_every_response(portal: Portal) -> None:
    portal.add_person("ana")
    portal.sync()
    portal.add_staff("helpdesk@acme.test", "helpdesk")
    anonymous = portal.client()
    person = signed_in_client(portal, "ana@acme.test")
    staff = signed_in_client(portal, "helpdesk@acme.test", STAFF_PASSWORD)
    responses = {
        "sign-in page": anonymous.get("/sign-in"),
        "health json": anonymous.get("/health", headers={"Accept": "application/json"}),
        "health page": anonymous.get("/health", headers={"Accept": "text/html"}),
        "redirect": anonymous.get("/me"),
        "not found": anonymous.get("/no-such-page"),
        "wrong method": anonymous.get("/sign-out"),
        "csrf refusal": anonymous.post("/sign-in", data={}),
        "failed sign-in": sign_in(anonymous, "ana@acme.test", "wrong-password-1"),
        "static": anonymous.get("/static/portal.css"),
        "reset page": anonymous.get("/reset"),
        "status page": person.get("/me"),
        "forbidden": person.get("/helpdesk"),
        "helpdesk": staff.get("/helpdesk?q=ana"),
        "helpdesk 404": staff.get("/helpdesk/people/999"),
    }
    problems = {}
    for name, response in responses.items():
        csp = policy(response)
        script = csp.get("script-src", csp.get("default-src", []))
        found = {
            "script-src": bool(script) and "'unsafe-inline'" not in script,
            "frame-ancestors": csp.get("frame-ancestors") == ["'none'"],
            "nosniff": response.headers.get("X-Content-Type-Options") == "nosniff",
            "no framing": response.headers.get("X-Frame-Options") == "DENY",
            "referrer": response.headers.get("Referrer-Policy")
            in {"no-referrer", "same-origin", "strict-origin", "strict-origin-when-cross-origin"},
        }
        if not all(found.values()):
            problems[name] = found
        response.close()
    assert problems == {}


# Languages.


def test_sign_in_page_in_spanish_from_the_browser(portal: Portal) -> None:
    page = portal.client().get("/sign-in", headers={"Accept-Language": "es-ES,es;q=0.9,en;q=0.5"})
    assert '<html lang="es">' in text(page)
    assert "<title>Iniciar sesión" in text(page)


def test_language_switch_is_remembered(portal: Portal) -> None:
    portal.add_person("ana")
    portal.sync()
    client = portal.client()
    switched = submit(
        client, "/sign-in", {"language": "es", "next": "/sign-in"}, action="/language"
    )
    assert location_path(switched) == "/sign-in"

    page = text(client.get("/sign-in", headers={"Accept-Language": "en"}))
    failed = text(sign_in(client, "ana@acme.test", "wrong-password-1"))

    assert "<title>Iniciar sesión" in page
    assert WRONG not in failed and '<html lang="es">' in failed
