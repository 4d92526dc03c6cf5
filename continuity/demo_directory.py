"""The demo's directory: two domains and about thirty people, aliases, one disabled
account, and the groups whose members become admins and helpdesk."""

from __future__ import annotations

from dataclasses import dataclass

from continuity.localslapd import ldif_entry

SUFFIX = "dc=demo,dc=test"
# Every demo person's directory password: a demo, on loopback, made anew on every run.
PASSWORD = "Demo-directory-2026"  # noqa: S105


@dataclass(frozen=True)
class DemoDomain:
    """A demo domain and the language of the mail its people get."""

    name: str
    language: str


DOMAINS = (DemoDomain("acme.test", "en"), DemoDomain("sierra.test", "es"))


@dataclass(frozen=True)
class DemoPerson:
    """One person of the demo directory."""

    uid: str
    name: str
    domain: str
    aliases: tuple[str, ...] = ()
    disabled: bool = False

    @property
    def address(self) -> str:
        """Their mail address."""
        return f"{self.uid}@{self.domain}"


ACME, SIERRA = "acme.test", "sierra.test"
PEOPLE = (
    DemoPerson("ana.garcia", "Ana García", ACME, ("ventas",)),
    DemoPerson("luis.martinez", "Luis Martínez", ACME),
    DemoPerson("john.smith", "John Smith", ACME),
    DemoPerson("maria.lopez", "María López", ACME, ("info", "contacto")),
    DemoPerson("emma.brown", "Emma Brown", ACME),
    DemoPerson("jorge.ruiz", "Jorge Ruiz", ACME, disabled=True),
    DemoPerson("sofia.fernandez", "Sofía Fernández", ACME),
    DemoPerson("oliver.jones", "Oliver Jones", ACME, ("support",)),
    DemoPerson("lucia.gomez", "Lucía Gómez", ACME),
    DemoPerson("noah.wilson", "Noah Wilson", ACME),
    DemoPerson("olivia.taylor", "Olivia Taylor", ACME),
    DemoPerson("liam.davies", "Liam Davies", ACME),
    DemoPerson("amelia.evans", "Amelia Evans", ACME, ("accounts",)),
    DemoPerson("harry.thomas", "Harry Thomas", ACME),
    DemoPerson("grace.roberts", "Grace Roberts", ACME),
    DemoPerson("jack.walker", "Jack Walker", ACME),
    DemoPerson("carmen.diaz", "Carmen Díaz", SIERRA, ("direccion",)),
    DemoPerson("pablo.sanchez", "Pablo Sánchez", SIERRA),
    DemoPerson("elena.moreno", "Elena Moreno", SIERRA),
    DemoPerson("javier.romero", "Javier Romero", SIERRA, ("ventas",)),
    DemoPerson("marta.navarro", "Marta Navarro", SIERRA),
    DemoPerson("diego.torres", "Diego Torres", SIERRA),
    DemoPerson("laura.jimenez", "Laura Jiménez", SIERRA),
    DemoPerson("sergio.vazquez", "Sergio Vázquez", SIERRA),
    DemoPerson("paula.castro", "Paula Castro", SIERRA, ("rrhh",)),
    DemoPerson("andres.ortiz", "Andrés Ortiz", SIERRA),
    DemoPerson("raquel.rubio", "Raquel Rubio", SIERRA),
    DemoPerson("alberto.molina", "Alberto Molina", SIERRA),
    DemoPerson("isabel.delgado", "Isabel Delgado", SIERRA),
    DemoPerson("hugo.ramos", "Hugo Ramos", SIERRA),
)
ADMIN = "ana.garcia@acme.test"  # an admin of both domains (one directory feeds both)
HELPDESK = "luis.martinez@acme.test"
END_USER = "john.smith@acme.test"
GROUPS = {"continuity-admins": ["ana.garcia"], "helpdesk": ["luis.martinez"]}


def ldif() -> str:
    """The demo directory as LDIF: people, one disabled, and the admin and helpdesk groups."""
    entries = [
        ldif_entry(f"ou={ou},{SUFFIX}", {"objectClass": "organizationalUnit", "ou": ou})
        for ou in ("people", "groups")
    ]
    for person in PEOPLE:
        attributes: dict[str, list[str] | str] = {
            "objectClass": ["inetOrgPerson"] + (["continuityMailUser"] if person.aliases else []),
            "uid": person.uid,
            "cn": person.name,
            "sn": person.name.split()[-1],
            "displayName": person.name,
            "mail": person.address,
            "userPassword": PASSWORD,
        }
        if person.aliases:
            attributes["mailAlternateAddress"] = [f"{a}@{person.domain}" for a in person.aliases]
        if person.disabled:
            attributes["description"] = "disabled"
        entries.append(ldif_entry(f"uid={person.uid},ou=people,{SUFFIX}", attributes))
    for group, members in GROUPS.items():
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
