"""The health page: can the portal serve, and how is the directory sync going.

People get a page in their language with times they can read; monitors get JSON
(``Accept: application/json``, anything that is not a browser, or ``?format=json``).
The answer is 200 whenever the portal can serve, "degraded" included: a directory
outage is when people need the emergency sign-in, and a load balancer must keep the
portal then. Only a roster the portal cannot use is 503.

Beside it, two short answers for load balancers and orchestrators: ``/healthz`` (the
process serves requests; it reads nothing) and ``/readyz`` (it can read the roster).
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any

from babel.dates import format_timedelta
from flask import Blueprint, current_app, render_template, request
from flask_babel import get_locale
from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError

from portal.access import public
from roster.config import Config
from roster.db import current_revision
from roster.logs import log_event
from roster.models import Domain, utcnow
from roster.syncruns import SyncHealth, sync_health

bp = Blueprint("health", __name__)
log = logging.getLogger("continuity.portal")


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat(timespec="seconds") if moment else None


def _status() -> tuple[dict[str, Any], int, SyncHealth | None]:
    """Check the roster and the sync: (JSON body, HTTP status, sync health)."""
    engine = current_app.extensions["roster_engine"]
    sessions = current_app.extensions["roster_sessions"]
    config: Config = current_app.config["CONTINUITY"]
    stale_after = timedelta(minutes=config.sync_stale_after_minutes)
    try:
        revision = current_revision(engine)
        health = None
        if revision:
            with sessions() as session:
                health = sync_health(session, [d.name for d in config.directories], stale_after)
    except SQLAlchemyError as error:
        failing = {"status": "failing", "database": "unreachable", "error": type(error).__name__}
        return failing, 503, None
    if health is None:
        return {"status": "failing", "database": "no schema", "schema_revision": None}, 503, None
    # The page is public (monitors read it): outcomes and times, no counts, no errors.
    body: dict[str, Any] = {
        "status": "degraded" if health.degraded else "ok",
        "database": "ok",
        "schema_revision": revision,
        "last_sync": [
            {
                "source": run.source,
                "mode": run.mode,
                "outcome": run.outcome,
                "started_at": _iso(run.started_at),
                "finished_at": _iso(run.finished_at),
                "last_success_at": _iso(run.last_success_at),
            }
            for run in health.runs
        ],
    }
    if health.degraded:
        body["reasons"] = [reason.text() for reason in health.reasons]
    return body, 200, health


def _wants_json() -> bool:
    """JSON unless asked for a page: ?format=, else the Accept header."""
    asked = request.args.get("format")
    if asked in ("json", "html"):
        return asked == "json"
    return request.accept_mimetypes.best_match(["application/json", "text/html"]) != "text/html"


@bp.get("/health")
@public
def health() -> Any:
    """The service's health, as JSON for monitors or as a page for people."""
    body, status, found = _status()
    if _wants_json():
        return body, status
    now = utcnow()
    locale = str(get_locale() or "en")

    def ago(moment: datetime | None) -> str:
        if moment is None:
            return ""
        return format_timedelta(moment - now, add_direction=True, locale=locale)

    return render_template(
        "health/index.html", health=body, found=found, ago=ago, revision=body.get("schema_revision")
    ), status


_PLAIN = {"Content-Type": "text/plain; charset=utf-8"}
READYZ_TIMEOUT_MS = 2000  # PostgreSQL's statement_timeout for /readyz's query


@bp.get("/healthz")
@public
def healthz() -> Any:
    """The process lives and serves requests (it reads nothing, not even the roster)."""
    return "ok\n", 200, _PLAIN


@bp.get("/readyz")
@public
def readyz() -> Any:
    """Ready when a trivial query of the roster succeeds (on PostgreSQL within
    ``READYZ_TIMEOUT_MS``); 503 with a short reason when not (the database's own words
    stay in the log: the answer is public)."""
    sessions = current_app.extensions["roster_sessions"]
    try:
        with sessions() as session, session.begin():
            if session.get_bind().dialect.name == "postgresql":
                # A database that hangs answers 503 soon: load balancers probe often, and
                # each probe waiting on it would hold a worker.
                session.connection().exec_driver_sql(
                    f"SET LOCAL statement_timeout = {READYZ_TIMEOUT_MS}"
                )
            session.execute(select(Domain.id).limit(1)).first()
    except SQLAlchemyError as error:
        log_event(log, logging.WARNING, "readyz_failed", error=type(error).__name__)
        return "not ready: the roster database cannot be read\n", 503, _PLAIN
    return "ready\n", 200, _PLAIN
