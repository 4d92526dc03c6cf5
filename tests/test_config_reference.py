"""deploy/continuity.toml.example is the configuration reference: it documents every key
the code reads, and nothing else, and it loads with the real loader.

The code's keys are found mechanically: the loader's own registry of the keys it accepts
(roster/config.py) and, for each of them, a read somewhere in the packages, found in
their syntax trees (``config.gateway.get("listen")``, ``standby["imap"]`` after
``standby = config.standby``, ``_setting(config, "access_log", ...)`` where ``_setting``
reads ``config.portal.get(key)``). A key added to the code without a line in the
example, or left in the example after the code stopped reading it, fails here.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from roster.config import _DIRECTORY_FIELDS, _TABLES, SECRET_KEYS, DirectoryConfig, load_config

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "deploy" / "continuity.toml.example"
PACKAGES = ("roster", "portal", "gateway", "sync", "continuity")
# The tables the Config keeps as dicts, read by the processes as config.<table>.get(key).
DICT_TABLES = frozenset(_TABLES) - {"database", "sync"}
# Accepted by the loader (configurations written from DESIGN.md's first sample hold
# it) but read by nothing: the queue is in the roster database. The example says so.
ACCEPTED_UNUSED = {("gateway", "spool_dir")}

HEADER = re.compile(r"^(?:# ?)?\[(\[)?([a-z_]+)\]?\]\s*$")
# A setting, in force or commented out: "key = value" or "# key = value" (a prose line
# that shows an alternative value is indented further and does not count).
SETTING = re.compile(r"^(# ?)?([a-z][a-z0-9_]*) = (.+)$")


def _sources() -> Iterator[tuple[Path, ast.Module]]:
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            if "migrations" not in path.parts:
                yield path, ast.parse(path.read_text(encoding="utf-8"), str(path))


def _table_of(node: ast.expr, aliases: dict[str, str]) -> str | None:
    """The table a dict expression is: ``<anything>.gateway`` or a name bound to one."""
    if isinstance(node, ast.Attribute) and node.attr in DICT_TABLES:
        return node.attr
    if isinstance(node, ast.Name):
        return aliases.get(node.id)
    return None


def _aliases(function: ast.AST, in_loader: bool) -> dict[str, str]:
    """Names bound to a table in a function: ``gateway = config.gateway``,
    ``standby, webmail = config.standby, config.webmail``; in the loader itself,
    ``sync = _single_table(raw, "sync", environ)``."""
    aliases: dict[str, str] = {}
    for node in ast.walk(function):
        pairs: list[tuple[ast.expr, ast.expr]] = []
        if isinstance(node, ast.Assign):
            for target in node.targets:
                if isinstance(target, ast.Tuple) and isinstance(node.value, ast.Tuple):
                    pairs += zip(target.elts, node.value.elts, strict=False)
                else:
                    pairs.append((target, node.value))
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            pairs.append((node.target, node.value))
        for target, value in pairs:
            if not isinstance(target, ast.Name):
                continue
            table = _table_of(value, {})
            if table is None and in_loader and isinstance(value, ast.Call):
                named = {
                    n.value
                    for n in ast.walk(value)
                    if isinstance(n, ast.Constant) and n.value in _TABLES
                }
                table = named.pop() if len(named) == 1 else None
            if table is not None:
                aliases[target.id] = table
    return aliases


def _key_read(node: ast.AST, aliases: dict[str, str]) -> tuple[str, ast.expr] | None:
    """(table, key expression) of ``T.get(key, ...)``, ``T[key]`` or ``key in T``."""
    if (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "get"
        and node.args
    ):
        table = _table_of(node.func.value, aliases)
        if table is not None:
            return table, node.args[0]
    if isinstance(node, ast.Subscript):
        table = _table_of(node.value, aliases)
        if table is not None:
            return table, node.slice
    if isinstance(node, ast.Compare) and isinstance(node.ops[0], ast.In):
        table = _table_of(node.comparators[0], aliases)
        if table is not None:
            return table, node.left
    return None


def code_reads() -> set[tuple[str, str]]:
    """Every (table, key) some module of ours reads from the configuration."""
    reads: set[tuple[str, str]] = set()
    readers: dict[str, tuple[int, str]] = {}  # function -> (its key parameter, table)
    trees = list(_sources())
    for path, tree in trees:
        in_loader = path == ROOT / "roster" / "config.py"
        for function in ast.walk(tree):
            if not isinstance(function, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            aliases = _aliases(function, in_loader and function.name == "load_config")
            parameters = [a.arg for a in function.args.args]
            for node in ast.walk(function):
                found = _key_read(node, aliases)
                if found is None:
                    continue
                table, key = found
                if isinstance(key, ast.Constant) and isinstance(key.value, str):
                    reads.add((table, key.value))
                elif isinstance(key, ast.Name) and key.id in parameters:
                    readers[function.name] = (parameters.index(key.id), table)
    # Calls of a function that reads the key it is given: _setting(config, "access_log").
    for _path, tree in trees:
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            name = getattr(node.func, "id", None) or getattr(node.func, "attr", None)
            if name in readers:
                position, table = readers[name]
                if len(node.args) > position:
                    key = node.args[position]
                    if isinstance(key, ast.Constant) and isinstance(key.value, str):
                        reads.add((table, key.value))
    return reads


def directory_fields_read() -> set[str]:
    """Every attribute read outside the loader (``source.page_size``, ...), and the
    ``[[directory]]`` keys the loader itself reads (``values.get("allow_cleartext_bind")``
    in ``_directory``: a check made once, at start)."""
    names: set[str] = set()
    for path, tree in _sources():
        loader = path == ROOT / "roster" / "config.py"
        for node in ast.walk(tree):
            if not loader and isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Load):
                names.add(node.attr)
            if loader and isinstance(node, ast.FunctionDef) and node.name == "_directory":
                for inner in ast.walk(node):
                    found = _key_read(inner, {"values": "directory"})
                    if found and isinstance(found[1], ast.Constant):
                        names.add(str(found[1].value))
    return names


def registry() -> set[tuple[str, str]]:
    """Every (table, key) the loader accepts (a secret's ``_file`` form is the same key)."""
    keys = {(table, key) for table, checks in _TABLES.items() for key in checks}
    return keys | {("directory", key) for key in _DIRECTORY_FIELDS}


def example_settings(text: str) -> list[tuple[str, str, int, bool]]:
    """(table, key, line number, commented out) of every setting in the example."""
    found: list[tuple[str, str, int, bool]] = []
    table = ""
    for number, line in enumerate(text.splitlines(), 1):
        header = HEADER.match(line)
        if header:
            table = header.group(2)
            continue
        setting = SETTING.match(line)
        if setting:
            assert table, f"line {number}: a setting before any table"
            found.append((table, setting.group(2), number, bool(setting.group(1))))
    return found


def documented() -> set[tuple[str, str]]:
    """Every (table, key) the example shows, a secret's ``k_file`` counting as ``k``."""
    keys = set()
    for table, key, _number, _commented in example_settings(EXAMPLE.read_text("utf-8")):
        base = key.removesuffix("_file")
        keys.add((table, base if base in SECRET_KEYS else key))
    return keys


def test_the_scan_finds_reads_of_every_shape() -> None:
    """The scanner itself: a direct read, an alias, a tuple of aliases, a subscript and
    a function given the key (the shapes the packages use today)."""
    reads = code_reads()
    assert ("gateway", "deny_primary_networks") in reads  # config.gateway.get(...)
    assert ("gateway", "claim_seconds") in reads  # gateway = config.gateway; gateway.get
    assert ("webmail", "connections_per_person") in reads  # standby, webmail = ...
    assert ("portal", "base_url") in reads  # config.portal["base_url"]
    assert ("portal", "session_idle_minutes") in reads  # _setting(config, "...", ...)
    assert ("sync", "lock_seconds") in reads  # the loader's own sync.get(...)
    assert ("database", "url") in reads


def test_every_key_the_code_reads_is_accepted_by_the_loader() -> None:
    """A key read but not in the registry could never be set: the loader refuses it."""
    assert code_reads() - registry() == set()


def test_every_key_the_loader_accepts_is_read_by_the_code() -> None:
    """A key accepted and read by nothing is a setting that does nothing."""
    reads = code_reads()
    attributes = directory_fields_read()
    unread = {
        (table, key)
        for table, key in registry()
        if table != "directory" and (table, key) not in reads
    }
    assert unread == ACCEPTED_UNUSED
    assert ACCEPTED_UNUSED & reads == set()
    fields = {"urls" if key == "url" else key for key in _DIRECTORY_FIELDS}
    assert fields <= set(DirectoryConfig.__dataclass_fields__)
    assert {field for field in fields if field not in attributes} == set()


def test_the_example_documents_every_key_and_only_those() -> None:
    missing = registry() - documented()
    assert missing == set(), f"keys the code reads but {EXAMPLE.name} does not document"
    unknown = documented() - registry()
    assert unknown == set(), f"keys {EXAMPLE.name} documents but the code does not know"


def test_every_setting_in_the_example_has_words_above_it() -> None:
    """A key is documented by a comment: the first setting of each key belongs to a
    block of lines with at least one line of prose (a comment that is not a setting)."""
    lines = EXAMPLE.read_text("utf-8").splitlines()
    seen: set[tuple[str, str]] = set()
    for table, key, number, _commented in example_settings("\n".join(lines)):
        if (table, key) in seen:
            continue  # a second example of a key (the OpenLDAP source) needs no words
        seen.add((table, key))
        block = []
        for line in reversed(lines[: number - 1]):
            if not line.strip() or HEADER.match(line):
                break
            block.append(line)
        prose = [
            line
            for line in block
            if line.startswith("#") and not SETTING.match(line) and line.strip("# ")
        ]
        assert prose, f"[{table}] {key} (line {number}) has no comment saying what it is"


def _with_files(text: str, tmp_path: Path) -> str:
    """The example with each file it names under /etc/continuity made in ``tmp_path``
    (secrets long enough for the loader's checks)."""

    def replace(found: re.Match[str]) -> str:
        path = tmp_path / found.group(1).replace("/", "_")
        path.write_text("s3cret-" + "x" * 40 + "\n", encoding="utf-8")
        return f'"{path}"'

    return re.sub(r'"/etc/continuity/([^"]+)"', replace, text)


def _uncommented(text: str) -> str:
    """The example with every commented-out setting (and table) in force, except a
    setting already in force in its table (an alternative value)."""
    lines = text.splitlines()
    in_force: set[tuple[int, str]] = set()  # (the table's header line, key)
    table = -1
    for number, line in enumerate(lines):
        setting = SETTING.match(line)
        if HEADER.match(line):
            table = number
        elif setting and not setting.group(1):
            in_force.add((table, setting.group(2)))
    out = []
    for number, line in enumerate(lines):
        setting = SETTING.match(line)
        if HEADER.match(line):
            table = number
            line = line.removeprefix("#").strip()
        elif setting and setting.group(1) and (table, setting.group(2)) not in in_force:
            line = line.removeprefix("#").strip()
        out.append(line)
    return "\n".join(out) + "\n"


@pytest.mark.parametrize("variant", ["as shipped", "every setting uncommented"])
def test_the_example_loads_with_the_real_loader(tmp_path: Path, variant: str) -> None:
    """The example, with its files made, is a valid configuration as it stands and with
    every commented-out setting turned on (each example value is a valid one)."""
    text = _with_files(EXAMPLE.read_text("utf-8"), tmp_path)
    if variant != "as shipped":
        text = _uncommented(text)
    path = tmp_path / "continuity.toml"
    path.write_text(text, encoding="utf-8")

    config = load_config(path, environ={})

    assert config.database_url == "sqlite:////var/lib/continuity/roster.db"
    corp = config.directory("corp")
    assert corp.urls == ("ldaps://dc1.corp.example:636", "ldaps://dc2.corp.example:636")
    assert corp.bind_password.startswith("s3cret-") and corp.profile == "ad"
    assert config.standby["master_password"].startswith("s3cret-")
    assert config.portal["base_url"] == "https://continuity.example"
    assert len(config.portal["secret_key"]) >= 32
    if variant == "as shipped":
        assert [d.name for d in config.directories] == ["corp"]
        assert config.gateway == {"listen": "0.0.0.0:25"}
    else:
        assert [d.name for d in config.directories] == ["corp", "lab"]
        assert config.outbound["password"].startswith("s3cret-")
        tables = {table: getattr(config, table) for table in DICT_TABLES}
        for table, values in tables.items():
            shown = {key for t, key in documented() if t == table}
            assert set(values) == shown, f"[{table}]: every documented key, in force"


def test_the_shipped_example_starts_the_portal_and_the_gateway(tmp_path: Path) -> None:
    """What the processes build from the example at start: the portal's app (a fresh
    SQLite roster instead of /var/lib) and the gateway's and webmail's settings."""
    from gateway.service import settings_from as gateway_settings
    from portal import create_app
    from portal.webmail.imap import settings_from as store_settings

    path = tmp_path / "continuity.toml"
    path.write_text(_with_files(EXAMPLE.read_text("utf-8"), tmp_path), encoding="utf-8")
    config = load_config(path, environ={"CONTINUITY_DATABASE_URL": f"sqlite:///{tmp_path}/r.db"})

    gateway = gateway_settings(config)
    assert (gateway.host, gateway.port) == ("0.0.0.0", 25)  # noqa: S104 - the MX listens
    assert gateway.relay == ("smarthost.example", 587) and gateway.lmtp == ("127.0.0.1", 24)
    store = store_settings(config)
    assert (store.host, store.port, store.tls) == ("127.0.0.1", 143, False)
    app = create_app(config=config)
    assert app.config["SESSION_COOKIE_SECURE"] is True
    assert app.config["CONTINUITY_IDLE_SECONDS"] == 30 * 60
    app.extensions["roster_engine"].dispose()
