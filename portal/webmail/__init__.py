"""The standby webmail: covered people read and send mail at /webmail while (or before)
their primary mail server is down.

The mail lives in the standby Dovecot store (``imap``: the pool of IMAP connections);
``message`` parses what the store holds, ``sanitize`` makes a message's HTML safe to
show, ``compose`` and ``sending`` build and send what people write; ``access`` says who
may open it; ``views`` are the pages, ``rows`` the message list's rows.
"""

from __future__ import annotations

from flask import Blueprint

bp = Blueprint("webmail", __name__, url_prefix="/webmail")

from portal.webmail import rows as rows  # noqa: E402 - the row writers register on bp
from portal.webmail import views as views  # noqa: E402 - the routes register on bp
