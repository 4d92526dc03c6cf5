"""Who is signed in, how long a session lives, and who may call each endpoint.

Every view carries one of the decorators below; a test walks all endpoints of the app
and fails on any without one (STYLE.md, after Mailu).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import wraps
from typing import Any, TypeVar, cast
from urllib.parse import urlsplit

from flask import abort, current_app, redirect, request, session, url_for
from flask_login import current_user, login_user, logout_user
from sqlalchemy.orm import Session

from portal.extensions import login_manager
from portal.request_scope import db, writing
from roster.identity import (
    ROLE_ADMIN,
    ROLE_GLOBAL_ADMIN,
    ROLE_HELPDESK,
    Role,
    close_session,
    may_use_emergency_password,
    roles_of,
    session_is_open,
)
from roster.models import LocalAccount, Person

F = TypeVar("F", bound=Callable[..., Any])

METHOD_DIRECTORY = "directory"
METHOD_EMERGENCY = "emergency"
METHOD_LOCAL = "local"


@dataclass
class Principal:
    """A signed-in person or local staff account, as flask-login sees it."""

    kind: str  # "person" or "local"
    id: int
    address: str
    display_name: str
    domain_id: int | None
    generation: int
    roles: list[Role] = field(default_factory=list)
    is_authenticated: bool = True
    is_active: bool = True
    is_anonymous: bool = False

    def get_id(self) -> str:
        """The id flask-login keeps in the session."""
        return f"{self.kind}:{self.id}"

    @property
    def method(self) -> str:
        """How this session was signed in (directory, emergency or local password)."""
        return str(session.get("method", ""))

    def domains_for(self, *roles: str) -> set[int] | None:
        """Domain ids over which the principal holds one of ``roles``; None means all."""
        found: set[int] = set()
        for held in self.roles:
            if held.role == ROLE_GLOBAL_ADMIN:
                return None
            if held.role in roles and held.domain_id is not None:
                found.add(held.domain_id)
        return found

    def is_staff(self, *roles: str) -> bool:
        """True when the principal holds any of ``roles`` (global admins hold all)."""
        domains = self.domains_for(*roles)
        return domains is None or bool(domains)


def principal_for(row: Person | LocalAccount, roster: Session) -> Principal:
    """A Principal for a roster row."""
    if isinstance(row, Person):
        return Principal(
            "person",
            row.id,
            row.mail,
            row.display_name,
            row.domain_id,
            row.session_generation,
            roles_of(roster, row.id, None),
        )
    return Principal(
        "local",
        row.id,
        row.address,
        row.address,
        None,
        row.session_generation,
        roles_of(roster, None, row.id),
    )


@login_manager.user_loader
def load_principal(user_id: str) -> Principal | None:
    """Load the signed-in principal; a session whose generation is old is over."""
    kind, _, number = user_id.partition(":")
    if not number.isdigit():
        return None
    roster = db()
    row: Person | LocalAccount | None
    if kind == "person":
        row = roster.get(Person, int(number))
        if row is None or row.removed_at is not None or row.disabled:
            return None
    elif kind == "local":
        row = roster.get(LocalAccount, int(number))
        if row is None:
            return None
    else:
        return None
    if session.get("gen") != row.session_generation:
        return None
    if not session_is_open(roster, str(session.get("sid", "")), kind, row.id):
        return None
    principal = principal_for(row, roster)
    if isinstance(row, Person) and session.get("method") == METHOD_EMERGENCY:
        # Rights that an emergency password gave end when the domain switches the
        # service or the emergency password off, or the person is no longer covered.
        if not may_use_emergency_password(roster, row):
            return None
        principal.roles = []
    return principal


def start_session(principal: Principal, method: str, session_id: str) -> None:
    """Sign in: a fresh session (never the one the browser came with)."""
    session.clear()
    login_user(principal)
    now = int(time.time())
    session.update(gen=principal.generation, method=method, since=now, seen=now, sid=session_id)
    session.permanent = True


def end_session() -> None:
    """Sign out: the session's record goes, and the browser's cookie is emptied."""
    session_id = session.get("sid")
    if session_id:
        with writing() as write:
            close_session(write, str(session_id))
    logout_user()
    session.clear()


def enforce_session_lifetime() -> None:
    """End sessions idle for too long or older than the absolute lifetime."""
    since = session.get("since")
    if since is None:
        return
    now = int(time.time())
    idle = current_app.config["CONTINUITY_IDLE_SECONDS"]
    lifetime = current_app.config["CONTINUITY_LIFETIME_SECONDS"]
    if now - int(session.get("seen", since)) > idle or now - int(since) > lifetime:
        end_session()
        return
    view = current_app.view_functions.get(request.endpoint or "")
    if now - int(session.get("seen", since)) >= 30 and not getattr(view, "_background", False):
        session["seen"] = now


def background(view: F) -> F:
    """A request a page makes while the person works in it (suggestions as they type):
    it never writes the session cookie back.

    The session lives in the cookie, so a response that writes it back puts there what
    its request read. A background request still in flight when the page's own request
    sets a notice would, by answering later, put back the session without the notice.
    Such requests count as no activity either (the page that made them did).
    """
    view._background = True  # type: ignore[attr-defined]  # a tag on the function object
    return view


def safe_next(target: str | None) -> str | None:
    """``target`` if it is a path on this site, else None (no open redirects)."""
    if not target or not target.startswith("/") or target.startswith("//"):
        return None
    if "\\" in target or any(ord(c) < 32 for c in target):
        return None
    parts = urlsplit(target)
    if parts.scheme or parts.netloc:
        return None
    return target


def _tag(view: F, access: str) -> F:
    view._access = access  # type: ignore[attr-defined]  # a tag on the function object
    return view


def public(view: F) -> F:
    """Anyone may call this endpoint."""
    return _tag(view, "public")


def signed_in(view: F) -> F:
    """Only a signed-in principal may call this endpoint."""

    @wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if not current_user.is_authenticated:
            return redirect(url_for("auth.sign_in", next=request.full_path.rstrip("?")))
        return view(*args, **kwargs)

    return _tag(cast(F, wrapper), "signed_in")


def staff(*roles: str) -> Callable[[F], F]:
    """Only principals holding one of ``roles`` may call this endpoint."""

    def decorate(view: F) -> F:
        @wraps(view)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if not current_user.is_authenticated:
                return redirect(url_for("auth.sign_in", next=request.full_path.rstrip("?")))
            if not current_user.is_staff(*roles):
                abort(403)
            return view(*args, **kwargs)

        return _tag(cast(F, wrapper), "staff:" + ",".join(roles))

    return decorate


HELPDESK_ROLES = (ROLE_HELPDESK, ROLE_ADMIN)
