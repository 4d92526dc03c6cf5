"""The configuration contract: key names, environment overrides, secrets from files, errors."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from roster.config import ConfigError, load_config

SOURCE = """
[database]
url = "sqlite:///{tmp}/roster.db"

[[directory]]
name = "corp"
url = "ldap://127.0.0.1:3890"
bind_dn = "cn=svc,dc=acme,dc=test"
bind_password_file = "{tmp}/ldap-secret"
base_dn = "dc=acme,dc=test"
profile = "openldap"
domains = ["Acme.test"]
"""


def write(tmp_path: Path, text: str) -> Path:
    """Write a config file and the secret it names."""
    (tmp_path / "ldap-secret").write_text("s3cret\n")
    path = tmp_path / "continuity.toml"
    path.write_text(text.replace("{tmp}", str(tmp_path)))
    return path


def test_profile_defaults_secret_file_and_domains(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, SOURCE), environ={})
    source = config.directory("corp")
    assert source.bind_password == "s3cret"
    assert source.id_attribute == "entryUUID"
    assert source.alias_attribute == "mailAlternateAddress"
    assert source.domains == ("acme.test",)
    assert source.max_removal_share == 0.10
    assert config.database_url == f"sqlite:///{tmp_path}/roster.db"


def test_ad_profile_defaults(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, SOURCE.replace('"openldap"', '"ad"')), environ={})
    source = config.directory("corp")
    assert (source.id_attribute, source.alias_attribute, source.disabled_attribute) == (
        "objectGUID",
        "proxyAddresses",
        "userAccountControl",
    )


def test_every_value_can_come_from_the_environment(tmp_path: Path) -> None:
    environ = {
        "CONTINUITY_DATABASE_URL": "postgresql+psycopg://db.internal/continuity",
        "CONTINUITY_DIRECTORY_CORP_PAGE_SIZE": "250",
        "CONTINUITY_DIRECTORY_CORP_URL": "ldap://127.0.0.1:1, ldap://127.0.0.2:1",
        "CONTINUITY_DIRECTORY_CORP_START_TLS": "yes",
        "CONTINUITY_STANDBY_IMAP": "127.0.0.1:1143",
    }
    config = load_config(write(tmp_path, SOURCE), environ=environ)
    source = config.directory("corp")
    assert config.database_url.startswith("postgresql+psycopg://")
    assert source.page_size == 250
    assert source.urls == ("ldap://127.0.0.1:1", "ldap://127.0.0.2:1")
    assert source.start_tls is True
    assert config.standby["imap"] == "127.0.0.1:1143"


def test_config_path_from_environment(tmp_path: Path) -> None:
    path = write(tmp_path, SOURCE)
    assert load_config(None, environ={"CONTINUITY_CONFIG": str(path)}).directories[0].name == "corp"


@pytest.mark.parametrize(
    ("change", "named"),
    [
        (('base_dn = "dc=acme,dc=test"\n', ""), "base_dn"),
        (('profile = "openldap"', 'profile = "novell"'), "profile"),
        (('url = "ldap://127.0.0.1:3890"', 'url = "http://x"'), "url"),
        (("bind_password_file", "bind_password_fyle"), "bind_password_fyle"),
        (
            ('bind_password_file = "{tmp}/ldap-secret"', 'bind_password_file = "/nonexistent"'),
            "bind_password_file",
        ),
        (('domains = ["Acme.test"]', "domains = 5"), "domains"),
        (("[database]", "[databse]"), "databse"),
        (('url = "sqlite:///{tmp}/roster.db"', 'url = "mysql://x"'), "[database].url"),
        (('[database]\nurl = "sqlite:///{tmp}/roster.db"', 'database = "x"'), "[database]"),
        (('url = "sqlite:///{tmp}/roster.db"', 'ur1 = "sqlite:///x"'), "[database].ur1"),
        (("[database]", "[portal]\nsecure_cookie = false\n[database]"), "[portal].secure_cookie"),
        (('domains = ["Acme.test"]', 'domains = ["acme.test"]\npage_size = 1.7'), "page_size"),
        (
            ('url = "ldap://127.0.0.1:3890"', 'url = "ldap://dc1.acme.test"'),
            "'corp'.start_tls: the bind password would cross the network in clear",
        ),
        (
            ('profile = "openldap"', 'profile = "openldap"\nca_file = "{tmp}/ldap-secret"'),
            "'corp'.ca_file: set, but ldap://127.0.0.1:3890 is plain LDAP",
        ),
    ],
)
def test_bad_configuration_names_the_key(
    tmp_path: Path, change: tuple[str, str], named: str
) -> None:
    with pytest.raises(ConfigError, match=re.escape(named)):
        load_config(write(tmp_path, SOURCE.replace(*change)), environ={})


def test_bad_number_from_environment_names_the_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="page_size"):
        load_config(write(tmp_path, SOURCE), environ={"CONTINUITY_DIRECTORY_CORP_PAGE_SIZE": "x"})


def test_invalid_toml_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("[database\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(path, environ={})


def test_a_secret_from_the_environment_wins_over_the_file(tmp_path: Path) -> None:
    environ = {"CONTINUITY_DIRECTORY_CORP_BIND_PASSWORD": "from-env"}
    config = load_config(write(tmp_path, SOURCE), environ=environ)
    assert config.directory("corp").bind_password == "from-env"
    (tmp_path / "other-secret").write_text("from-other-file")
    environ = {"CONTINUITY_DIRECTORY_CORP_BIND_PASSWORD_FILE": str(tmp_path / "other-secret")}
    config = load_config(write(tmp_path, SOURCE + 'bind_password = "inline"\n'), environ=environ)
    assert config.directory("corp").bind_password == "from-other-file"


def test_the_deployment_example_is_a_valid_configuration(tmp_path: Path) -> None:
    """deploy/continuity.toml.example documents every key: it must load as it stands."""
    example = Path(__file__).parent.parent / "deploy" / "continuity.toml.example"
    secret = tmp_path / "secret"
    secret.write_text("s3cret")
    text = re.sub(r'"/etc/continuity/secrets/[^"]+"', f'"{secret}"', example.read_text())
    (tmp_path / "example.toml").write_text(text)
    config = load_config(tmp_path / "example.toml", environ={})
    assert [d.profile for d in config.directories] == ["ad"]
    assert config.directories[0].bind_password == "s3cret"


def test_idn_domains_are_named_in_ascii(tmp_path: Path) -> None:
    config = load_config(
        write(tmp_path, SOURCE.replace('["Acme.test"]', '["Bücher.test"]')), environ={}
    )
    assert config.directory("corp").domains == ("xn--bcher-kva.test",)
