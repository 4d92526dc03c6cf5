"""The portal: a Flask application factory."""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from typing import Any

from flask import Flask

from roster.config import Config, load_config
from roster.db import make_engine, session_factory


def create_app(test_config: Mapping[str, Any] | None = None, config: Config | None = None) -> Flask:
    """Build the portal: configuration, roster database, blueprints."""
    app = Flask(__name__, template_folder="../templates")
    config = config or load_config()
    secret = config.portal.get("secret_key") or secrets.token_hex(32)
    app.config.from_mapping(SECRET_KEY=secret, CONTINUITY=config)
    if test_config:
        app.config.from_mapping(test_config)
    engine = make_engine(app.config["CONTINUITY"].database_url)
    app.extensions["roster_engine"] = engine
    app.extensions["roster_sessions"] = session_factory(engine)

    from portal import health

    app.register_blueprint(health.bp)
    return app
