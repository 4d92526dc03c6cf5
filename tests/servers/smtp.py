"""Real aiosmtpd servers on loopback for the tests: a primary, a relay, a probe's target.

One home for them, so that every test that needs an SMTP server starts it the same way
and new handlers (a primary that answers 4xx, one that times out) are added here.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.handlers import Sink

from continuity.localslapd import free_port


class Collect:
    """An aiosmtpd handler that keeps every message it is given (``envelopes``)."""

    def __init__(self) -> None:
        self.envelopes: list[Any] = []

    async def handle_DATA(self, _server: Any, _session: Any, envelope: Any) -> str:  # noqa: N802
        self.envelopes.append(envelope)
        return "250 OK"


@contextmanager
def smtp_server(handler: Any = None, **options: Any) -> Iterator[int]:
    """A real aiosmtpd server on 127.0.0.1 with ``handler`` (a Sink unless given) and
    aiosmtpd's Controller ``options`` (tls_context, ssl_context, ...); yields its port."""
    port = free_port()
    controller = Controller(
        Sink() if handler is None else handler, hostname="127.0.0.1", port=port, **options
    )
    controller.start()
    try:
        yield port
    finally:
        controller.stop()
