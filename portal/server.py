"""Serving the portal with gunicorn from inside the `continuity serve` command."""

from __future__ import annotations

import gc
from typing import Any

from flask import Flask
from gunicorn.app.base import BaseApplication


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


def serve_app(app: Flask, listen: str, workers: int) -> None:
    """Serve ``app`` on ``listen`` (HOST:PORT) until stopped."""
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
    options: dict[str, Any] = {"bind": listen, "workers": workers, "errorlog": "-"}
    if app.config.get("CONTINUITY_ACCESS_LOG"):
        # Off unless asked for ([portal] access_log = true): the TLS reverse proxy in
        # front logs every request with the client's real address (gunicorn only sees
        # the proxy's), and the audit log records every sign-in with it.
        options["accesslog"] = "-"
    PortalServer(app, options).run()
