"""Serving the portal with gunicorn from inside the `continuity serve` command."""

from __future__ import annotations

import gc
import os
from collections.abc import MutableMapping
from datetime import timedelta
from typing import Any

from flask import Flask
from gunicorn.app.base import BaseApplication
from gunicorn.glogging import Logger
from gunicorn.http import Request
from gunicorn.http.wsgi import Response

from roster.logs import format_event

# gunicorn's advice is two workers a core plus one (a sync worker waits while the
# directory, the standby store or a primary answers), but at most 5: the webmail keeps
# up to [webmail] connections_per_person (2) IMAP connections per person in each
# worker, all from this host's address, and Dovecot lets one person hold at most 10
# from one address (mail_max_userip_connections). More workers: raise both.
MOST_DEFAULT_WORKERS = 5


def default_workers() -> int:
    """The workers `continuity serve` runs when neither --workers nor [portal] workers
    says: two a core this process may use plus one, at most MOST_DEFAULT_WORKERS."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return min(2 * (cores or 1) + 1, MOST_DEFAULT_WORKERS)


class AccessLog(Logger):
    """gunicorn's logger, writing one ``event=request`` line per request in the form of
    every other log line (roster.logs), with the path but never its query string: a
    webmail search's words and a sign-in's ``next`` stay out of the journal."""

    def access(
        self,
        resp: Response,
        req: Request,
        environ: MutableMapping[str, Any],
        request_time: timedelta,
    ) -> None:
        """Log one request (only when [portal] access_log asked for an access log)."""
        if not self.cfg.accesslog:
            return
        status = str(resp.status or "").split(" ", 1)[0]
        # The raw target as the client sent it, cut at "?": still percent-encoded, so no
        # space or line break of a decoded path can forge a second line.
        raw = str(environ.get("RAW_URI") or environ.get("PATH_INFO") or "")
        self.access_log.info(
            format_event(
                "request",
                client=environ.get("REMOTE_ADDR") or "-",
                method=environ.get("REQUEST_METHOD"),
                path=raw.split("?", 1)[0],
                status=status,
                bytes=resp.sent if resp.sent is not None else 0,
                ms=round(request_time.total_seconds() * 1000),
            )
        )


class PortalServer(BaseApplication):
    """gunicorn running an already-built Flask application."""

    def __init__(self, app: Flask, options: dict[str, Any]) -> None:
        self.application, self.options = app, options
        super().__init__()

    def load_config(self) -> None:
        """Hand our options to gunicorn."""
        for key, value in self.options.items():
            self.cfg.set(key, value)

    # types-gunicorn's start_response takes two arguments where PEP 3333's (wsgiref.types,
    # which Flask's signature follows) also takes exc_info: the same callable, typed apart.
    def load(self) -> Flask:  # type: ignore[override]
        """The WSGI application."""
        return self.application


def server_options(app: Flask, listen: str, workers: int) -> dict[str, Any]:
    """gunicorn's settings for the portal."""
    options: dict[str, Any] = {
        "bind": listen,
        "workers": workers,
        "errorlog": "-",
        "logger_class": AccessLog,
        # gunicorn (25.1 and later) opens a control socket at ~/.gunicorn/gunicorn.ctl by
        # default, through which whoever runs as this user may add workers or stop the
        # server; two portals on one host would share its path. systemd (or a signal)
        # controls this one.
        "control_socket_disable": True,
        # On SIGTERM (systemctl stop) the workers finish the requests they are serving,
        # for this many seconds at most (gunicorn's default, spelled out): the portal
        # unit's TimeoutStopSec is longer.
        "graceful_timeout": 30,
    }
    if app.config.get("CONTINUITY_ACCESS_LOG"):
        # Off unless asked for ([portal] access_log = true): the TLS reverse proxy in
        # front logs every request too, and the audit log records every sign-in with the
        # client's address. Behind [portal] trusted_proxies, client= is the real client.
        options["accesslog"] = "-"
    return options


def serve_app(app: Flask, listen: str, workers: int) -> None:
    """Serve ``app`` on ``listen`` (HOST:PORT) until stopped (SIGTERM or SIGINT)."""
    # A "Test connection" holds its worker while it waits for a server: this server runs
    # fewer at once than it has workers (roster.probe_bounds), so that a sign-in always
    # finds a worker that waits for no server.
    app.config["CONTINUITY_PROBE_PLACES"] = workers - 1
    # Everything built so far (the app, SQLAlchemy's mappers, the templates' modules)
    # lives as long as the process: frozen, the garbage collector stops walking it on
    # every full collection in the workers, and the workers' copies of those pages stay
    # shared with the master (copy-on-write).
    gc.collect()
    gc.freeze()
    PortalServer(app, server_options(app, listen, workers)).run()
