"""Languages: English and Spanish, from the person's choice or the browser's."""

from __future__ import annotations

from typing import Any

from flask import Flask, g, request
from flask_babel import get_translations

LANGUAGES = {"en": "English", "es": "Español"}


def select_locale() -> str:
    """The language of this response: the chosen one (cookie), else Accept-Language."""
    chosen = request.cookies.get("lang")
    if chosen in LANGUAGES:
        return chosen
    return request.accept_languages.best_match(list(LANGUAGES), default="en") or "en"


def template_translations() -> Any:
    """This request's catalogue, looked up once (Flask-Babel looks it up again for every
    message, through several context lookups: a third of the sign-in page's time)."""
    found = g.get("translations")
    if found is None:
        found = g.translations = get_translations()
    return found


def install_template_gettext(app: Flask) -> None:
    """Templates' _(), ngettext() and friends, on the request's catalogue.

    The language of a response is chosen once per request (select_locale), so caching
    the catalogue for the request changes nothing: a template rendered under
    flask_babel.force_locale would need Flask-Babel's own callables back.
    """
    # jinja2.ext.i18n (which Flask-Babel loads) adds this method when the app starts.
    app.jinja_env.install_gettext_callables(  # type: ignore[attr-defined]
        gettext=lambda s: template_translations().ugettext(s),
        ngettext=lambda s, p, n: template_translations().ungettext(s, p, n),
        pgettext=lambda c, s: template_translations().upgettext(c, s),
        npgettext=lambda c, s, p, n: template_translations().unpgettext(c, s, p, n),
        newstyle=True,
    )
