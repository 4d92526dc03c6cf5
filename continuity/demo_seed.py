"""A few days of realistic mail for the demo's people, sent through the gateway over SMTP
(so it reaches the stand-in primaries and the standby store as real mail would): English
for one domain and Spanish for the other, plain and HTML with an inline picture, with
attachments (a spreadsheet, a PDF, a calendar invitation), Date headers spread over the
last days. The same people get the same mail on every run (a fixed seed)."""

from __future__ import annotations

import random
import smtplib
import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid

DAYS = 4


@dataclass(frozen=True)
class Recipient:
    """A demo person who gets mail."""

    address: str
    name: str
    language: str  # "en" or "es"


@dataclass(frozen=True)
class Letter:
    """One kind of message: who writes it, about what, and what comes with it."""

    sender: str
    subject: str
    body: str
    html: bool = False
    attachment: str = ""  # "csv", "pdf" or "ics"


LETTERS = {
    "en": [
        Letter(
            "Karen Miller <karen.miller@northwind.example>",
            "Quarterly figures for review",
            "Hi {first},\n\nAttached are the figures for the third quarter. Could you look"
            " at the regional totals before Thursday's call?\n\nThanks,\nKaren\n",
            attachment="csv",
        ),
        Letter(
            "Northwind Supplies <orders@northwind.example>",
            "Your order #48213 has shipped",
            "Hello {first},\n\nGood news: your order #48213 (12 boxes of printer paper,"
            " 4 toner cartridges) left our warehouse this morning.\n\nNorthwind Supplies\n",
            html=True,
        ),
        Letter(
            "David Chen <david.chen@contoso.example>",
            "Meeting invitation: project kick-off",
            "Hi {first},\n\nI have booked the large meeting room for the project kick-off."
            " The invitation is attached; the agenda follows by Monday.\n\nDavid\n",
            attachment="ics",
        ),
        Letter(
            "Legal Department <legal@fabrikam.example>",
            "Contract draft v3",
            "Dear {first},\n\nPlease find the third draft of the service contract attached."
            " Clauses 4.2 and 7.1 changed after last week's discussion.\n\nKind regards,\n"
            "Rachel Adams\nFabrikam Legal\n",
            attachment="pdf",
        ),
        Letter(
            "The Office Team <office@acme.test>",
            "Lunch on Friday?",
            "Hi {first},\n\nA few of us are going to the new Italian place on Friday at"
            " 12:30. Are you in?\n\nCheers\n",
        ),
        Letter(
            "IT Service Desk <it@acme.test>",
            "Planned maintenance: Saturday 06:00-08:00",
            "Hello {first},\n\nThe file servers will be unavailable on Saturday between"
            " 06:00 and 08:00 while we install updates. Mail is not affected.\n\nIT Service"
            " Desk\n",
        ),
        Letter(
            "Acme Newsletter <news@acme.test>",
            "This month at Acme: the new warehouse opens",
            "Hello {first},\n\nThe new warehouse in Riverside opens its doors on the 15th."
            " Read about the team that made it happen.\n",
            html=True,
        ),
        Letter(
            "Accounts <billing@contoso.example>",
            "Invoice INV-2026-1107",
            "Dear {first},\n\nPlease find invoice INV-2026-1107 attached, due in 30 days.\n\n"
            "Contoso Accounts\n",
            attachment="pdf",
        ),
    ],
    "es": [
        Letter(
            "Carmen Ortega <carmen.ortega@construcciones.example>",
            "Presupuesto para la reforma de la oficina",
            "Hola {first}:\n\nTe adjunto el presupuesto para la reforma de la segunda planta."
            " Si te parece bien, podemos empezar el día 10.\n\nUn saludo,\nCarmen\n",
            attachment="pdf",
        ),
        Letter(
            "Tienda Papelera <pedidos@papeleria.example>",
            "Su pedido n.º 7731 ha sido enviado",
            "Hola {first}:\n\nSu pedido n.º 7731 (archivadores y bolígrafos) ha salido hoy"
            " de nuestro almacén.\n\nGracias por su compra.\n",
            html=True,
        ),
        Letter(
            "Javier Molina <javier.molina@consultores.example>",
            "Convocatoria: reunión de seguimiento",
            "Hola {first}:\n\nTe envío la convocatoria para la reunión de seguimiento del"
            " proyecto. Revisaremos el calendario y los próximos pasos.\n\nJavier\n",
            attachment="ics",
        ),
        Letter(
            "Administración <facturas@proveedor.example>",
            "Factura FAC-2026-0311",
            "Estimado/a {first}:\n\nAdjuntamos la factura FAC-2026-0311, con vencimiento a"
            " 30 días.\n\nAtentamente,\nAdministración\n",
            attachment="pdf",
        ),
        Letter(
            "Recursos Humanos <rrhh@sierra.test>",
            "Calendario de vacaciones de diciembre",
            "Hola {first}:\n\nOs recordamos que el calendario de vacaciones de diciembre debe"
            " estar cerrado antes del viernes. Adjuntamos la hoja para completarla.\n\nRRHH\n",
            attachment="csv",
        ),
        Letter(
            "Equipo Sierra <equipo@sierra.test>",
            "¿Comemos juntos el jueves?",
            "Hola {first}:\n\nEl jueves celebramos el cumpleaños de Marta en el restaurante de"
            " la esquina, a las 14:00. ¿Te apuntas?\n\nUn abrazo\n",
        ),
        Letter(
            "Boletín Sierra <boletin@sierra.test>",
            "Novedades del mes: nueva oficina en Valencia",
            "Hola {first}:\n\nEste mes abrimos nuestra nueva oficina en Valencia. Te contamos"
            " quién forma el equipo y cómo llegar.\n",
            html=True,
        ),
    ],
}


def _png(red: int, green: int, blue: int, size: int = 48) -> bytes:
    """A small one-colour PNG picture."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    rows = b"".join(b"\x00" + bytes((red, green, blue)) * size for _ in range(size))
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", size, size, 8, 2, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


def _pdf(title: str) -> bytes:
    """A one-page PDF showing ``title`` (ASCII)."""
    text = title.encode("ascii", "replace").replace(b"(", b"[").replace(b")", b"]")
    stream = b"BT /F1 18 Tf 72 720 Td (" + text + b") Tj ET"
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R"
        b" /Resources << /Font << /F1 5 0 R >> >> >>",
        b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    out = b"%PDF-1.4\n"
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (
        len(objects) + 1,
        xref,
    )
    return out


def _attach(message: EmailMessage, kind: str, letter: Letter, when: datetime) -> None:
    """Add the letter's attachment."""
    if kind == "csv":
        rows = "region,q1,q2,q3\nNorth,1200,1350,1410\nSouth,980,1020,1100\nEast,1500,1480,1620\n"
        message.add_attachment(
            rows.encode(), maintype="text", subtype="csv", filename="figures.csv"
        )
    elif kind == "pdf":
        name = "".join(c if c.isalnum() else "-" for c in letter.subject.split(":")[-1].strip())
        message.add_attachment(
            _pdf(letter.subject),
            maintype="application",
            subtype="pdf",
            filename=f"{name.strip('-')[:40] or 'document'}.pdf",
        )
    elif kind == "ics":
        start = (when + timedelta(days=3)).strftime("%Y%m%dT100000Z")
        end = (when + timedelta(days=3)).strftime("%Y%m%dT110000Z")
        invitation = (
            "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//Continuity demo//EN\r\n"
            "METHOD:REQUEST\r\nBEGIN:VEVENT\r\n"
            f"UID:{make_msgid(domain='calendar.example')[1:-1]}\r\n"
            f"DTSTAMP:{when.strftime('%Y%m%dT%H%M%SZ')}\r\nDTSTART:{start}\r\nDTEND:{end}\r\n"
            f"SUMMARY:{letter.subject.split(':')[-1].strip()}\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n"
        )
        message.add_attachment(
            invitation.encode(), maintype="text", subtype="calendar", filename="invite.ics"
        )


def compose(letter: Letter, to: Recipient, when: datetime) -> EmailMessage:
    """The message ``letter`` makes for ``to``, dated ``when``."""
    first = to.name.split()[0]
    message = EmailMessage()
    message["From"] = letter.sender
    message["To"] = f"{to.name} <{to.address}>"
    message["Subject"] = letter.subject
    message["Date"] = format_datetime(when)
    message["Message-ID"] = make_msgid(domain=letter.sender.rpartition("@")[2].rstrip(">"))
    body = letter.body.format(first=first)
    message.set_content(body)
    if letter.html:
        logo = make_msgid(domain="demo.example")
        paragraphs = "".join(f"<p>{p.replace(chr(10), '<br>')}</p>" for p in body.split("\n\n"))
        message.add_alternative(
            '<html><body style="font-family: sans-serif">'
            f'<img src="cid:{logo[1:-1]}" alt="logo" width="48" height="48">'
            f'<h2 style="color:#1d4e89">{letter.subject}</h2>{paragraphs}</body></html>',
            subtype="html",
        )
        html_part = message.get_body(preferencelist=("html",))
        if html_part is not None:
            html_part.add_related(_png(29, 78, 137), maintype="image", subtype="png", cid=logo)
    if letter.attachment:
        _attach(message, letter.attachment, letter, when)
    return message


def plan(
    people: Sequence[Recipient], featured: str, now: datetime | None = None
) -> list[tuple[Recipient, EmailMessage]]:
    """The seed mail: two or three letters each, every letter for ``featured`` (the
    end user a visitor signs in as), dated over the last ``DAYS`` days, oldest first."""
    now = now or datetime.now(UTC)
    chooser = random.Random(2026)  # noqa: S311 - the same demo mail on every run, no secret
    planned: list[tuple[datetime, Recipient, Letter]] = []
    for person in people:
        letters = LETTERS[person.language]
        chosen = letters if person.address == featured else chooser.sample(letters, 3)
        for letter in chosen:
            when = now - timedelta(minutes=chooser.randint(30, DAYS * 24 * 60))
            planned.append((when.replace(microsecond=0), person, letter))
    planned.sort(key=lambda item: item[0])
    return [(person, compose(letter, person, when)) for when, person, letter in planned]


def send(gateway: tuple[str, int], messages: Sequence[tuple[Recipient, EmailMessage]]) -> int:
    """Send the messages to the gateway over SMTP, as the Internet would; how many."""
    with smtplib.SMTP(*gateway, timeout=60) as smtp:
        for person, message in messages:
            sender = message["From"].addresses[0].addr_spec
            smtp.send_message(message, from_addr=sender, to_addrs=[person.address])
    return len(messages)
