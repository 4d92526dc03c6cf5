"""DKIM for the mail the webmail sends: a key per domain, the signature, and the DNS
records a domain publishes so that recipients' DMARC checks pass during an outage.

The key is made once per domain (2048-bit RSA) and kept in the roster with its selector,
``continuity<YYYYMM>``: a new key later gets a new selector, so the old record can stay
published while mail signed with it is still on its way.
"""

from __future__ import annotations

import base64
import ipaddress

import dkim
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from sqlalchemy.orm import Session

from roster.domains import audit
from roster.models import Domain, utcnow

KEY_BITS = 2048
SIGNED_HEADERS = (
    b"From",
    b"From",  # signed once more than present: no second From can be added
    b"To",
    b"Cc",
    b"Reply-To",
    b"Subject",
    b"Date",
    b"Message-ID",
    b"In-Reply-To",
    b"References",
    b"MIME-Version",
    b"Content-Type",
)
"""Signed whether present or not: a header missing when signed cannot be added later."""


class DkimError(Exception):
    """A message could not be signed (a stored key that is no key, a message without
    From); the message says which."""


def new_selector() -> str:
    """The selector of a key made now: ``continuity`` and the year and month."""
    return "continuity" + utcnow().strftime("%Y%m")


def new_private_key() -> str:
    """A new RSA private key (PKCS#1 PEM), the form dkimpy reads."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=KEY_BITS)
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    ).decode("ascii")


def ensure_key(
    session: Session, domain: Domain, *, actor: str = "webmail", client: str | None = None
) -> tuple[str, str]:
    """The domain's (selector, private key PEM), made and stored (and audited) the first
    time; in the caller's write transaction."""
    if domain.dkim_selector and domain.dkim_private_key:
        return domain.dkim_selector, domain.dkim_private_key
    domain.dkim_selector = new_selector()
    domain.dkim_private_key = new_private_key()
    audit(
        session,
        actor,
        "dkim.key_created",
        domain_id=domain.id,
        after={"dkim_selector": domain.dkim_selector},
        client=client,
    )
    return domain.dkim_selector, domain.dkim_private_key


def sign(message: bytes, domain_name: str, selector: str, private_pem: str) -> bytes:
    """``message`` (CRLF lines) with its DKIM-Signature header on top: rsa-sha256,
    relaxed/relaxed, d=``domain_name``, s=``selector``."""
    try:
        header = dkim.sign(
            message,
            selector.encode("ascii"),
            domain_name.encode("ascii"),
            private_pem.encode("ascii"),
            canonicalize=(b"relaxed", b"relaxed"),
            include_headers=SIGNED_HEADERS,
        )
    except (dkim.DKIMException, UnicodeError, ValueError) as error:
        raise DkimError(f"cannot sign for {domain_name} ({selector}): {error}") from error
    return header + message


def public_key(private_pem: str) -> str:
    """The base64 SubjectPublicKeyInfo of a private key: the p= of its DNS record."""
    key = serialization.load_pem_private_key(private_pem.encode("ascii"), password=None)
    der = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return base64.b64encode(der).decode("ascii")


def dkim_record(domain: Domain) -> tuple[str, str, str] | None:
    """The domain's DKIM TXT record (name, "TXT", value), or None before it has a key."""
    if not (domain.dkim_selector and domain.dkim_private_key):
        return None
    value = f"v=DKIM1; k=rsa; p={public_key(domain.dkim_private_key)}"
    return f"{domain.dkim_selector}._domainkey.{domain.name}", "TXT", value


def spf_mechanism(relay_host: str) -> str:
    """What lets the relay send for a domain in its SPF record: ``ip4:``/``ip6:`` for an
    address, ``a:`` for a host name."""
    host = relay_host.strip().removeprefix("[").removesuffix("]")
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return f"a:{host.rstrip('.').lower()}"
    return f"ip{address.version}:{address}"


def spf_record(domain_name: str, relay_host: str) -> tuple[str, str, str]:
    """An SPF record (name, "TXT", value) that lets the relay send for the domain, for a
    domain that has none; one that has adds ``spf_mechanism`` to its own."""
    return domain_name, "TXT", f"v=spf1 {spf_mechanism(relay_host)} ~all"


def dns_records(domain: Domain, relay_host: str | None) -> list[tuple[str, str, str]]:
    """The records to publish for ``domain`` as (name, type, value): its DKIM key (once
    made) and the SPF record for the relay (when one is configured)."""
    records = []
    found = dkim_record(domain)
    if found is not None:
        records.append(found)
    if relay_host:
        records.append(spf_record(domain.name, relay_host))
    return records
