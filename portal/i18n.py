"""Languages: English and Spanish, from the person's choice or the browser's."""

from __future__ import annotations

from flask import request

LANGUAGES = {"en": "English", "es": "Español"}


def select_locale() -> str:
    """The language of this response: the chosen one (cookie), else Accept-Language."""
    chosen = request.cookies.get("lang")
    if chosen in LANGUAGES:
        return chosen
    return request.accept_languages.best_match(list(LANGUAGES), default="en") or "en"
