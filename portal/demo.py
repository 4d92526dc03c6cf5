"""The demo's own page: take a demo domain's stand-in primary mail server down, bring it
back, and watch what Continuity does meanwhile.

Registered only where the configuration says ``[demo] enabled = true``, which only
`continuity demo` writes (into its own configuration): a production portal has no such
page. The page and `continuity demo outage|recover` talk to the running demo through
files in ``[demo] control_dir`` (``DemoControl``): a flag file per domain whose primary
should be down, and the state the demo writes back.
"""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flask import Blueprint, abort, current_app, flash, redirect, render_template, url_for
from flask_babel import gettext as _
from sqlalchemy import select

from portal.access import signed_in
from portal.request_scope import db
from roster.models import ContinuityEvent, Domain

bp = Blueprint("demo", __name__, url_prefix="/demo")

STATE_FILE = "state.json"
OUTAGE_DIR = "outage"
WAIT_SECONDS = 5.0
_DOMAIN = re.compile(r"[a-z0-9](?:[a-z0-9.-]{0,251}[a-z0-9])?")


class DemoNotRunning(Exception):
    """No running demo answers in this control directory."""


@dataclass(frozen=True)
class PrimaryState:
    """A demo domain's stand-in primary as the running demo last wrote it."""

    domain: str
    address: str
    up: bool
    received: int
    wanted_down: bool


class DemoControl:
    """The files through which the page and the command line reach the running demo."""

    def __init__(self, control_dir: str | os.PathLike[str]) -> None:
        self.directory = Path(control_dir)

    # -- the demo's side ------------------------------------------------------------------
    def prepare(self) -> None:
        """An empty outage folder (the demo starts with every primary up)."""
        (self.directory / OUTAGE_DIR).mkdir(parents=True, exist_ok=True, mode=0o700)

    def wanted_down(self, domain: str) -> bool:
        """Whether someone asked for ``domain``'s primary to be down."""
        return (self.directory / OUTAGE_DIR / domain).exists()

    def write_state(self, pid: int, primaries: list[dict[str, Any]]) -> None:
        """Publish the primaries' state (atomically: readers never see half a file)."""
        temporary = self.directory / f".{STATE_FILE}.tmp"
        temporary.write_text(
            json.dumps({"pid": pid, "primaries": primaries}, indent=1), encoding="utf-8"
        )
        temporary.replace(self.directory / STATE_FILE)

    def clear_state(self) -> None:
        """The demo has stopped: nothing answers any more."""
        (self.directory / STATE_FILE).unlink(missing_ok=True)

    # -- the callers' side ----------------------------------------------------------------
    def primaries(self) -> list[PrimaryState]:
        """The stand-in primaries of the running demo; DemoNotRunning if none runs."""
        try:
            state = json.loads((self.directory / STATE_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            raise DemoNotRunning(str(self.directory)) from None
        pid = state.get("pid")
        if not isinstance(pid, int) or not Path(f"/proc/{pid}").exists():
            raise DemoNotRunning(str(self.directory))
        return [
            PrimaryState(
                domain=str(item["domain"]),
                address=str(item["address"]),
                up=bool(item["up"]),
                received=int(item["received"]),
                wanted_down=self.wanted_down(str(item["domain"])),
            )
            for item in state.get("primaries", [])
        ]

    def ask(self, domain: str, down: bool, wait: float = WAIT_SECONDS) -> PrimaryState:
        """Ask for ``domain``'s primary to go down (or come back) and wait until the
        demo did it; KeyError for a domain that is not the demo's, TimeoutError if the
        demo does not answer within ``wait`` seconds."""
        known = {p.domain: p for p in self.primaries()}
        if domain not in known or not _DOMAIN.fullmatch(domain):
            raise KeyError(domain)
        flag = self.directory / OUTAGE_DIR / domain
        if down:
            flag.touch()
        else:
            flag.unlink(missing_ok=True)
        deadline = time.monotonic() + wait
        while True:
            found = {p.domain: p for p in self.primaries()}[domain]
            if found.up != down:
                return found
            if time.monotonic() > deadline:
                raise TimeoutError(domain)
            time.sleep(0.05)


def _control() -> DemoControl:
    return DemoControl(current_app.config["CONTINUITY"].demo["control_dir"])


def _continuity_states() -> dict[str, str]:
    """Each domain's continuity state: "event", "recovering" or "normal"."""
    rows = db().execute(
        select(Domain.name, ContinuityEvent.recovery_started_at)
        .join(ContinuityEvent, ContinuityEvent.domain_id == Domain.id)
        .where(ContinuityEvent.ended_at.is_(None))
    )
    return {row.name: "recovering" if row.recovery_started_at else "event" for row in rows}


@bp.get("")
@signed_in
def index() -> Any:
    """The demo's primaries, their state and Continuity's, with the buttons."""
    try:
        primaries = _control().primaries()
    except DemoNotRunning:
        primaries = []
    return render_template("demo/index.html", primaries=primaries, states=_continuity_states())


@bp.post("/<domain>/<action>")
@signed_in
def switch(domain: str, action: str) -> Any:
    """Take a demo primary down or bring it back (CSRF-checked, as every POST)."""
    if action not in ("outage", "recover"):
        abort(404)
    try:
        _control().ask(domain, down=action == "outage")
    except (KeyError, DemoNotRunning):
        abort(404)
    except TimeoutError:
        flash(_("The demo did not answer in time; try again."), "error")
        return redirect(url_for("demo.index"))
    if action == "outage":
        flash(
            _(
                "The primary mail server of %(domain)s is down. Continuity notices within"
                " a few checks and starts a continuity event by itself.",
                domain=domain,
            )
        )
    else:
        flash(
            _(
                "The primary mail server of %(domain)s is back. Continuity hands the held"
                " mail back to it and ends the event by itself.",
                domain=domain,
            )
        )
    return redirect(url_for("demo.index"))
