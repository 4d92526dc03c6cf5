"""English and Spanish: the catalogue is complete, compiled and current, and the portal
speaks the language the person asked for.

The catalogue checks read the committed files (babel.cfg, messages.pot, the Spanish .po
and .mo) and the sources themselves, so a string added without a translation, a .po
edited without compiling, or a text left unwrapped in a template or a view fails here.
The language checks run the real application on the test's roster database.
"""

from __future__ import annotations

import ast
import re
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from html.parser import HTMLParser
from pathlib import Path

import pytest
from babel.messages.catalog import Catalog, Message
from babel.messages.extract import extract_from_dir
from babel.messages.frontend import parse_mapping_cfg
from babel.messages.mofile import read_mo
from babel.messages.pofile import read_po
from flask.testing import FlaskClient

from portal import create_app
from roster.config import load_config
from tests.directory import Continuity, source_toml

ROOT = Path(__file__).resolve().parent.parent
BABEL_CFG = ROOT / "babel.cfg"
TRANSLATIONS = ROOT / "portal" / "translations"
POT = TRANSLATIONS / "messages.pot"
PO = TRANSLATIONS / "es" / "LC_MESSAGES" / "messages.po"
MO = PO.with_suffix(".mo")
TEMPLATES = ROOT / "templates"

COMPILE = "`.venv/bin/pybabel compile -d portal/translations`"
REGENERATE = (
    "re-extract and update the catalogue (the commands are at the top of babel.cfg),"
    " translate the new entries, then compile"
)

# The product's own Spanish terms: an English msgid using the term on the left must
# carry the Spanish term on the right (compared without case).
GLOSSARY = {
    "emergency password": "contraseña de emergencia",
    "directory password": "contraseña del directorio",
    "reset code": "código de restablecimiento",
    "helpdesk": "soporte",
    "continuity service": "continuity service",
    "continuity": "continuity",
    "security settings": "configuración de seguridad",
    "all users": "todos los usuarios",
    "selected users only": "solo usuarios seleccionados",
    "continuity service users": "usuarios de continuity service",
}
# Short messages whose Spanish is fixed by the product, word for word.
EXACT = {
    "Sign in": "Iniciar sesión",
    "Sign out": "Cerrar sesión",
    "Emergency password": "Contraseña de emergencia",
    "Helpdesk": "Soporte",
    "Continuity Service": "Continuity Service",
    "Add": "Añadir",
    "Select user": "Seleccionar usuario",
    "Remove user": "Quitar usuario",
    "Confirm": "Confirmar",
    "All users": "Todos los usuarios",
    "Selected users only": "Solo usuarios seleccionados",
    "Continuity Service users": "Usuarios de Continuity Service",
    "Security settings": "Configuración de seguridad",
    "Security settings > Continuity Service": "Configuración de seguridad > Continuity Service",
    "Turn on the emergency password": "Activar la contraseña de emergencia",
    "Activate the emergency password": "Activar la contraseña de emergencia",
}
PLACEHOLDER = re.compile(r"%\([A-Za-z_][A-Za-z0-9_]*\)[-#0 +]*\d*(?:\.\d+)?[a-zA-Z%]")

# Words a template may show as they are, in any language: the product's name.
UNTRANSLATED_WORDS = {"Continuity"}
# Templates known to show English text that is not wrapped yet (reported to the owner).
# The marker is strict: once the template is wrapped, the xpass fails, so remove it here.
NOT_WRAPPED_YET: dict[str, str] = {}


# --- the catalogue -----------------------------------------------------------------


def _key(message: Message) -> tuple[str, str | None]:
    """A message's identity: its (singular) msgid and its context."""
    msgid = message.id if isinstance(message.id, str) else message.id[0]
    return msgid, message.context


def _read_po(path: Path) -> Catalog:
    with path.open("rb") as handle:
        return read_po(handle, locale="es" if path == PO else None)


def _entries(catalog: Catalog) -> dict[tuple[str, str | None], Message]:
    """The catalogue's messages by identity, without the header entry."""
    return {_key(m): m for m in catalog if m.id}


def _strings(message: Message) -> tuple[str, ...]:
    if isinstance(message.string, str):
        return (message.string,)
    return tuple(message.string or ())


def _extract(root: Path) -> dict[tuple[str, str | None], list[str]]:
    """What babel.cfg extracts from the sources under ``root``: msgid -> where."""
    with BABEL_CFG.open(encoding="utf-8") as handle:
        method_map, options_map = parse_mapping_cfg(handle, str(BABEL_CFG))
    found: dict[tuple[str, str | None], list[str]] = {}
    for filename, lineno, message, _comments, context in extract_from_dir(
        str(root), method_map, options_map
    ):
        msgid = message if isinstance(message, str) else message[0]
        found.setdefault((msgid, context), []).append(f"{filename}:{lineno}")
    return found


def _missing(found: dict[tuple[str, str | None], list[str]], catalog: Catalog) -> list[str]:
    known = _entries(catalog)
    return sorted(
        f"{where[0]}: {msgid!r}"
        for (msgid, ctx), where in found.items()
        if (msgid, ctx) not in known
    )


def test_babel_cfg_covers_the_views_forms_and_templates() -> None:
    with BABEL_CFG.open(encoding="utf-8") as handle:
        method_map, options_map = parse_mapping_cfg(handle, str(BABEL_CFG))
    assert ("portal/**.py", "python") in method_map
    assert ("templates/**.html", "jinja2") in method_map
    keywords = options_map["portal/**.py"]["keywords"]
    assert {"_l", "lazy_gettext"} <= set(keywords)


def test_every_message_has_a_spanish_translation() -> None:
    catalog = _read_po(PO)
    assert str(catalog.locale) == "es"
    assert not catalog.fuzzy, "the .po header is marked fuzzy"
    entries = _entries(catalog)
    assert entries, "the Spanish catalogue is empty"
    fuzzy = [m.id for m in entries.values() if m.fuzzy]
    assert not fuzzy, f"fuzzy entries (check the translation, drop the flag): {fuzzy}"
    empty = [m.id for m in entries.values() if not all(s.strip() for s in _strings(m))]
    assert not empty, f"untranslated entries: {empty}"
    for message in entries.values():
        if isinstance(message.id, tuple):
            assert len(_strings(message)) == catalog.num_plurals, message.id


def test_spanish_keeps_every_placeholder() -> None:
    catalog = _read_po(PO)
    problems = [(m.id, errors) for m, errors in catalog.check() if errors]
    assert not problems, problems
    for message in _entries(catalog).values():
        ids = [message.id] if isinstance(message.id, str) else list(message.id)
        wanted = set(PLACEHOLDER.findall(" ".join(ids)))
        for string in _strings(message):
            assert set(PLACEHOLDER.findall(string)) == wanted, (message.id, string)


def test_spanish_uses_the_product_terms() -> None:
    wrong = []
    for message in _entries(_read_po(PO)).values():
        msgid = message.id if isinstance(message.id, str) else message.id[0]
        for string in _strings(message):
            if msgid in EXACT and string != EXACT[msgid]:
                wrong.append(f"{msgid!r} -> {string!r}, not {EXACT[msgid]!r}")
            for english, spanish in GLOSSARY.items():
                if english in msgid.lower() and spanish not in string.lower():
                    wrong.append(f"{msgid!r} -> {string!r} lacks {spanish!r}")
    assert not wrong, "\n".join(wrong)


def test_the_compiled_catalogue_matches_the_po() -> None:
    po = _read_po(PO)
    with MO.open("rb") as handle:
        mo = read_mo(handle)
    wanted = {k: _strings(m) for k, m in _entries(po).items() if not m.fuzzy}
    compiled = {k: _strings(m) for k, m in _entries(mo).items()}
    stale = sorted(
        str(k[0]) for k in wanted.keys() | compiled.keys() if wanted.get(k) != compiled.get(k)
    )
    assert not stale, f"messages.mo is out of date for {stale}: run {COMPILE}"
    assert mo.plural_forms == po.plural_forms


def test_the_catalogue_holds_every_string_of_the_sources() -> None:
    found = _extract(ROOT)
    pot = _read_po(POT)
    po = _read_po(PO)
    assert not _missing(found, pot), f"not in messages.pot: {_missing(found, pot)}; {REGENERATE}"
    assert not _missing(found, po), f"not in the Spanish .po: {_missing(found, po)}; {REGENERATE}"
    stale = sorted(str(k[0]) for k in _entries(pot).keys() - found.keys())
    assert not stale, f"messages.pot holds strings the sources no longer use: {stale}; {REGENERATE}"
    assert _entries(po).keys() == _entries(pot).keys(), REGENERATE


def test_a_new_string_without_translation_is_caught(tmp_path: Path) -> None:
    (tmp_path / "templates" / "new").mkdir(parents=True)
    (tmp_path / "portal").mkdir()
    (tmp_path / "templates" / "new" / "page.html").write_text(
        '{% extends "base.html" %}{% block content %}<p>{{ _("A page nobody translated") }}'
        "</p>{% endblock %}",
        encoding="utf-8",
    )
    (tmp_path / "portal" / "view.py").write_text(
        "from flask_babel import gettext as _, lazy_gettext as _l\n"
        'LABEL = _l("A label nobody translated")\n'
        'def view():\n    return _("A flash nobody translated")\n',
        encoding="utf-8",
    )
    missing = _missing(_extract(tmp_path), _read_po(PO))
    assert missing == [
        "portal/view.py:2: 'A label nobody translated'",
        "portal/view.py:4: 'A flash nobody translated'",
        "templates/new/page.html:1: 'A page nobody translated'",
    ]


# --- text that is not wrapped for translation --------------------------------------


_JINJA_TRANS = re.compile(r"\{%-?\s*trans\b.*?\{%-?\s*endtrans\s*-?%\}", re.DOTALL)
_JINJA_TAG = re.compile(r"\{\{.*?\}\}|\{%.*?%\}|\{#.*?#\}", re.DOTALL)
_SLOT = "\ue000"  # stands for a Jinja expression or tag
_VISIBLE_ATTRIBUTES = {"title", "alt", "placeholder", "aria-label", "label"}


def _blank(match: re.Match[str]) -> str:
    """A Jinja tag replaced by a marker, its line breaks kept so line numbers hold."""
    return _SLOT + "\n" * match.group(0).count("\n")


class _TextFinder(HTMLParser):
    """Collects the text a person would read that is literal in the template."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.found: list[tuple[int, str]] = []
        self._skipping = 0

    def _check(self, text: str) -> None:
        words = re.findall(r"[^\W\d_]+", text.replace(_SLOT, " "))
        if any(word not in UNTRANSLATED_WORDS for word in words):
            self.found.append((self.getpos()[0], " ".join(text.replace(_SLOT, "…").split())))

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in {"script", "style"}:
            self._skipping += 1
        for name, value in attrs:
            if name in _VISIBLE_ATTRIBUTES and value:
                self._check(value)

    def handle_endtag(self, tag: str) -> None:
        if tag in {"script", "style"} and self._skipping:
            self._skipping -= 1

    def handle_data(self, data: str) -> None:
        if not self._skipping:
            self._check(data)


def unwrapped_template_text(source: str) -> list[tuple[int, str]]:
    """(line, text) for literal words in a Jinja template that are outside _()."""
    source = _JINJA_TRANS.sub(_blank, source)
    source = _JINJA_TAG.sub(_blank, source)
    finder = _TextFinder()
    finder.feed(source)
    finder.close()
    return finder.found


_GETTEXT = {"_", "gettext", "ngettext", "pgettext", "npgettext", "_l", "lazy_gettext"}
_SHOWN_ARGUMENT = {"flash": 0, "ValidationError": 0, "abort": 1}
_SHOWN_KEYWORDS = {"label", "message", "description"}


def _name(node: ast.expr) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    return ""


def _is_text(node: ast.expr | None) -> bool:
    """A literal that a person would read as it is (a string, an f-string, or a join)."""
    if isinstance(node, ast.Constant):
        return isinstance(node.value, str) and bool(re.search(r"[^\W\d_]", node.value))
    if isinstance(node, ast.JoinedStr):
        return True
    if isinstance(node, ast.BinOp):
        return _is_text(node.left) or _is_text(node.right)
    return False


def unwrapped_python_text(source: str) -> list[tuple[int, str]]:
    """(line, why) for messages shown to people that do not go through gettext."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Call):
            continue
        name = _name(node.func)
        if name in _GETTEXT:
            if not node.args or not (
                isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)
            ):
                found.append((node.lineno, f"{name}() needs a plain string literal to extract"))
            continue
        shown: list[ast.expr] = []
        if name in _SHOWN_ARGUMENT and len(node.args) > _SHOWN_ARGUMENT[name]:
            shown.append(node.args[_SHOWN_ARGUMENT[name]])
        if name.endswith("Field") and node.args:
            shown.append(node.args[0])
        shown += [k.value for k in node.keywords if k.arg in _SHOWN_KEYWORDS]
        found += [(node.lineno, f"{name}() shows unwrapped text") for a in shown if _is_text(a)]
    return found


def _templates() -> Iterator[object]:
    for path in sorted(TEMPLATES.rglob("*.html")):
        name = path.relative_to(TEMPLATES).as_posix()
        marks = []
        if name in NOT_WRAPPED_YET:
            marks.append(pytest.mark.xfail(reason=NOT_WRAPPED_YET[name], strict=True))
        yield pytest.param(name, id=name, marks=marks)


@pytest.mark.parametrize("name", list(_templates()))
def test_template_text_is_wrapped_for_translation(name: str) -> None:
    found = unwrapped_template_text((TEMPLATES / name).read_text(encoding="utf-8"))
    assert not found, "\n".join(f"templates/{name}:{line}: {text}" for line, text in found)


def test_python_messages_are_wrapped_for_translation() -> None:
    found = [
        f"{path.relative_to(ROOT)}:{line}: {why}"
        for path in sorted((ROOT / "portal").rglob("*.py"))
        for line, why in unwrapped_python_text(path.read_text(encoding="utf-8"))
    ]
    assert not found, "\n".join(found)


def test_the_unwrapped_text_checks_catch_what_they_should() -> None:
    template = (
        '{% extends "base.html" %}\n{% block title %}Continuity{% endblock %}\n'
        '<p>{{ _("Wrapped") }}</p>\n<p>{{ count }} people</p>\n'
        '<input placeholder="Search here">\n{# a comment #}\n'
        "{% trans %}Wrapped too{% endtrans %}\n<td>{{ x or '—' }}</td>\n"
    )
    assert unwrapped_template_text(template) == [(4, "… people"), (5, "Search here")]
    python = (
        'flash(_("ok"), "notice")\n'
        'flash("Not wrapped", "error")\n'
        'flash(f"Hello {name}")\n'
        'label = StringField("Name")\n'
        'other = StringField(_l("Name"))\n'
        'raise ValidationError("Too short")\n'
        "_(f'{x} items')\n"
        'abort(400, "Bad request")\n'
        "flash(message, 'error')\n"
    )
    assert [line for line, _why in unwrapped_python_text(python)] == [2, 3, 4, 6, 7, 8]


# --- the portal in both languages --------------------------------------------------


@contextmanager
def portal(tmp_path: Path, database_url: str, *sources: str) -> Iterator[FlaskClient]:
    """A test client of the real portal, built from a real configuration file."""
    tool = Continuity(tmp_path, database_url)
    config = load_config(tool.configure(*sources), environ={})
    app = create_app({"TESTING": True}, config=config)
    try:
        yield app.test_client()
    finally:
        app.extensions["roster_engine"].dispose()


def _html_lang(body: str) -> str:
    found = re.search(r"<html lang=\"([^\"]*)\"", body)
    assert found, body[:200]
    return found.group(1)


def _heading(body: str) -> str:
    found = re.search(r"<h1>(.*?)</h1>", body, re.DOTALL)
    assert found, body[:500]
    return found.group(1).strip()


class _Visible(HTMLParser):
    """The text of a page as a person reads it (no markup, attributes or scripts)."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []

    def handle_data(self, data: str) -> None:
        self.parts.append(data)


def _visible(body: str) -> str:
    reader = _Visible()
    reader.feed(body)
    reader.close()
    return " ".join(" ".join(reader.parts).split())


def _language_form_token(body: str) -> str:
    form = re.search(r'<form[^>]*action="/language".*?</form>', body, re.DOTALL)
    assert form, "the page has no language switcher"
    token = re.search(r'name="csrf_token" value="([^"]+)"', form.group(0))
    assert token, form.group(0)
    return token.group(1)


@pytest.mark.parametrize(
    ("accept", "lang", "heading", "label"),
    [
        ("es", "es", "Iniciar sesión", "Dirección de correo electrónico"),
        ("es-MX,es;q=0.9,en;q=0.5", "es", "Iniciar sesión", "Dirección de correo electrónico"),
        ("en", "en", "Sign in", "Email address"),
        ("en-GB,en;q=0.9,es;q=0.4", "en", "Sign in", "Email address"),
        ("fr", "en", "Sign in", "Email address"),
        (None, "en", "Sign in", "Email address"),
    ],
)
def test_the_browser_language_chooses_the_page_language(
    tmp_path: Path, database_url: str, accept: str | None, lang: str, heading: str, label: str
) -> None:
    headers = {"Accept-Language": accept} if accept else {}
    with portal(tmp_path, database_url) as client:
        response = client.get("/sign-in", headers=headers)
    body = response.get_data(as_text=True)
    assert response.status_code == 200
    assert _html_lang(body) == lang
    assert _heading(body) == heading
    assert f">{label}</label>" in body  # a form label: lazy_gettext in a form class
    assert f"<title>{heading} — Continuity</title>" in body


def test_the_spanish_pages_show_no_english(tmp_path: Path, database_url: str) -> None:
    spanish = {"Accept-Language": "es"}
    with portal(tmp_path, database_url) as client:
        sign_in = client.get("/sign-in", headers=spanish).get_data(as_text=True)
        reset = client.get("/reset", headers=spanish).get_data(as_text=True)
    assert "contraseña del directorio" in sign_in and "contraseña de emergencia" in sign_in
    assert "Tengo un código de restablecimiento de Soporte" in sign_in
    assert _heading(reset) == "Restablecer la contraseña de emergencia"
    assert ">Código de restablecimiento</label>" in reset
    assert ">Repita la nueva contraseña de emergencia</label>" in reset
    for body in (sign_in, reset):
        assert _html_lang(body) == "es"
        text = _visible(body)
        for english in ("Sign", "password", "Email", "Reset", "helpdesk", "Save", "code"):
            assert english not in text, (english, text)


def _sign_in(client: FlaskClient, address: str, accept: str) -> tuple[int, str]:
    """One failing sign-in in the language ``accept``; (status, page)."""
    page = client.get("/sign-in", headers={"Accept-Language": accept})
    token = _language_form_token(page.get_data(as_text=True))
    response = client.post(
        "/sign-in",
        data={"csrf_token": token, "address": address, "password": "not-the-password"},
        headers={"Accept-Language": accept},
    )
    return response.status_code, response.get_data(as_text=True)


def test_a_message_from_a_view_follows_the_language(tmp_path: Path, database_url: str) -> None:
    with portal(tmp_path, database_url) as client:
        for accept, expected in (
            ("es", "La dirección o la contraseña no son correctas."),
            ("en", "The address or password is not right."),
        ):
            status, body = _sign_in(client, f"nobody-{accept}@acme.test", accept)
            assert status == 401
            assert expected in body
            assert _html_lang(body) == accept


def test_a_message_with_a_number_is_translated(tmp_path: Path, database_url: str) -> None:
    with portal(tmp_path, database_url) as client:
        for _attempt in range(3):
            assert _sign_in(client, "ana@acme.test", "es")[0] == 401
        status, body = _sign_in(client, "ana@acme.test", "es")
    assert status == 401
    assert re.search(r"Demasiados intentos\. Vuelva a intentarlo dentro de \d+ segundos?\.", body)


def test_the_directory_notice_is_translated(tmp_path: Path, database_url: str) -> None:
    with socket.socket() as probe:  # a loopback port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    down = source_toml("corp", f"ldap://127.0.0.1:{port}", "dc=acme,dc=test", "cn=svc", "x")
    with portal(tmp_path, database_url, down) as client:
        status, body = _sign_in(client, "ana@acme.test", "es")
    assert status == 401
    assert "En este momento no es posible conectar con el directorio de su organización." in body
    assert "Si ya tiene una contraseña de emergencia, inicie sesión con ella." in body


def test_the_language_switcher_remembers_the_choice(tmp_path: Path, database_url: str) -> None:
    english = {"Accept-Language": "en"}
    with portal(tmp_path, database_url) as client:
        page = client.get("/sign-in", headers=english).get_data(as_text=True)
        assert _html_lang(page) == "en"
        assert 'value="es" lang="es"' in page and ">Español</button>" in page

        chosen = client.post(
            "/language",
            data={"csrf_token": _language_form_token(page), "language": "es", "next": "/sign-in"},
            headers=english,
        )
        assert chosen.status_code == 302
        assert chosen.headers["Location"] == "/sign-in"
        cookie = client.get_cookie("lang")
        assert cookie is not None and cookie.value == "es"
        assert cookie.http_only and cookie.same_site == "Lax"
        assert cookie.expires is not None  # it outlives the browser session

        page = client.get("/sign-in", headers=english).get_data(as_text=True)
        assert _html_lang(page) == "es"
        assert _heading(page) == "Iniciar sesión"
        assert re.search(r'value="es" lang="es"\s+aria-current="true" disabled', page)

        back = client.post(
            "/language",
            data={"csrf_token": _language_form_token(page), "language": "en", "next": "/reset"},
            headers={"Accept-Language": "es"},
        )
        assert back.headers["Location"] == "/reset"
        page = client.get("/reset", headers={"Accept-Language": "es"}).get_data(as_text=True)
        assert _html_lang(page) == "en"
        assert _heading(page) == "Reset your emergency password"


def test_the_language_switcher_needs_its_csrf_token(tmp_path: Path, database_url: str) -> None:
    with portal(tmp_path, database_url) as client:
        client.get("/sign-in")
        refused = client.post("/language", data={"language": "es", "next": "/sign-in"})
        assert refused.status_code == 400
        assert client.get_cookie("lang") is None


def test_an_unknown_language_falls_back_to_english(tmp_path: Path, database_url: str) -> None:
    with portal(tmp_path, database_url) as client:
        page = client.get("/sign-in", headers={"Accept-Language": "es"}).get_data(as_text=True)
        client.post(
            "/language",
            data={"csrf_token": _language_form_token(page), "language": "fr", "next": "/sign-in"},
        )
        cookie = client.get_cookie("lang")
        assert cookie is not None and cookie.value == "en"
        client.set_cookie("lang", "xx")  # a cookie the portal never set: ignored
        body = client.get("/sign-in", headers={"Accept-Language": "es"}).get_data(as_text=True)
    assert _html_lang(body) == "es"
