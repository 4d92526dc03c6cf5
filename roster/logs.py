"""Structured logging: one event per line, ``key=value`` pairs, never a secret."""

from __future__ import annotations

import logging
from typing import Any


def _value(value: Any) -> str:
    text = str(value)
    if not text or any(c.isspace() or c in '"=' for c in text):
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    return text


def format_event(event: str, **fields: Any) -> str:
    """``event=NAME key=value ...`` with values quoted where needed."""
    return " ".join(
        [f"event={event}"] + [f"{k}={_value(v)}" for k, v in fields.items() if v is not None]
    )


def log_event(logger: logging.Logger, level: int, event: str, **fields: Any) -> None:
    """Log one structured event."""
    if logger.isEnabledFor(level):
        logger.log(level, format_event(event, **fields))
