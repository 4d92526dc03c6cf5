"""Test directories: a subtree of a real slapd, people and groups, and sync runs against it."""

from __future__ import annotations

import itertools
import json
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ldap3
from click.testing import CliRunner, Result

from continuity.cli import cli
from continuity.localslapd import Slapd

_counter = itertools.count()


@dataclass
class DirectoryTree:
    """An organisational unit of its own in the shared slapd."""

    slapd: Slapd
    base_dn: str
    people: dict[str, str] = field(default_factory=dict)

    @classmethod
    def create(cls, slapd: Slapd) -> DirectoryTree:
        """Make a new, empty ``ou`` under the suffix."""
        name = f"t{next(_counter)}-{secrets.token_hex(3)}"
        base = f"ou={name},{slapd.suffix}"
        slapd.add(base, ["organizationalUnit"], {"ou": name})
        tree = cls(slapd, base)
        slapd.add(f"ou=groups,{base}", ["organizationalUnit"], {"ou": "groups"})
        return tree

    def dn(self, uid: str) -> str:
        """The DN of the person with ``uid``."""
        return f"uid={ldap3.utils.dn.escape_rdn(uid)},{self.base_dn}"

    def add_person(
        self,
        uid: str,
        mail: str | None,
        *,
        cn: str | None = None,
        display_name: str | None = None,
        aliases: tuple[str, ...] = (),
        description: str | None = None,
    ) -> str:
        """Add an inetOrgPerson; returns its DN."""
        attributes: dict[str, Any] = {"uid": uid, "cn": cn or uid, "sn": cn or uid}
        object_classes = ["inetOrgPerson"]
        if mail:
            attributes["mail"] = mail
        if display_name:
            attributes["displayName"] = display_name
        if description:
            attributes["description"] = description
        if aliases:
            object_classes.append(self.slapd.alias_object_class)
            attributes["mailAlternateAddress"] = list(aliases)
        dn = self.dn(uid)
        self.slapd.add(dn, object_classes, attributes)
        self.people[uid] = dn
        return dn

    def replace(self, uid: str, **attributes: Any) -> None:
        """Replace attributes of a person (a value of None deletes the attribute)."""
        changes = {
            name: [(ldap3.MODIFY_REPLACE, [] if value is None else _list(value))]
            for name, value in attributes.items()
        }
        self.slapd.modify(self.dn(uid), changes)

    def delete(self, uid: str) -> None:
        """Delete a person."""
        self.slapd.delete(self.dn(uid))

    def add_group(self, name: str, *members: str) -> str:
        """Add a groupOfNames with member DNs (people or other groups); returns its DN."""
        dn = f"cn={ldap3.utils.dn.escape_rdn(name)},ou=groups,{self.base_dn}"
        self.slapd.add(dn, ["groupOfNames"], {"cn": name, "member": list(members) or [dn]})
        return dn


def _list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, list | tuple) else [value]


def source_toml(
    name: str, url: str, base_dn: str, bind_dn: str, password: str, **extra: Any
) -> str:
    """A [[directory]] table."""
    lines = [
        "[[directory]]",
        f"name = {json.dumps(name)}",
        f"url = {json.dumps(url)}",
        f"base_dn = {json.dumps(base_dn)}",
        f"bind_dn = {json.dumps(bind_dn)}",
        f"bind_password = {json.dumps(password)}",
    ]
    extra.setdefault("profile", "openldap")
    extra.setdefault("domains", ["acme.test"])
    lines += [f"{key} = {json.dumps(value)}" for key, value in extra.items()]
    return "\n".join(lines) + "\n"


class Continuity:
    """Runs the real `continuity` command in-process against one config file."""

    def __init__(self, tmp_path: Path, database_url: str) -> None:
        self.path = tmp_path / "continuity.toml"
        self.database_url = database_url
        self.sources: list[str] = []

    def configure(self, *sources: str) -> Path:
        """Write the config with these [[directory]] tables."""
        text = f"[database]\nurl = {json.dumps(self.database_url)}\n\n" + "\n".join(sources)
        self.path.write_text(text, encoding="utf-8")
        return self.path

    def run(self, *args: str) -> Result:
        """Run ``continuity --config PATH ARGS``."""
        return CliRunner().invoke(cli, ["--config", str(self.path), *args], catch_exceptions=False)

    def sync(self, *args: str) -> tuple[int, dict[str, Any]]:
        """Run a sync with --json; returns the exit status and the first run's summary."""
        result = self.run("sync", "--json", *args)
        body = json.loads(result.stdout) if result.stdout.strip() else {"runs": [{}]}
        return result.exit_code, body["runs"][0]

    def people(self, domain: str = "acme.test", *extra: str) -> dict[str, dict[str, Any]]:
        """The roster's people of ``domain`` by address."""
        result = self.run("roster", "list", "--domain", domain, "--json", *extra)
        assert result.exit_code == 0, result.output
        return {row["mail"]: row for row in json.loads(result.stdout)}
