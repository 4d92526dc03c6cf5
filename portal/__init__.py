"""The portal: a Flask application factory."""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from datetime import timedelta
from typing import Any

from flask import Flask, Response

from roster.config import Config, ConfigError, load_config
from roster.db import make_engine, session_factory

CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:;"
    " object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)


def _setting(config: Config, key: str, default: Any, kind: type, minimum: int = 1) -> Any:
    """A typed [portal] value, or a ConfigError naming the key."""
    value = config.portal.get(key, default)
    if kind is bool:
        if isinstance(value, bool):
            return value
        text = str(value).lower()
        if text in {"1", "true", "yes", "on"}:
            return True
        if text in {"0", "false", "no", "off"}:
            return False
        raise ConfigError(f"[portal].{key}: expected true or false, got {value!r}")
    try:
        number = kind(value)
    except (TypeError, ValueError):
        raise ConfigError(f"[portal].{key}: expected a number, got {value!r}") from None
    if number < minimum:
        raise ConfigError(f"[portal].{key}: must be at least {minimum}")
    return number


def create_app(test_config: Mapping[str, Any] | None = None, config: Config | None = None) -> Flask:
    """Build the portal: configuration, roster database, extensions, blueprints."""
    app = Flask(__name__, template_folder="../templates")
    config = config or load_config()
    secret = config.portal.get("secret_key") or secrets.token_hex(32)
    idle = _setting(config, "session_idle_minutes", 30, int)
    lifetime = _setting(config, "session_lifetime_hours", 12, int)
    app.config.from_mapping(
        SECRET_KEY=secret,
        CONTINUITY=config,
        CONTINUITY_IDLE_SECONDS=idle * 60,
        CONTINUITY_LIFETIME_SECONDS=lifetime * 3600,
        CONTINUITY_RESET_CODE_HOURS=_setting(config, "reset_code_hours", 24, int),
        PERMANENT_SESSION_LIFETIME=timedelta(hours=lifetime),
        SESSION_COOKIE_NAME="continuity_session",
        SESSION_COOKIE_SECURE=_setting(config, "secure_cookies", True, bool),
        CONTINUITY_ACCESS_LOG=_setting(config, "access_log", False, bool),
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        # Write the cookie back only when the request changed the session: a request
        # answering with what it read could undo a notice set by another one meanwhile.
        # The cookie's own expiry need not move: the lifetime is absolute.
        SESSION_REFRESH_EACH_REQUEST=False,
        WTF_CSRF_TIME_LIMIT=None,  # the token lives as long as the session
        # WTForms' own messages are never shown (the views word every message), and
        # loading its catalogue cost half a millisecond on every form.
        WTF_I18N_ENABLED=False,
        BABEL_DEFAULT_LOCALE="en",
        BABEL_TRANSLATION_DIRECTORIES="translations",
        MAX_CONTENT_LENGTH=64 * 1024,
    )
    if test_config:
        app.config.from_mapping(test_config)
    proxies = _setting(config, "trusted_proxies", 0, int, minimum=0)
    if proxies:
        from werkzeug.middleware.proxy_fix import ProxyFix

        # Behind N reverse proxies the client is the Nth address from the right of
        # X-Forwarded-For; without this every client would be the proxy (one throttle).
        app.wsgi_app = ProxyFix(  # type: ignore[method-assign]  # as Flask's docs do it
            app.wsgi_app, x_for=proxies, x_proto=proxies, x_host=proxies
        )
    engine = make_engine(app.config["CONTINUITY"].database_url)
    app.extensions["roster_engine"] = engine
    app.extensions["roster_sessions"] = session_factory(engine)

    from portal import (
        access,
        auth,
        controlpanel,
        errors,
        health,
        helpdesk,
        me,
        metrics,
        request_scope,
        webmail,
    )
    from portal.audit_texts import audit_text
    from portal.extensions import babel, csrf, login_manager
    from portal.i18n import LANGUAGES, install_template_gettext, select_locale
    from portal.webmail import outbox  # noqa: F401 - the compose page registers on webmail.bp
    from roster.search import PeopleIndex

    # One per process: its cache of each domain's people lives as long as the worker.
    app.extensions[controlpanel.PEOPLE_INDEX] = PeopleIndex()
    babel.init_app(app, locale_selector=select_locale)
    install_template_gettext(app)
    # Before CSRFProtect, which reads the form and so meets the body limit first.
    app.before_request(request_scope.raise_body_limit)
    csrf.init_app(app)
    login_manager.init_app(app)
    login_manager.login_view = "auth.sign_in"
    login_manager.session_protection = None  # sessions are bound by generation instead
    app.before_request(access.enforce_session_lifetime)
    app.teardown_appcontext(request_scope.close_db)
    app.after_request(_security_headers)

    @app.context_processor
    def languages() -> dict[str, Any]:
        from flask_babel import get_locale

        return {"languages": LANGUAGES, "current_language": str(get_locale())}

    for blueprint in (health.bp, auth.bp, me.bp, helpdesk.bp, controlpanel.bp, webmail.bp):
        app.register_blueprint(blueprint)
    metrics.init_app(app)
    app.register_blueprint(metrics.bp)
    if config.demo.get("enabled"):
        # Only in the configuration `continuity demo` writes for itself, never in production.
        if not config.demo.get("control_dir"):
            raise ConfigError("[demo].control_dir: missing ([demo] enabled is true)")
        from portal import demo

        app.register_blueprint(demo.bp)
    errors.register(app)
    app.jinja_env.globals["audit_text"] = audit_text
    return app


def _security_headers(response: Response) -> Response:
    """Headers every response carries."""
    response.headers.setdefault("Content-Security-Policy", CONTENT_SECURITY_POLICY)
    response.headers["X-Content-Type-Options"] = "nosniff"
    # A view may set these two itself (the webmail's message frame is shown inside
    # the reading page, and sends no referrer).
    response.headers.setdefault("Referrer-Policy", "same-origin")
    response.headers.setdefault("X-Frame-Options", "DENY")
    response.headers.setdefault("Cache-Control", "no-store")
    return response
