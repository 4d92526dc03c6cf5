"""Directory sync benchmark: the sync against a bare ldap3 read of the same entries.

One command (``.venv/bin/python -m bench.sync_bench``) loads N people (100,000 by
default) into a local slapd and measures, in the same run:

1. a bare ldap3 paged read of the same entries and attributes the sync asks for (the
   limit for this library: nothing done with the entries);
2. a full sync into an empty roster;
3. a full sync with nothing changed;
4. an incremental sync after 1,000 modifications;
5. the bare read again (the faster of the two reads is the limit);

each in a process of its own so that its peak memory (max RSS) is its own. Figures are
printed as ratios against the bare read measured here, on this machine, in this run.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import ldap3

SUFFIX = "dc=acme,dc=test"
ROOT = Path(__file__).resolve().parent.parent


def _ldif(count: int, path: Path) -> None:
    """People created a day ago, one in ten with an alias, in slapadd's LDIF."""
    created = (datetime.now(UTC) - timedelta(days=1)).strftime("%Y%m%d%H%M%SZ")
    with path.open("w", encoding="utf-8") as out:
        for n in range(count):
            out.write(
                f"dn: uid=u{n:06d},ou=people,{SUFFIX}\n"
                "objectClass: inetOrgPerson\n"
                + ("objectClass: continuityMailUser\n" if n % 10 == 0 else "")
                + f"uid: u{n:06d}\ncn: User {n}\nsn: {n}\ndisplayName: User Number {n}\n"
                f"mail: u{n:06d}@acme.test\n"
                + (f"mailAlternateAddress: alias{n:06d}@acme.test\n" if n % 10 == 0 else "")
                + f"createTimestamp: {created}\nmodifyTimestamp: {created}\n\n"
            )


def _config(workdir: Path, url: str, slapd_url: str, root_dn: str, password: str) -> Path:
    path = workdir / "continuity.toml"
    path.write_text(
        f'[database]\nurl = "{url}"\n\n[[directory]]\nname = "corp"\nurl = "{slapd_url}"\n'
        f'base_dn = "ou=people,{SUFFIX}"\nbind_dn = "{root_dn}"\nbind_password = "{password}"\n'
        'profile = "openldap"\ndomains = ["acme.test"]\npage_size = 1000\n',
        encoding="utf-8",
    )
    return path


def _database(postgres: str | None, workdir: Path) -> str:
    """A SQLite file in the work directory, or a new PostgreSQL database."""
    if not postgres:
        return f"sqlite:///{workdir}/roster.db"
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    name = f"continuity_bench_{os.getpid()}"
    admin = create_engine(postgres, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return make_url(postgres).set(database=name).render_as_string(hide_password=False)


def _drop_database(postgres: str, url: str) -> None:
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    admin = create_engine(postgres, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'DROP DATABASE IF EXISTS "{make_url(url).database}" WITH (FORCE)'))
    admin.dispose()


def _phase(args: list[str]) -> dict[str, float]:
    """Run one phase in a fresh interpreter; returns its JSON result."""
    output = subprocess.run(
        [sys.executable, "-m", "bench.sync_bench", *args],
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return json.loads(output.strip().splitlines()[-1])


def _peak_mb() -> float:
    """This process's peak resident memory since its exec (VmHWM).

    ru_maxrss is not used: on Linux it carries over the parent's size across fork and
    exec, so every phase would seem to weigh at least what the benchmark driver does.
    """
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def bare_read(config_path: str) -> None:
    """Phase: the bare ldap3 read, with the sync's own server settings and attributes."""
    from roster.config import load_config
    from sync.directory import Profile, connect, user_filter

    source = load_config(config_path).directories[0]
    start = time.perf_counter()
    connection = connect(source, lean=False)
    count = 0
    for item in connection.extend.standard.paged_search(
        search_base=source.base_dn,
        search_filter=user_filter(source),
        search_scope=ldap3.SUBTREE,
        attributes=Profile(source).attributes,
        paged_size=source.page_size,
        generator=True,
    ):
        count += item.get("type") == "searchResEntry"
    connection.unbind()
    print(
        json.dumps(
            {"seconds": time.perf_counter() - start, "entries": count, "peak_mb": _peak_mb()}
        )
    )


def sync(config_path: str, *flags: str) -> None:
    """Phase: one sync run through the library the command uses."""
    from roster.config import load_config
    from roster.db import make_engine
    from sync.run import SyncOptions, run_sync

    config = load_config(config_path)
    engine = make_engine(config.database_url)
    start = time.perf_counter()
    (report,) = run_sync(config, engine, SyncOptions(full="--full" in flags))
    seconds = time.perf_counter() - start
    assert report.outcome == "success", report.error
    print(
        json.dumps(
            {
                "seconds": seconds,
                "entries": report.entries_read,
                "mode": report.mode,
                "counts": report.counts,
                "phases": report.phases,
                "peak_mb": _peak_mb(),
            }
        )
    )


def modify(slapd_url: str, root_dn: str, password: str, count: int, total: int) -> None:
    """Change the display name of ``count`` people spread over the directory."""
    connection = ldap3.Connection(
        slapd_url, root_dn, password, auto_bind=True, raise_exceptions=True
    )
    step = max(total // count, 1)
    for n in range(0, step * count, step):
        connection.modify(
            f"uid=u{n:06d},ou=people,{SUFFIX}",
            {"displayName": [(ldap3.MODIFY_REPLACE, [f"Renamed {n}"])]},
        )
    connection.unbind()


def main() -> None:
    """Run the whole benchmark and print its figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--people", type=int, default=100_000)
    parser.add_argument("--changes", type=int, default=1_000)
    parser.add_argument(
        "--postgres",
        metavar="URL",
        help="run on PostgreSQL: a database of the run's own is made (and dropped) there",
    )
    parser.add_argument("--phase", help=argparse.SUPPRESS)
    parser.add_argument("--config", help=argparse.SUPPRESS)
    parser.add_argument("--full", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.phase == "bare":
        return bare_read(args.config)
    if args.phase == "sync":
        return sync(args.config, *(["--full"] if args.full else []))

    from continuity.localslapd import Slapd
    from roster.db import make_engine, upgrade

    with tempfile.TemporaryDirectory(prefix="continuity-bench-") as tmp:
        workdir = Path(tmp)
        ldif = workdir / "people.ldif"
        _ldif(args.people, ldif)
        slapd = Slapd(workdir / "slapd", SUFFIX)
        started = time.perf_counter()
        slapd.start(
            f"dn: ou=people,{SUFFIX}\nobjectClass: organizationalUnit\nou: people\n\n"
            + ldif.read_text(encoding="utf-8")
        )
        load_seconds = time.perf_counter() - started
        try:
            url = _database(args.postgres, workdir)
            engine = make_engine(url, create=True)
            upgrade(engine)
            from roster.db import session_factory, transaction
            from roster.domains import add_domain

            with transaction(session_factory(engine)) as session:
                add_domain(session, "acme.test", "bench")
            engine.dispose()
            config = str(_config(workdir, url, slapd.url, slapd.root_dn, slapd.root_password))
            bare = _phase(["--phase", "bare", "--config", config])
            first = _phase(["--phase", "sync", "--config", config, "--full"])
            again = _phase(["--phase", "sync", "--config", config, "--full"])
            time.sleep(1)
            modify(slapd.url, slapd.root_dn, slapd.root_password, args.changes, args.people)
            incremental = _phase(["--phase", "sync", "--config", config])
            # The limit is read again after the syncs and the faster read kept: on a
            # machine whose load changes, a slow first read would flatter the sync.
            bare_again = _phase(["--phase", "bare", "--config", config])
            bare_reads = [bare["seconds"], bare_again["seconds"]]
            bare = min(bare, bare_again, key=lambda result: result["seconds"])
        finally:
            slapd.stop()
            if args.postgres:
                _drop_database(args.postgres, url)

    def line(name: str, result: dict[str, float], target: str) -> str:
        ratio = result["seconds"] / bare["seconds"]
        return (
            f"| {name} | {result['entries']:,} | {result['seconds']:.2f} s | {ratio:.2f}x |"
            f" {result['peak_mb']:.0f} MB | {target} |"
        )

    print(f"# sync benchmark: {args.people:,} people, {os.cpu_count()} cores, {url.split(':')[0]}")
    print(f"slapadd load: {load_seconds:.1f} s")
    print("bare reads, before and after the syncs: " + ", ".join(f"{s:.2f} s" for s in bare_reads))
    print("| run | entries read | time | vs bare read | peak memory | target |")
    print("| --- | ---: | ---: | ---: | ---: | --- |")
    print(line("bare ldap3 paged read (the limit)", bare, "-"))
    print(line("full sync into an empty roster", first, "<= 1.0x, < 500 MB"))
    print(line("full sync, nothing changed", again, "< 500 MB"))
    print(line(f"incremental sync after {args.changes:,} changes", incremental, "< 1 s"))
    for name, result in (("full/empty", first), ("full/same", again), ("incremental", incremental)):
        phases = ", ".join(f"{k} {v:.2f} s" for k, v in result["phases"].items())
        print(f"phases of {name}: {phases}")
    assert incremental["mode"] == "incremental", incremental


if __name__ == "__main__":
    main()
