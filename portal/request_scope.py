"""What every request of the portal may use, whatever its blueprint: the client's
address, the request body's limit, and the roster sessions (one for reading, short
ones of their own for writing)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from flask import current_app, g, request
from sqlalchemy import Connection
from sqlalchemy.orm import Session

F = TypeVar("F", bound=Callable[..., Any])


def client_address() -> str:
    """The client's address as the portal sees it (a proxy in front sets remote_addr)."""
    return request.remote_addr or "unknown"


def body_limit(limit: int | Callable[[], int]) -> Callable[[F], F]:
    """Let this endpoint take a request body of up to ``limit`` bytes (a file upload);
    a function gives the limit at each request (from the app's configuration)."""

    def decorate(view: F) -> F:
        view._body_limit = limit  # type: ignore[attr-defined]  # a tag on the function object
        return view

    return decorate


def raise_body_limit() -> None:
    """Apply an endpoint's own body limit; runs before CSRFProtect reads the form."""
    view = current_app.view_functions.get(request.endpoint or "")
    limit = getattr(view, "_body_limit", None)
    if callable(limit):
        limit = limit()
    if limit is not None:
        request.max_content_length = limit


def db() -> Session:
    """The request's roster session (closed at the end of the request)."""
    if "db" not in g:
        g.db = current_app.extensions["roster_sessions"]()
    session: Session = g.db
    return session


@contextmanager
def writing() -> Iterator[Session]:
    """A short write transaction of its own (SQLite's write lock taken at its start)."""
    factory = current_app.extensions["roster_sessions"]
    with factory() as write, write.begin():
        write.connection(execution_options={"begin_immediate": True})
        yield write


@contextmanager
def writing_connection() -> Iterator[Connection]:
    """``writing`` on a plain connection, for the sign-in: no ORM session to set up."""
    engine = current_app.extensions["roster_sessions"].kw["bind"]
    connection = engine.connect().execution_options(begin_immediate=True)
    with connection, connection.begin():
        yield connection


def close_db(_error: BaseException | None = None) -> None:
    """Close the request's roster session."""
    found = g.pop("db", None)
    if found is not None:
        found.close()
