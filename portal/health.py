"""The health page: is the roster reachable, at which schema, how did the last syncs go."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, current_app, render_template, request
from sqlalchemy import func, select
from sqlalchemy.exc import SQLAlchemyError

from portal.access import public
from roster.db import current_revision
from roster.models import SyncRun

bp = Blueprint("health", __name__)


def _status() -> tuple[dict[str, Any], int]:
    """Check the roster and summarise the latest sync run of each source."""
    engine = current_app.extensions["roster_engine"]
    sessions = current_app.extensions["roster_sessions"]
    try:
        revision = current_revision(engine)
        with sessions() as session:
            # The page is public (monitors read it): outcomes and times, no counts.
            latest = select(func.max(SyncRun.id)).group_by(SyncRun.source)
            runs = session.scalars(
                select(SyncRun).where(SyncRun.id.in_(latest)).order_by(SyncRun.source)
            ).all()
    except SQLAlchemyError as error:
        return {"status": "failing", "database": "unreachable", "error": type(error).__name__}, 503
    body = {
        "status": "ok" if revision else "failing",
        "database": "ok" if revision else "no schema",
        "schema_revision": revision,
        "last_sync": [
            {
                "source": run.source,
                "mode": run.mode,
                "outcome": run.outcome,
                "started_at": run.started_at.isoformat(timespec="seconds"),
                "finished_at": run.finished_at.isoformat(timespec="seconds")
                if run.finished_at
                else None,
            }
            for run in runs
        ],
    }
    return body, 200 if revision else 503


@bp.get("/health")
@public
def health() -> Any:
    """The service's health, as JSON for monitors or as a page for people."""
    body, status = _status()
    if request.accept_mimetypes.best_match(["application/json", "text/html"]) == "text/html":
        return render_template("health/index.html", health=body), status
    return body, status
