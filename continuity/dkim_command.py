"""``continuity domain dkim D``: the DNS records a domain publishes for the mail sent
from the webmail (its DKIM key, the SPF mechanism for the relay); ``--create`` makes the
key when the domain has none.

Registered on the ``domain`` group by continuity.cli.
"""

from __future__ import annotations

import json

import click

from continuity.cli import State, actor, pass_state
from roster.dkim import dns_records, ensure_key
from roster.domains import RosterError, get_domain, parse_primary


@click.command("dkim")
@click.argument("name")
@click.option("--create", is_flag=True, help="Make the domain's DKIM key if it has none.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_state
def dkim(state: State, name: str, create: bool, as_json: bool) -> None:
    """Print the DNS records to publish for mail sent from the webmail."""
    state.require_schema()
    try:
        relay: str | None = parse_primary(str(state.config.outbound.get("relay") or "")).host
    except RosterError:
        relay = None
    with state.session(writing=create) as session:
        found = get_domain(session, name)
        if create:
            ensure_key(session, found, actor=actor())
        records = dns_records(found, relay)
        has_key = bool(found.dkim_selector and found.dkim_private_key)
        domain_name = found.name
    if as_json:
        shown = [{"name": n, "type": t, "value": v} for n, t, v in records]
        click.echo(json.dumps({"domain": domain_name, "records": shown}, indent=2))
        return
    for record_name, kind, value in records:
        click.echo(f"{record_name}\t{kind}\t{value}")
    if not has_key:
        click.echo(
            f"{domain_name} has no DKIM key yet: run `continuity domain dkim {domain_name}"
            " --create` (or use the Control Panel), then publish its record",
            err=True,
        )
    if relay is None:
        click.echo("no [outbound] relay is configured: no SPF record to publish", err=True)
