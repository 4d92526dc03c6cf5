"""Error pages in the person's language, inside the portal's layout."""

from __future__ import annotations

from typing import Any

from flask import Flask, render_template, request
from flask_babel import gettext as _
from flask_wtf.csrf import CSRFError
from werkzeug.exceptions import HTTPException


def _texts(code: int) -> tuple[str, str]:
    """Title and explanation for an HTTP status."""
    if code == 400:
        return _("The request was not understood"), _(
            "The form may have expired. Go back, reload the page and try again."
        )
    if code == 403:
        return _("Not allowed"), _("You may not open this page.")
    if code == 404:
        return _("Not found"), _("There is nothing here.")
    if code == 405:
        return _("Not allowed"), _("This page cannot be used that way.")
    if code == 413:
        return _("Too large"), _("What you sent is too large.")
    if code == 429:
        return _("Too many attempts"), _("Wait a while, then try again.")
    return _("Something went wrong"), _(
        "The portal could not finish this request. Try again in a moment."
    )


def _page(code: int) -> tuple[str, int]:
    title, message = _texts(code)
    return render_template("error.html", title=title, message=message), code


def register(app: Flask) -> None:
    """Install the handlers."""

    @app.errorhandler(CSRFError)
    def csrf_error(_error: CSRFError) -> Any:
        return _page(400)

    @app.errorhandler(HTTPException)
    def http_error(error: HTTPException) -> Any:
        if error.code is None or error.code < 400 or request.path.startswith("/static/"):
            return error
        return _page(error.code)

    @app.errorhandler(Exception)
    def unexpected(error: Exception) -> Any:
        if isinstance(error, HTTPException):
            return http_error(error)
        app.logger.exception("unhandled error")
        return _page(500)
