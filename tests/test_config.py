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
    secret.write_text("s3cret-" + "0" * 57)  # the portal's key needs 32 characters or more
    text = re.sub(r'"/etc/continuity/secrets/[^"]+"', f'"{secret}"', example.read_text())
    (tmp_path / "example.toml").write_text(text)
    config = load_config(tmp_path / "example.toml", environ={})
    assert [d.profile for d in config.directories] == ["ad"]
    assert config.directories[0].bind_password == "s3cret-" + "0" * 57


def test_idn_domains_are_named_in_ascii(tmp_path: Path) -> None:
    config = load_config(
        write(tmp_path, SOURCE.replace('["Acme.test"]', '["Bücher.test"]')), environ={}
    )
    assert config.directory("corp").domains == ("xn--bcher-kva.test",)


@pytest.mark.parametrize(
    ("table", "line", "message"),
    [
        ("portal", 'secure_cookies = "maybe"', "[portal].secure_cookies: expected true or false"),
        ("portal", "access_log = 1", "[portal].access_log: expected true or false"),
        ("portal", "session_lifetime_hours = 0", "[portal].session_lifetime_hours: must be at"),
        ("portal", "session_idle_minutes = -5", "[portal].session_idle_minutes: must be at"),
        ("portal", "reset_code_hours = 1.5", "[portal].reset_code_hours: expected a whole"),
        ("portal", 'trusted_proxies = "two"', "[portal].trusted_proxies: expected a number"),
        ("portal", "session_lifetime_hours = 99999999999", "[portal].session_lifetime_hours: mu"),
        ("portal", "reset_code_hours = 8760", "[portal].reset_code_hours: must be at most 168"),
        ("portal", 'secret_key = "short"', "[portal].secret_key: too short (5 characters)"),
        ("portal", 'base_url = "continuity.example"', "[portal].base_url: expected https://"),
        ("portal", 'base_url = "https://x.example/?next=1"', "[portal].base_url: expected"),
        ("portal", 'listen = "127.0.0.1:99999"', "[portal].listen: the port must be between"),
        ("portal", 'listen = "8080"', "[portal].listen: expected HOST:PORT"),
        ("standby", 'imap = "[::1]"', "[standby].imap: expected HOST:PORT"),
        ("standby", 'lmtp = "bad host:24"', "[standby].lmtp: expected HOST:PORT"),
        ("standby", "master_user = 7", "[standby].master_user: expected a string"),
        ("gateway", 'listen = "0.0.0.0:0"', "[gateway].listen: the port must be between"),
        ("gateway", 'spool_dir = "spool"', "[gateway].spool_dir: expected an absolute path"),
        ("outbound", 'relay = "smarthost.example"', "[outbound].relay: expected HOST:PORT"),
        ("outbound", 'relay = "-bad-.example:25"', "[outbound].relay: '-bad-.example' is not"),
        ("outbound", 'sender = "continuity"', "[outbound].sender: expected an email address"),
        ("sync", "lock_seconds = 0", "[sync].lock_seconds: must be at least 1"),
    ],
)
def test_every_key_of_every_table_is_checked_when_read(
    tmp_path: Path, table: str, line: str, message: str
) -> None:
    """Bug: the [portal], [standby], [gateway] and [outbound] values were taken unchecked,
    so a command that does not use them accepted any value and `serve` died on it later."""
    path = write(tmp_path, SOURCE + f"\n[{table}]\n{line}\n")
    with pytest.raises(ConfigError) as raised:
        load_config(path, environ={})
    assert str(raised.value).startswith(message)


def test_checked_values_are_typed_from_the_file_and_the_environment(tmp_path: Path) -> None:
    text = SOURCE + (
        '\n[portal]\nsecure_cookies = false\nlisten = "[::1]:8080"\n'
        'base_url = "https://continuity.example/"\n'
        '[outbound]\nrelay = "smarthost.example:587"\nsender = "continuity@acme.test"\n'
    )
    environ = {"CONTINUITY_PORTAL_TRUSTED_PROXIES": "2", "CONTINUITY_PORTAL_ACCESS_LOG": "yes"}
    config = load_config(write(tmp_path, text), environ=environ)
    assert config.portal == {
        "secure_cookies": False,
        "listen": "[::1]:8080",
        "base_url": "https://continuity.example",
        "trusted_proxies": 2,
        "access_log": True,
    }
    assert config.outbound["relay"] == "smarthost.example:587"


def test_a_bad_value_from_the_environment_names_its_key(tmp_path: Path) -> None:
    environ = {"CONTINUITY_PORTAL_SESSION_IDLE_MINUTES": "soon"}
    with pytest.raises(ConfigError, match=re.escape("[portal].session_idle_minutes: expected")):
        load_config(write(tmp_path, SOURCE), environ=environ)


@pytest.mark.parametrize(
    ("line", "named"),
    [
        ("connect_timeout = 0", "'corp'.connect_timeout: must be a number above 0"),
        ("read_timeout = nan", "'corp'.read_timeout: must be a number above 0"),
        ("full_sync_interval_hours = -1", "'corp'.full_sync_interval_hours: must be"),
        ("connect_timeout = 1e300", "'corp'.connect_timeout: must be a number above 0 and at"),
        ("clock_skew_seconds = -3", "'corp'.clock_skew_seconds: must be 0 or more"),
    ],
)
def test_directory_durations_must_be_possible(tmp_path: Path, line: str, named: str) -> None:
    """Bug: a zero or negative timeout, or nan, was accepted and only hurt at sync time."""
    with pytest.raises(ConfigError, match=re.escape(named)):
        load_config(write(tmp_path, SOURCE + line + "\n"), environ={})


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ('[database]\nurl = "sqlite:///x.db"\n'.encode("utf-16"), "is UTF-16 text; save it as"),
        ('[database]\nurl = "sqlite:///é.db"\n'.encode("latin-1"), "is not UTF-8 text (byte 29)"),
    ],
)
def test_a_file_that_is_not_utf8_is_refused_in_one_line(
    tmp_path: Path, data: bytes, message: str
) -> None:
    """Bug: a UTF-16 configuration (with its byte order mark) gave a UnicodeDecodeError."""
    path = tmp_path / "continuity.toml"
    path.write_bytes(data)
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(path, environ={})


def test_a_utf8_byte_order_mark_is_no_error(tmp_path: Path) -> None:
    path = tmp_path / "continuity.toml"
    path.write_bytes(b"\xef\xbb\xbf" + SOURCE.replace("{tmp}", str(tmp_path)).encode())
    (tmp_path / "ldap-secret").write_text("s3cret\n")
    assert load_config(path, environ={}).directory("corp").bind_password == "s3cret"


def test_a_secret_file_that_is_not_utf8_names_the_key(tmp_path: Path) -> None:
    path = write(tmp_path, SOURCE)
    (tmp_path / "ldap-secret").write_bytes(b"\xff\xfes\x00")
    with pytest.raises(ConfigError, match=re.escape("'corp'.bind_password_file: ")):
        load_config(path, environ={})
