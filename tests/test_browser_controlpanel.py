"""The Control Panel in a real browser: the product manual's procedures, in English and Spanish.

A domain admin signs in, selects the domain in the scope selector, opens Security
settings > Continuity Service and, step by step as the manual tells: activates the
service, covers all users, then only selected users, adds a person with "Select user"
and its suggestions, removes them with the cross, adds two people and meets the warning
when switching back to all users (cancels, then confirms), and switches the emergency
password on; starts a continuity event by hand with a reason, ends it (the hand-back)
and finds it among the domain's continuity events. Then the review's steps: the warning
before only selected users uncovers everyone, the primary server form with every error
at once, Test connection's result in view and in the admin's language, and the audit
trail in sentences within 1280 px.
Each step is checked on the page as the admin sees it and saved as a screenshot.

Everything is real: Debian's Chromium driven by Playwright, a slapd of this module's own
with an admin group, the roster database, `continuity sync`, the portal behind a WSGI
server on loopback. One slapd, one server and one browser serve the whole module; each
walk has a roster of its own. Chromium is a required component: when it is missing the
test fails, it does not skip.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from playwright.sync_api import (
    Browser,
    ConsoleMessage,
    Page,
    Playwright,
    expect,
    sync_playwright,
)

from continuity.localslapd import Slapd, free_port
from tests.directory import DirectoryTree, source_toml
from tests.portal_support import (
    DOMAIN,
    OTHER_DOMAIN,
    PASSWORD,
    STAFF_PASSWORD,
    Portal,
    set_directory_password,
)
from tests.test_browser import CHROMIUM_ARGS, PNG_SIGNATURE, chromium_path, serve

TIMEOUT_MS = 10_000
DOMAIN_PAGE = f"/admin/domains/{DOMAIN}"
LOCAL_ADMIN = f"admin@{DOMAIN}"
DIRECTORY_ADMIN = f"ana@{DOMAIN}"

# The people of acme.test: uid, display name. Ana is in the directory's admin group; Cy
# has set an emergency password (as the self-service page does), the others have not.
PEOPLE = {
    "ana": "Ana García",
    "bo": "Bo Berg",
    "cy": "Cy Young",
    "eva": "Eva Núñez",
}

# What the admin reads and clicks, from the Spanish catalog for "es".
TEXTS: dict[str, dict[str, str]] = {
    "en": {
        "language": "English",
        "sign_in": "Sign in",
        "address": "Email address",
        "password": "Password",
        "control_panel": "Control Panel",
        "select_domain": "Select a domain",
        "select": "Select",
        "security_settings": "Security settings",
        "section": "Security settings > Continuity Service",
        "not_active": "Continuity Service is not active for this domain.",
        "activate": "Activate",
        "activate_heading": f"Activate Continuity Service for {DOMAIN}?",
        "confirm": "Confirm",
        "cancel": "Cancel",
        "now_active": f"Continuity Service is now active for {DOMAIN}.",
        "active": "Continuity Service is active for this domain.",
        "all_users": "All users",
        "only_selected": "Only selected users",
        "save": "Save",
        "nothing_changed": "Nothing changed.",
        "covers_selected": "Continuity Service now covers only selected users.",
        "covers_all": "Continuity Service now covers all users.",
        "users": "Continuity Service users",
        "none_listed": "0 users on the list.",
        "one_listed": "1 user on the list.",
        "two_listed": "2 users on the list.",
        "add": "Add",
        "add_heading": "Add Continuity Service users",
        "select_user": "Select user",
        "already_listed": "already on the list",
        "added": "{address} was added to the Continuity Service users.",
        "remove_user": "Remove user",
        "remove_button": "Remove {address}",
        "remove_heading": "Remove {address} from the Continuity Service users?",
        "removed": "{address} was removed from the Continuity Service users.",
        "all_heading": f"Cover all users of {DOMAIN}?",
        "warning_two": "The 2 individually added users will be removed from the list.",
        "emptied_two": "2 individually added users were removed from the list.",
        "emergency_switch": "Activate the emergency password",
        "emergency_on": "The emergency password is now switched on for this domain.",
        "without_three": "3 covered people have not set an emergency password yet.",
        "keep_active": "Keep Continuity Service permanently active.",
        "not_checked": "Not checked yet: nothing has checked the primary mail server so far.",
        "emergency_unavailable": (
            "Continuity Service is not active for this domain: activate it to use the"
            " emergency password."
        ),
        "selected_heading": f"Cover only selected users of {DOMAIN}?",
        "warning_four": ("4 users covered now are not on the list and will no longer be covered."),
        "fields_notice": "2 fields need correcting: see the message under each.",
        "bad_ip": (
            "“999.999.999.999” is not a valid IP address (four numbers from 0 to 255, or IPv6)."
        ),
        "port_range": "The port must be a whole number from 1 to 65535.",
        "test_connection": "Test connection",
        "probe_failed": "The connection failed.",
        "refused": "Connection refused: nothing listens on that port, or a firewall refuses.",
        "audit_trail": "Audit trail",
        "audit_activated": "Continuity Service activated",
        "audit_to_selected": "Who is covered: from all users to only selected users.",
        "start_event": "Start continuity event",
        "start_heading": f"Start a continuity event for {DOMAIN}?",
        "start_held": (
            f"From now on, mail for {DOMAIN} is held: nothing is delivered to the primary mail"
            " server until the event ends."
        ),
        "reason": "Reason (optional, kept with the event)",
        "started": (
            f"A continuity event has started for {DOMAIN}: its mail is held until you end"
            " the event."
        ),
        "in_event": ": mail for this domain is held.",
        "end_event": "End continuity event",
        "end_heading": f"End the continuity event of {DOMAIN}?",
        "end_handed_back": (
            "The held mail is handed back to the primary mail server, oldest first, each"
            " message once."
        ),
        "ending": (
            f"The held mail of {DOMAIN} is being handed back to the primary mail server; the"
            " event ends when none is left."
        ),
        "recovering": ", recovering: the held mail is being handed back",
        "all_events": "All continuity events",
        "events_heading": "Continuity events",
        "handing_back": "handing back now",
    },
    "es": {
        "language": "Español",
        "sign_in": "Iniciar sesión",
        "address": "Dirección de correo electrónico",
        "password": "Contraseña",
        "control_panel": "Panel de control",
        "select_domain": "Selección de ámbitos",
        "select": "Seleccionar",
        "security_settings": "Configuración de seguridad",
        "section": "Configuración de seguridad > Continuity Service",
        "not_active": "Continuity Service no está activo para este dominio.",
        "activate": "Activar",
        "activate_heading": f"¿Activar Continuity Service para {DOMAIN}?",
        "confirm": "Confirmar",
        "cancel": "Cancelar",
        "now_active": f"Continuity Service está ahora activo para {DOMAIN}.",
        "active": "Continuity Service está activo para este dominio.",
        "all_users": "Todos los usuarios",
        "only_selected": "Solo usuarios seleccionados",
        "save": "Guardar",
        "nothing_changed": "No ha cambiado nada.",
        "covers_selected": "Continuity Service cubre ahora solo a los usuarios seleccionados.",
        "covers_all": "Continuity Service cubre ahora a todos los usuarios.",
        "users": "Usuarios de Continuity Service",
        "none_listed": "0 usuarios en la lista.",
        "one_listed": "1 usuario en la lista.",
        "two_listed": "2 usuarios en la lista.",
        "add": "Añadir",
        "add_heading": "Añadir usuarios de Continuity Service",
        "select_user": "Seleccionar usuario",
        "already_listed": "ya está en la lista",
        "added": "Se ha añadido {address} a los usuarios de Continuity Service.",
        "remove_user": "Quitar usuario",
        "remove_button": "Quitar {address}",
        "remove_heading": "¿Quitar a {address} de los usuarios de Continuity Service?",
        "removed": "Se ha quitado a {address} de los usuarios de Continuity Service.",
        "all_heading": f"¿Cubrir a todos los usuarios de {DOMAIN}?",
        "warning_two": "Los 2 usuarios añadidos individualmente se quitarán de la lista.",
        "emptied_two": "Se han quitado de la lista 2 usuarios añadidos individualmente.",
        "emergency_switch": "Activar la contraseña de emergencia",
        "emergency_on": "La contraseña de emergencia está ahora activada para este dominio.",
        "without_three": (
            "3 personas cubiertas aún no han establecido una contraseña de emergencia."
        ),
        "keep_active": "Mantenga Continuity Service activo de forma permanente.",
        "not_checked": (
            "Aún sin comprobar: nada ha comprobado todavía el servidor de correo principal."
        ),
        "emergency_unavailable": (
            "Continuity Service no está activo para este dominio: actívelo para usar la"
            " contraseña de emergencia."
        ),
        "selected_heading": f"¿Cubrir solo a los usuarios seleccionados de {DOMAIN}?",
        "warning_four": (
            "4 usuarios cubiertos ahora no están en la lista y dejarán de estar cubiertos."
        ),
        "fields_notice": "2 campos necesitan corrección: vea el mensaje debajo de cada uno.",
        "bad_ip": (
            "«999.999.999.999» no es una dirección IP válida (cuatro números de 0 a 255, o IPv6)."
        ),
        "port_range": "El puerto debe ser un número entero entre 1 y 65535.",
        "test_connection": "Probar la conexión",
        "probe_failed": "La conexión ha fallado.",
        "refused": ("Conexión rechazada: nada escucha en ese puerto, o un cortafuegos la rechaza."),
        "audit_trail": "Registro de auditoría",
        "audit_activated": "Continuity Service activado",
        "audit_to_selected": (
            "Quién está cubierto: de todos los usuarios a solo los usuarios seleccionados."
        ),
        "start_event": "Iniciar evento de Continuity",
        "start_heading": f"¿Iniciar un evento de Continuity para {DOMAIN}?",
        "start_held": (
            f"A partir de ahora, el correo de {DOMAIN} se retiene: no se entrega nada al"
            " servidor de correo principal hasta que termine el evento."
        ),
        "reason": "Motivo (opcional, se guarda con el evento)",
        "started": (
            f"Se ha iniciado un evento de Continuity para {DOMAIN}: su correo se retiene"
            " hasta que usted termine el evento."
        ),
        "in_event": ": el correo de este dominio se retiene.",
        "end_event": "Terminar evento de Continuity",
        "end_heading": f"¿Terminar el evento de Continuity de {DOMAIN}?",
        "end_handed_back": (
            "El correo retenido se devuelve al servidor de correo principal, empezando por el"
            " más antiguo, cada mensaje una sola vez."
        ),
        "ending": (
            f"El correo retenido de {DOMAIN} se está devolviendo al servidor de correo"
            " principal; el evento termina cuando no quede nada."
        ),
        "recovering": ", en recuperación: el correo retenido se está devolviendo",
        "all_events": "Todos los eventos de Continuity",
        "events_heading": "Eventos de Continuity",
        "handing_back": "devolviendo ahora",
    },
}


@dataclass(frozen=True)
class Walk:
    """One walk through the manual: its language, who signs in, whom it adds."""

    lang: str
    admin: str  # the address the admin signs in with
    admin_password: str
    first: tuple[str, str]  # (three characters of the name to type, uid)
    second: tuple[str, str]


WALKS = [
    # The normal case: a directory person in the admin group, with the directory password.
    Walk("en", DIRECTORY_ADMIN, PASSWORD, ("Ber", "bo"), ("You", "cy")),
    # A local staff account (`continuity staff add --role admin --domain acme.test`).
    Walk("es", LOCAL_ADMIN, STAFF_PASSWORD, ("Núñ", "eva"), ("You", "cy")),
]


# ---------------------------------------------------------------------------
# One slapd, one server, one browser for the module
# ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def panel_slapd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Slapd]:
    """A slapd of this module's own; each walk reads a fresh subtree of it."""
    server = Slapd(tmp_path_factory.mktemp("slapd"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


class Site:
    """A WSGI app whose portal each walk sets: one server, a fresh roster per walk."""

    def __init__(self) -> None:
        self.app: Flask | None = None
        self.base_url = ""

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        assert self.app is not None, "no portal is being served"
        return self.app(environ, start_response)


@pytest.fixture(scope="module")
def site() -> Iterator[Site]:
    """The portal's server on a free loopback port, for the module."""
    served = Site()
    with serve(served) as base_url:  # type: ignore[arg-type]  # any WSGI app will do
        served.base_url = base_url
        yield served


class Chromium:
    """Debian's Chromium, started on first use (after chromium_path() has had its say)."""

    def __init__(self) -> None:
        self._playwright: Playwright | None = None
        self._browser: Browser | None = None

    def browser(self, executable: str) -> Browser:
        if self._browser is None:
            self._playwright = sync_playwright().start()
            self._browser = self._playwright.chromium.launch(
                executable_path=executable, args=CHROMIUM_ARGS, headless=True
            )
        return self._browser

    def close(self) -> None:
        try:
            if self._browser is not None:
                self._browser.close()
        finally:
            if self._playwright is not None:
                self._playwright.stop()


@pytest.fixture(scope="module")
def chromium() -> Iterator[Chromium]:
    """One browser for the module; each walk opens a context (cookies) of its own."""
    holder = Chromium()
    try:
        yield holder
    finally:
        holder.close()


# ---------------------------------------------------------------------------
# The roster and the directory of one walk
# ---------------------------------------------------------------------------
def build_portal(tmp_path: Path, database_url: str, slapd: Slapd) -> Portal:
    """acme.test (the source's domain, with an admin group) and other.test (no admin here);
    the people synced by the real `continuity sync`; a local admin of acme.test."""
    tree = DirectoryTree.create(slapd)
    for uid, name in PEOPLE.items():
        dn = tree.add_person(uid, f"{uid}@{DOMAIN}", cn=name, display_name=name)
        set_directory_password(slapd, dn, PASSWORD)
    admins = tree.add_group("continuity-admins", tree.dn("ana"))
    source = source_toml(
        "corp",
        slapd.url,
        tree.base_dn,
        slapd.root_dn,
        slapd.root_password,
        domains=[DOMAIN],
        admin_group=admins,
    )
    portal = Portal(tmp_path, database_url, source, domains=(DOMAIN, OTHER_DOMAIN))
    portal.sync()
    assert sorted(portal.tool.people()) == [f"{uid}@{DOMAIN}" for uid in sorted(PEOPLE)]
    portal.add_staff(LOCAL_ADMIN, "admin", DOMAIN)
    portal.set_emergency_password(f"cy@{DOMAIN}")
    return portal


# ---------------------------------------------------------------------------
# What the admin sees
# ---------------------------------------------------------------------------
@dataclass
class Shots:
    """One PNG per step: ``<lang>-NN-<step>.png`` in the test's output folder."""

    folder: Path
    lang: str
    page: Page
    files: list[Path] = field(default_factory=list)

    def take(self, step: str) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / f"{self.lang}-{len(self.files) + 1:02d}-{step}.png"
        self.page.screenshot(path=str(path), full_page=True)
        self.files.append(path)


def listed_addresses(page: Page) -> list[str]:
    """The addresses in the "Continuity Service users" table, top to bottom."""
    cells = page.locator("#listed tbody tr td:first-child")
    return [text.split()[0] for text in cells.all_inner_texts()]


def expect_status(page: Page, *messages: str) -> None:
    """The page's notices (role=status) are exactly ``messages``."""
    expect(page.get_by_role("status")).to_have_text(list(messages))


@pytest.fixture
def walk(request: pytest.FixtureRequest) -> Walk:
    """English with the directory admin, Spanish with the local admin."""
    chosen: Walk = request.param
    return chosen


# Each language walks once: English on SQLite, Spanish on PostgreSQL when the suite has
# it (each walk takes about 18 s; the Control Panel's rules run on both databases in
# tests/test_controlpanel.py).
SPANISH_DATABASE = "postgresql" if os.environ.get("CONTINUITY_TEST_DATABASE_URL") else "sqlite"


@pytest.mark.parametrize(
    ("walk", "database_url"),
    [(WALKS[0], "sqlite"), (WALKS[1], SPANISH_DATABASE)],
    indirect=True,
    ids=["en-sqlite", f"es-{SPANISH_DATABASE}"],
)
def test_control_panel_manual_in_chromium(
    walk: Walk,
    tmp_path: Path,
    database_url: str,
    panel_slapd: Slapd,
    site: Site,
    chromium: Chromium,
) -> None:
    """The manual's procedures, one after the other, in one language; a screenshot a step."""
    executable = chromium_path()  # first: a missing browser fails before the walk's set-up
    t = TEXTS[walk.lang]
    portal = build_portal(tmp_path, database_url, panel_slapd)
    # Test connection tries a closed port of this host: allowed here as in the demo.
    site.app = portal.build(gateway={"allow_local_primary": True})
    base = site.base_url
    problems: list[str] = []  # console errors, page errors, CSP violations

    def on_console(message: ConsoleMessage) -> None:
        if message.type == "error":
            problems.append(f"console: {message.location.get('url', '')}: {message.text}")

    try:
        # A 1280 px window, as the review measured the pages in.
        context = chromium.browser(executable).new_context(
            locale="en-GB", viewport={"width": 1280, "height": 800}
        )
        context.expose_binding(
            "reportCspViolation", lambda source, text: problems.append(f"CSP: {text}")
        )
        context.add_init_script(
            "document.addEventListener('securitypolicyviolation', (e) =>"
            " window.reportCspViolation(e.violatedDirective + ' blocked ' + e.blockedURI"
            " + ' on ' + e.documentURI));"
        )
        page = context.new_page()
        page.set_default_timeout(TIMEOUT_MS)
        page.on("console", on_console)
        page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
        shots = Shots(tmp_path / "screenshots", walk.lang, page)
        try:
            walk_the_manual(page, base, walk, t, shots)
        finally:
            context.close()
        check_audit_trail(portal, walk)
    finally:
        site.app = None
        portal.close()

    print(f"screenshots: {shots.folder}")
    assert len(shots.files) >= 23
    for path in shots.files:
        data = path.read_bytes()
        assert data.startswith(PNG_SIGNATURE) and len(data) > 1000, path
    # The primary form's errors come with status 400, which Chromium logs: that one only.
    refused_form = [p for p in problems if "/primary#primary" in p and "status of 400" in p]
    assert len(refused_form) == 1, problems
    assert [p for p in problems if p not in refused_form] == [], problems


def walk_the_manual(page: Page, base: str, walk: Walk, t: dict[str, str], shots: Shots) -> None:
    """Every procedure of the manual, checked as the admin sees it."""
    first_typed, first_uid = walk.first
    second_typed, second_uid = walk.second
    first, second = f"{first_uid}@{DOMAIN}", f"{second_uid}@{DOMAIN}"

    # 1. Sign in to the Control Panel with admin credentials (in the walk's language).
    page.goto(f"{base}/sign-in")
    if walk.lang != "en":
        page.get_by_role("button", name=t["language"], exact=True).click()
    expect(page.locator("html")).to_have_attribute("lang", walk.lang)
    expect(page.locator("h1")).to_have_text(t["sign_in"])
    shots.take("sign-in")
    page.get_by_label(t["address"], exact=True).fill(walk.admin)
    page.get_by_label(t["password"], exact=True).fill(walk.admin_password)
    page.get_by_role("button", name=t["sign_in"], exact=True).click()
    expect(page.locator("header .who")).to_have_text(walk.admin)
    control_panel = page.locator("header").get_by_role("link", name=t["control_panel"])
    expect(control_panel).to_be_visible()
    shots.take("signed-in")

    # 2. Select the domain in the scope selector: only the admin's domain is offered.
    control_panel.click()
    expect(page).to_have_url(f"{base}/admin")
    expect(page.locator("h1")).to_have_text(t["control_panel"])
    selector = page.get_by_label(t["select_domain"], exact=True)
    expect(selector.locator("option")).to_have_text([DOMAIN])
    expect(page.locator("main")).not_to_contain_text(OTHER_DOMAIN)
    shots.take("scope-selector")
    selector.select_option(DOMAIN)
    page.get_by_role("button", name=t["select"], exact=True).click()
    expect(page).to_have_url(f"{base}/admin?domain={DOMAIN}")

    # 3. Go to Security settings > Continuity Service.
    menu = page.locator("#menu")
    expect(menu.get_by_role("heading")).to_have_text(t["security_settings"])
    shots.take("security-settings")
    menu.get_by_role("link", name="Continuity Service", exact=True).click()
    expect(page).to_have_url(f"{base}{DOMAIN_PAGE}")
    expect(page.locator("h1")).to_have_text(t["section"])
    expect(page.locator("#domain-name")).to_have_text(DOMAIN)
    expect(page.locator("#service-state")).to_have_text(t["not_active"])
    expect(page.get_by_text(t["users"], exact=True)).to_have_count(0)
    # Nothing has checked the primary: the overview does not say "normal".
    expect(page.locator("#continuity-state")).to_have_text(t["not_checked"])
    # The service is off: the emergency password is greyed out with the reason, and
    # nobody is counted as lacking one.
    expect(page.locator("#emergency-enabled")).to_be_disabled()
    expect(page.locator("#emergency-unavailable")).to_have_text(t["emergency_unavailable"])
    expect(page.locator("#without-emergency-password")).to_have_count(0)
    expect(page.locator("#reminder-count")).to_have_count(0)
    check_language_button_contrast(page)
    shots.take("continuity-service")

    # Activate: the confirmation page with the manual's "Important", Confirm; the page
    # says it is active. The address ends without "?".
    page.get_by_role("link", name=t["activate"], exact=True).click()
    expect(page).to_have_url(f"{base}{DOMAIN_PAGE}/activate")
    expect(page.locator("h1")).to_have_text(t["activate_heading"])
    expect(page.locator("ul.points li")).to_have_count(5)
    expect(page.locator("#important li").last).to_have_text(t["keep_active"])
    shots.take("activate-confirmation")
    page.get_by_role("button", name=t["confirm"], exact=True).click()
    expect(page).to_have_url(f"{base}{DOMAIN_PAGE}")
    expect_status(page, t["now_active"])
    expect(page.locator("#service-state")).to_have_text(t["active"])
    shots.take("activated")

    all_users = page.get_by_role("radio", name=t["all_users"], exact=True)
    only_selected = page.get_by_role("radio", name=t["only_selected"], exact=True)
    coverage_form = page.locator("form", has=all_users)

    # All users: choose, save (an activated domain covers everyone already).
    expect(all_users).to_be_checked()
    all_users.check()
    coverage_form.get_by_role("button", name=t["save"], exact=True).click()
    expect_status(page, t["nothing_changed"])
    expect(all_users).to_be_checked()
    expect(page.locator("#covered")).to_have_text(str(len(PEOPLE)))
    expect(page.get_by_role("heading", name=t["users"], exact=True)).to_have_count(0)
    shots.take("all-users")

    # Only selected users: choose, save; the warning says all 4 covered people lose
    # their coverage (nobody is listed yet); Confirm; the empty table.
    only_selected.check()
    coverage_form.get_by_role("button", name=t["save"], exact=True).click()
    expect(page.locator("h1")).to_have_text(t["selected_heading"])
    expect(page.get_by_role("alert")).to_have_text(t["warning_four"])
    expect(page.locator("#important li").last).to_have_text(t["keep_active"])
    shots.take("only-selected-warning")
    page.get_by_role("button", name=t["confirm"], exact=True).click()
    expect(page).to_have_url(f"{base}{DOMAIN_PAGE}")
    expect_status(page, t["covers_selected"])
    expect(only_selected).to_be_checked()
    expect(page.get_by_role("heading", name=t["users"], exact=True)).to_be_visible()
    expect(page.locator("#listed-count")).to_have_text(t["none_listed"])
    expect(page.locator("#listed tbody tr")).to_have_count(0)
    expect(page.locator("#covered")).to_have_text("0")
    shots.take("only-selected-users")

    # Add: "Select user", three characters of the name, pick the suggestion, Add.
    add_with_suggestion(page, base, t, first_typed, first, shots)
    expect_status(page, t["added"].format(address=first))
    expect(page.locator("#listed-count")).to_have_text(t["one_listed"])
    assert listed_addresses(page) == [first]
    row = page.locator("#listed tbody tr", has_text=first)
    expect(row.locator("td").nth(1)).to_have_text(PEOPLE[first_uid])
    expect(row.locator("td").nth(3)).to_have_text(walk.admin)
    shots.take("added")

    # Remove with the cross in the "Remove user" column, confirm: gone from the table.
    headers = page.locator("#listed thead th").all_inner_texts()
    assert t["remove_user"] in headers, headers
    cross = row.locator("td").nth(headers.index(t["remove_user"])).get_by_role("link")
    expect(cross).to_have_text("×")
    expect(cross).to_have_accessible_name(t["remove_button"].format(address=first))
    cross.click()
    expect(page).to_have_url(re.compile(re.escape(f"{base}{DOMAIN_PAGE}/people/") + r"\d+/remove$"))
    expect(page.locator("h1")).to_have_text(t["remove_heading"].format(address=first))
    shots.take("remove-confirmation")
    page.get_by_role("button", name=t["confirm"], exact=True).click()
    expect(page).to_have_url(f"{base}{DOMAIN_PAGE}")
    expect_status(page, t["removed"].format(address=first))
    expect(page.locator("#listed-count")).to_have_text(t["none_listed"])
    expect(page.locator("#listed tbody tr")).to_have_count(0)
    expect(page.locator("main")).not_to_contain_text(PEOPLE[first_uid])
    shots.take("removed")

    # Add two people again.
    add_with_suggestion(page, base, t, first_typed, first, None)
    add_with_suggestion(page, base, t, second_typed, second, None)
    expect(page.locator("#listed-count")).to_have_text(t["two_listed"])
    assert listed_addresses(page) == sorted([first, second])
    check_no_wrapping(page)
    shots.take("two-added")

    # All users: the warning names the 2 who will go; Cancel changes nothing.
    all_users.check()
    coverage_form.get_by_role("button", name=t["save"], exact=True).click()
    expect(page.locator("h1")).to_have_text(t["all_heading"])
    expect(page.get_by_role("alert")).to_have_text(t["warning_two"])
    shots.take("all-users-warning")
    page.get_by_role("link", name=t["cancel"], exact=True).click()
    expect(page).to_have_url(f"{base}{DOMAIN_PAGE}")
    expect(page.get_by_role("status")).to_have_count(0)
    expect(only_selected).to_be_checked()
    expect(page.locator("#listed-count")).to_have_text(t["two_listed"])
    assert listed_addresses(page) == sorted([first, second])
    shots.take("all-users-cancelled")

    # Switch again and Confirm: all users, the list is gone.
    all_users.check()
    coverage_form.get_by_role("button", name=t["save"], exact=True).click()
    expect(page.get_by_role("alert")).to_have_text(t["warning_two"])
    page.get_by_role("button", name=t["confirm"], exact=True).click()
    expect(page).to_have_url(f"{base}{DOMAIN_PAGE}")
    expect_status(page, t["covers_all"], t["emptied_two"])
    expect(all_users).to_be_checked()
    expect(page.get_by_role("heading", name=t["users"], exact=True)).to_have_count(0)
    expect(page.locator("#listed")).to_have_count(0)
    expect(page.locator("#covered")).to_have_text(str(len(PEOPLE)))
    shots.take("all-users-confirmed")

    # The emergency password switch: on; the count of covered people without one
    # (none while it is off).
    switch = page.get_by_label(t["emergency_switch"], exact=True)
    expect(switch).not_to_be_checked()
    expect(page.locator("#reminder-count")).to_have_count(0)
    expect(page.locator("#without-emergency-password")).to_have_count(0)
    switch.check()
    page.locator("form", has=switch).get_by_role("button", name=t["save"], exact=True).click()
    expect_status(page, t["emergency_on"])
    expect(page.get_by_label(t["emergency_switch"], exact=True)).to_be_checked()
    expect(page.locator("#reminder-count")).to_have_text(t["without_three"])
    expect(page.locator("#without-emergency-password")).to_have_text("3")
    shots.take("emergency-password-on")

    # Start a continuity event by hand: the confirmation says the mail is held, a reason,
    # Confirm; the overview says the domain is in an event, and "End" replaces "Start".
    page.get_by_role("link", name=t["start_event"], exact=True).click()
    expect(page).to_have_url(f"{base}{DOMAIN_PAGE}/events/start")
    expect(page.locator("h1")).to_have_text(t["start_heading"])
    expect(page.locator("ul.points li").first).to_have_text(t["start_held"])
    page.get_by_label(t["reason"], exact=True).fill("Mantenimiento / maintenance")
    shots.take("start-event-confirmation")
    page.get_by_role("button", name=t["confirm"], exact=True).click()
    expect(page).to_have_url(f"{base}{DOMAIN_PAGE}")
    expect_status(page, t["started"])
    expect(page.locator("#continuity-state")).to_contain_text(t["in_event"])
    expect(page.get_by_role("link", name=t["start_event"], exact=True)).to_have_count(0)
    shots.take("event-started")

    # End it: the confirmation says the held mail is handed back; Confirm; recovering.
    page.get_by_role("link", name=t["end_event"], exact=True).click()
    expect(page).to_have_url(f"{base}{DOMAIN_PAGE}/events/end")
    expect(page.locator("h1")).to_have_text(t["end_heading"])
    expect(page.locator("ul.points li").first).to_have_text(t["end_handed_back"])
    shots.take("end-event-confirmation")
    page.get_by_role("button", name=t["confirm"], exact=True).click()
    expect(page).to_have_url(f"{base}{DOMAIN_PAGE}")
    expect_status(page, t["ending"])
    expect(page.locator("#continuity-state")).to_contain_text(t["recovering"])
    expect(page.get_by_role("link", name=t["end_event"], exact=True)).to_have_count(0)
    shots.take("event-ending")

    # The domain's continuity events: the one just ended by hand, handing back now.
    page.get_by_role("link", name=t["all_events"], exact=True).click()
    expect(page).to_have_url(f"{base}{DOMAIN_PAGE}/events")
    expect(page.locator("h1")).to_have_text(t["events_heading"])
    expect(page.locator("#events tbody tr")).to_have_count(1)
    row = page.locator("#events tbody tr")
    expect(row).to_contain_text(t["handing_back"])
    expect(row).to_contain_text("Mantenimiento / maintenance")
    expect(row).to_contain_text(walk.admin)
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= 1280, width
    shots.take("events")
    page.goto(f"{base}{DOMAIN_PAGE}")

    # The primary mail server: an impossible address and port; every field's error
    # at once, and the notice in view (the page scrolls to the section).
    page.locator("#primary-host").fill("999.999.999.999")
    page.locator("#primary-port").fill("0")
    primary_form = page.locator("form", has=page.locator("#primary-host"))
    primary_form.get_by_role("button", name=t["save"], exact=True).click()
    notice = page.locator("#primary-notice")
    expect(notice).to_have_text(t["fields_notice"])
    expect(notice).to_be_in_viewport()
    expect(page.locator("#primary-host-error")).to_have_text(t["bad_ip"])
    expect(page.locator("#primary-port-error")).to_have_text(t["port_range"])
    shots.take("primary-errors")

    # Test connection against a closed port: the result in view, in the admin's language.
    page.locator("#primary-host").fill("127.0.0.1")
    page.locator("#primary-port").fill(str(free_port()))
    primary_form.get_by_role("button", name=t["test_connection"], exact=True).click()
    probe = page.locator("#probe")
    expect(probe.locator("h3")).to_have_text(t["probe_failed"])
    expect(probe).to_be_in_viewport()
    expect(page.locator("#probe-error")).to_have_text(t["refused"])
    shots.take("test-connection")

    # The audit trail: sentences in the admin's language, within a 1280 px window.
    page.goto(f"{base}{DOMAIN_PAGE}")
    page.get_by_role("link", name=t["audit_trail"], exact=True).first.click()
    expect(page).to_have_url(f"{base}{DOMAIN_PAGE}/audit")
    trail = page.locator("#audit")
    expect(trail).to_contain_text(t["audit_activated"])
    expect(trail).to_contain_text(t["audit_to_selected"])
    for raw in ("coverage_mode", "listed:", "true", "false", "user(s)"):
        expect(trail).not_to_contain_text(raw)
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= 1280, width
    shots.take("audit-trail")


def check_language_button_contrast(page: Page) -> None:
    """The selected language button meets WCAG AA (4.5:1) against its own background."""
    ratio = page.evaluate(
        """() => {
        const button = document.querySelector('.language button[aria-current="true"]');
        const style = getComputedStyle(button);
        const rgb = (text) => text.match(/[0-9.]+/g).slice(0, 3).map(Number);
        const lum = ([r, g, b]) => {
          const c = [r, g, b].map((v) => {
            v /= 255;
            return v <= 0.03928 ? v / 12.92 : Math.pow((v + 0.055) / 1.055, 2.4);
          });
          return 0.2126 * c[0] + 0.7152 * c[1] + 0.0722 * c[2];
        };
        const opacity = Number(style.opacity);
        const fg = lum(rgb(style.color));
        const bg = lum(rgb(style.backgroundColor));
        const [hi, lo] = fg > bg ? [fg, bg] : [bg, fg];
        return opacity < 1 ? 0 : (hi + 0.05) / (lo + 0.05);
    }"""
    )
    assert ratio >= 4.5, ratio


def check_no_wrapping(page: Page) -> None:
    """At 1280 px, no address, name or date of the users table breaks over two lines,
    and the table fits the window."""
    wrapped = page.evaluate(
        """() => [...document.querySelectorAll('#listed td.nowrap')].filter((cell) => {
        const style = getComputedStyle(cell);
        const line = parseFloat(style.lineHeight) || parseFloat(style.fontSize) * 1.2;
        const inner = cell.clientHeight - parseFloat(style.paddingTop)
          - parseFloat(style.paddingBottom);
        return inner > line * 1.5;
    }).map((cell) => cell.textContent.trim())"""
    )
    assert wrapped == [], wrapped
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= 1280, width


def add_with_suggestion(
    page: Page, base: str, t: dict[str, str], typed: str, address: str, shots: Shots | None
) -> None:
    """From the domain's page: Add, type three characters of the name in "Select user",
    wait for the person among the suggestions, pick them, Add; back on the domain's page."""
    page.get_by_role("link", name=t["add"], exact=True).click()
    expect(page).to_have_url(f"{base}{DOMAIN_PAGE}/add")
    expect(page.locator("h1")).to_have_text(t["add_heading"])
    field_ = page.get_by_label(t["select_user"], exact=True)
    field_.press_sequentially(typed, delay=30)
    uid = address.split("@")[0]
    suggestion = page.locator("#address-suggestions option")
    expect(suggestion).to_have_count(1)
    expect(suggestion).to_have_attribute("value", address)
    expect(suggestion).to_have_attribute("label", PEOPLE[uid])
    if shots is not None:
        shots.take("add-suggestion")
    # Picking an entry of a datalist puts its value in the field (the list itself is
    # drawn by the browser outside the page, where no script or test can click it).
    field_.fill(suggestion.get_attribute("value") or "")
    expect(field_).to_have_value(address)
    if shots is not None:
        shots.take("add-picked")
    page.locator("#add-form").get_by_role("button", name=t["add"], exact=True).click()
    expect(page).to_have_url(f"{base}{DOMAIN_PAGE}")


def check_audit_trail(portal: Portal, walk: Walk) -> None:
    """The roster recorded every change, by the admin who made it."""
    actions = [
        action
        for action, actor in portal.audit_actions()
        if actor == walk.admin and not action.startswith("sign_in")
    ]
    assert actions == [
        "service.activated",
        "coverage.mode_changed",
        "coverage.added",
        "coverage.removed",
        "coverage.added",
        "coverage.added",
        "coverage.mode_changed",
        "emergency_password.enabled",
        "continuity_event.started",
        "continuity_event.ended",
    ], actions
