"""A directory that cannot be read whole changes nothing: each failure on its own slapd."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import ldap3
import pytest
from sqlalchemy import Engine, select

from continuity.localslapd import Slapd, ldif_entry
from roster.config import load_config
from roster.models import SyncRun
from sync.run import SyncOptions, run_sync
from tests.directory import Continuity, source_toml

SUFFIX = "dc=acme,dc=test"


def people_ldif(count: int, start: int = 0) -> str:
    """LDIF for ``count`` people under the suffix, plus a read-only service account."""
    entries = [
        ldif_entry(
            f"uid=p{n},{SUFFIX}",
            {
                "objectClass": "inetOrgPerson",
                "uid": f"p{n}",
                "cn": f"Person {n}",
                "sn": f"{n}",
                "mail": f"p{n}@acme.test",
            },
        )
        for n in range(start, start + count)
    ]
    entries.append(
        ldif_entry(
            f"cn=svc,{SUFFIX}",
            {
                "objectClass": ["organizationalRole", "simpleSecurityObject"],
                "cn": "svc",
                "userPassword": "svc-password",
            },
        )
    )
    return "\n".join(entries)


@pytest.fixture
def own_slapd(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Slapd]:
    """A slapd of this test's own, with 30 people; options come from the test's marker."""
    options = getattr(request, "param", {})
    server = Slapd(tmp_path / "slapd", SUFFIX, **options)
    server.start(people_ldif(30))
    yield server
    server.stop()


def tool_for(tmp_path: Path, database_url: str, server: Slapd, **extra: object) -> Continuity:
    """A command line with acme.test and the service account as the bind user."""
    tool = Continuity(tmp_path, database_url)
    tool.configure()
    assert tool.run("domain", "add", "acme.test").exit_code == 0
    extra.setdefault("url", server.url)
    url = str(extra.pop("url"))
    tool.configure(source_toml("corp", url, SUFFIX, f"cn=svc,{SUFFIX}", "svc-password", **extra))
    return tool


def outcomes(engine: Engine) -> list[str]:
    """The outcome of every recorded run, oldest first."""
    with engine.connect() as connection:
        return list(connection.scalars(select(SyncRun.outcome).order_by(SyncRun.id)))


def test_slapd_stopped_mid_sync_changes_nothing(
    tmp_path: Path, database_url: str, engine: Engine, own_slapd: Slapd
) -> None:
    tool = tool_for(tmp_path, database_url, own_slapd, page_size=5)
    assert tool.sync()[0] == 0
    for n in range(30):
        own_slapd.modify(
            f"uid=p{n},{SUFFIX}", {"displayName": [(ldap3.MODIFY_REPLACE, ["Changed"])]}
        )

    def stop_after_first_page(_source: str, read: int) -> None:
        if read >= 5:
            own_slapd.stop()

    config = load_config(tool.path)
    (report,) = run_sync(config, engine, SyncOptions(full=True, progress=stop_after_first_page))

    assert report.outcome == "failed" and report.exit_status == 1
    assert "directory read failed" in (report.error or "")
    own_slapd.restart()
    people = tool.people()
    assert len(people) == 30
    assert not any(p["display_name"] == "Changed" for p in people.values())
    assert outcomes(engine) == ["success", "failed"]


@pytest.mark.parametrize("own_slapd", [{"sizelimit": 10}], indirect=True)
def test_size_limit_lower_than_the_directory_is_a_failed_read(
    tmp_path: Path, database_url: str, engine: Engine, own_slapd: Slapd
) -> None:
    tool = tool_for(tmp_path, database_url, own_slapd, page_size=5)

    status, summary = tool.sync()

    assert status == 1
    assert "sizeLimitExceeded" in summary["error"] or "size limit" in summary["error"].lower()
    assert tool.people() == {}
    assert outcomes(engine) == ["failed"]


@pytest.mark.parametrize("own_slapd", [{"tls": True}], indirect=True)
def test_starttls_and_ldaps_with_a_ca_file(
    tmp_path: Path, database_url: str, engine: Engine, own_slapd: Slapd
) -> None:
    assert own_slapd.ca_file is not None and own_slapd.ldaps_url is not None
    tool = tool_for(
        tmp_path, database_url, own_slapd, start_tls=True, ca_file=str(own_slapd.ca_file)
    )
    status, summary = tool.sync()
    assert (status, summary["entries_read"]) == (0, 30)

    tool.configure(
        source_toml(
            "corp",
            own_slapd.ldaps_url,
            SUFFIX,
            f"cn=svc,{SUFFIX}",
            "svc-password",
            ca_file=str(own_slapd.ca_file),
            profile="openldap",
            domains=["acme.test"],
        )
    )
    status, summary = tool.sync("--full")
    assert (status, summary["entries_read"]) == (0, 30), summary
    assert summary["server"] == own_slapd.ldaps_url


@pytest.mark.parametrize("own_slapd", [{"tls": True}], indirect=True)
def test_a_server_certificate_from_another_ca_is_refused(
    tmp_path: Path, database_url: str, engine: Engine, own_slapd: Slapd
) -> None:
    other_ca = tmp_path / "other-ca.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=Another CA",
            "-keyout",
            str(tmp_path / "other-ca.key"),
            "-out",
            str(other_ca),
        ],
        check=True,
        capture_output=True,
    )
    tool = tool_for(
        tmp_path, database_url, own_slapd, url=own_slapd.ldaps_url, ca_file=str(other_ca)
    )
    status, summary = tool.sync()
    assert status == 1 and "cannot connect" in summary["error"]
    assert tool.people() == {}
