"""`continuity demo`: the product on its embedded default, from nothing, on this machine.

A local slapd holds a small demo directory, the roster is a SQLite file, the sync runs
once in full, and the portal serves its sign-in page. Everything lives in one work
directory, made anew on every run.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import click

from continuity.localslapd import Slapd, ldif_entry
from roster import service
from roster.config import load_config
from roster.db import make_engine, session_factory, transaction, upgrade
from roster.domains import add_domain, parse_primary
from sync.run import SyncOptions, run_sync

SUFFIX = "dc=acme,dc=test"
DOMAIN = "acme.test"
ACTOR = "demo"  # who the audit trail says made the demo's changes
# Every demo person's directory password: a demo, on loopback, made anew on every run.
DEMO_PASSWORD = "Demo-directory-2026"  # noqa: S105
PEOPLE = [
    # uid, display name, aliases, disabled
    ("ana.garcia", "Ana García", ("ventas",), False),
    ("luis.martinez", "Luis Martínez", (), False),
    ("maria.lopez", "María López", ("info", "contacto"), False),
    ("john.smith", "John Smith", (), False),
    ("emma.brown", "Emma Brown", (), False),
    ("jorge.ruiz", "Jorge Ruiz", (), True),
    ("sofia.fernandez", "Sofía Fernández", (), False),
    ("oliver.jones", "Oliver Jones", ("support",), False),
    ("lucia.gomez", "Lucía Gómez", (), False),
    ("noah.wilson", "Noah Wilson", (), False),
]


def demo_ldif() -> str:
    """The demo directory: people, one disabled, and the admin and helpdesk groups."""
    entries = [
        ldif_entry(f"ou={ou},{SUFFIX}", {"objectClass": "organizationalUnit", "ou": ou})
        for ou in ("people", "groups")
    ]
    for uid, name, aliases, disabled in PEOPLE:
        attributes: dict[str, list[str] | str] = {
            "objectClass": ["inetOrgPerson"] + (["continuityMailUser"] if aliases else []),
            "uid": uid,
            "cn": name,
            "sn": name.split()[-1],
            "displayName": name,
            "mail": f"{uid}@{DOMAIN}",
            "userPassword": DEMO_PASSWORD,
        }
        if aliases:
            attributes["mailAlternateAddress"] = [f"{a}@{DOMAIN}" for a in aliases]
        if disabled:
            attributes["description"] = "disabled"
        entries.append(ldif_entry(f"uid={uid},ou=people,{SUFFIX}", attributes))
    for group, members in (("continuity-admins", ["ana.garcia"]), ("helpdesk", ["luis.martinez"])):
        entries.append(
            ldif_entry(
                f"cn={group},ou=groups,{SUFFIX}",
                {
                    "objectClass": "groupOfNames",
                    "cn": group,
                    "member": [f"uid={m},ou=people,{SUFFIX}" for m in members],
                },
            )
        )
    return "\n".join(entries)


MARKER = ".continuity-demo"


def _private_file(path: Path, text: str) -> None:
    """Write a file only its owner can read, created that way (never chmod'ed after)."""
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
        handle.write(text)


def prepare_workdir(workdir: Path) -> None:
    """Start from an empty work directory; only ever delete one the demo made itself."""
    if workdir.exists():
        if not (workdir / MARKER).is_file():
            if any(workdir.iterdir()):
                raise click.ClickException(
                    f"{workdir} exists and was not made by `continuity demo`; choose another"
                    " --workdir (the demo empties its work directory on every run)"
                )
            workdir.rmdir()
        else:
            shutil.rmtree(workdir)
    workdir.mkdir(parents=True, mode=0o700)
    (workdir / MARKER).write_text("made by `continuity demo`; deleted on its next run\n")


def write_config(workdir: Path, slapd: Slapd, listen: str) -> Path:
    """The demo's configuration file, with the directory password in a file of its own."""
    secret = workdir / "ldap-password"
    _private_file(secret, slapd.root_password)
    path = workdir / "continuity.toml"
    values = {
        "url": f"sqlite:///{workdir / 'roster.db'}",
        "ldap": slapd.url,
        "bind_dn": slapd.root_dn,
        "secret": str(secret),
    }
    quoted = {key: json.dumps(value) for key, value in values.items()}
    _private_file(
        path,
        f"""# Written by `continuity demo`.
[database]
url = {quoted["url"]}

[[directory]]
name = "demo"
url = {quoted["ldap"]}
bind_dn = {quoted["bind_dn"]}
bind_password_file = {quoted["secret"]}
base_dn = "ou=people,{SUFFIX}"
profile = "openldap"
domains = ["{DOMAIN}"]
disabled_filter = "(description=disabled)"
admin_group = "cn=continuity-admins,ou=groups,{SUFFIX}"
helpdesk_group = "cn=helpdesk,ou=groups,{SUFFIX}"
group_base_dn = "ou=groups,{SUFFIX}"

[gateway]
allow_local_primary = true  # the demo's primary mail server would run on this host

[portal]
listen = {json.dumps(listen)}
base_url = {json.dumps(f"http://{listen}")}
secure_cookies = false  # the demo serves plain HTTP on loopback
""",
    )
    return path


def run_demo(workdir_name: str, listen: str, *, serve: bool) -> int:
    """Set everything up, sync once, then serve the portal until interrupted."""
    workdir = Path(workdir_name).resolve()
    prepare_workdir(workdir)
    slapd = Slapd(workdir / "slapd", SUFFIX)
    slapd.start(demo_ldif())
    try:
        config_path = write_config(workdir, slapd, listen)
        config = load_config(config_path, environ={})
        engine = make_engine(config.database_url, create=True)
        upgrade(engine)
        with transaction(session_factory(engine), writing=True) as session:
            # Through the functions an admin's commands and pages call, so that the audit
            # trail tells how the domain came to be as it is.
            domain = add_domain(session, DOMAIN, ACTOR, parse_primary("127.0.0.1:2525"))
            service.activate(session, domain, ACTOR)
            service.switch_emergency_password(session, domain, True, ACTOR)
        (report,) = run_sync(config, engine, SyncOptions(full=True))
        engine.dispose()
        click.echo(f"demo directory: {slapd.url} ({len(PEOPLE)} people under {SUFFIX})")
        click.echo(f"configuration:  {config_path}")
        click.echo(
            f"directory sync: {report.outcome}, {report.counts.get('created', 0)} people,"
            f" {report.counts.get('staff_roles', 0)} staff roles"
        )
        click.echo(
            f"try:            continuity --config {config_path} roster list --domain {DOMAIN}"
        )
        click.echo(
            f"sign in as:     ana.garcia@{DOMAIN} (an admin), luis.martinez@{DOMAIN}"
            f" (helpdesk) or anyone else, password {DEMO_PASSWORD}"
        )
        if report.exit_status != 0:
            click.echo(f"the demo sync failed: {report.error}", err=True)
            return report.exit_status
        if not serve:
            return 0
        from portal import create_app
        from portal.server import serve_app

        app = create_app(config=config)
        click.echo(f"sign in at:     http://{listen}/sign-in")
        click.echo(f"health:         http://{listen}/health  (Ctrl-C stops the demo)")
        sys.stdout.flush()
        serve_app(app, listen, workers=1)
        return 0
    finally:
        slapd.stop()
