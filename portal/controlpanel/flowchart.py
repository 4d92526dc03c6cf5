"""The domain overview's mail-flow chart, drawn on the server as inline SVG: a stacked bar
a UTC day (delivered, via Continuity, deferred, bounced; figures from ``roster.flow``),
the continuity events as shaded, labelled bands, a legend and both axes.

No script and nothing fetched: colours are presentation attributes and patterns live in
the SVG's own ``<defs>`` (the portal's CSP allows no inline style). Every series has a
pattern of its own besides its colour, and the legend names it; the page carries the same
figures as a table for screen readers (``controlpanel/_flowchart.html``). All text from
data (the domain's name, an event's cause) is escaped here, and stripped of control and
bidirectional-override characters.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from babel.dates import format_date
from babel.numbers import format_compact_decimal, format_decimal
from flask_babel import get_locale
from flask_babel import gettext as _
from markupsafe import Markup, escape
from sqlalchemy.orm import Session

from roster.flow import (
    FLOW_BOUNCED,
    FLOW_CONTINUITY,
    FLOW_DEFERRED,
    FLOW_DELIVERED,
    FLOWS,
    MailFlow,
    mail_flow,
)
from roster.models import Domain

# Colours on the chart's white, each at least 3:1 (WCAG 1.4.11) against white and the
# event band, text at least 4.5:1 (1.4.3); tests/test_flowchart.py checks the ratios.
WHITE = "#ffffff"
INK = "#1b1f24"
MUTED = "#4a5563"
GRID = "#d9dde3"
BAND = "#ece6f6"
BAND_INK = "#4b2e83"
COLOURS = {
    FLOW_DELIVERED: "#1d6b3a",
    FLOW_CONTINUITY: "#1f4e8c",
    FLOW_DEFERRED: "#8a5a00",
    FLOW_BOUNCED: "#b42318",
}

WIDTH = 760
LEFT, RIGHT = 72, 16
LEGEND_ROW = 20
LABEL_ROWS = 2  # rows for event labels, in a band of their own above the plot
LABEL_ROW = 16
TOTAL_ROOM = 16  # between the labels and the plot: a full bar's total stays out of the labels
PLOT_HEIGHT = 220
BOTTOM = 46
FONT = 12
LABEL_FONT = 11  # an event's label
TOTAL_FONT = 11  # a bar's total
MIN_SEGMENT = 1.0  # px: a non-zero figure never vanishes beside a huge day

_UNSAFE = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def clean(text: str, limit: int = 200) -> str:
    """Text from data made fit to show: no control or direction-override characters,
    at most ``limit`` characters."""
    cleaned = _UNSAFE.sub("", text).strip()
    return cleaned if len(cleaned) <= limit else cleaned[: limit - 1] + "…"


@dataclass(frozen=True)
class ChartWords:
    """The chart's words in the reader's language."""

    locale: str
    title: str
    description: str
    series: dict[str, str]  # flow -> label
    day_labels: list[str]  # one per day, short ("18 Nov")
    event_labels: list[str]  # one per event of the flow ("Continuity event 1")
    event_spans: list[str]  # one per event, its times in words
    event_causes: list[str]  # one per event, its cause fit to show ("" when none)
    event: str  # the legend's word for a band
    axis_y: str
    axis_x: str


@dataclass(frozen=True)
class FlowChart:
    """What the domain overview shows: the figures, the words and the drawing."""

    flow: MailFlow
    words: ChartWords
    svg: Markup


def flow_chart(session: Session, domain: Domain) -> FlowChart:
    """The domain's mail-flow chart for the overview, in the reader's language."""
    flow = mail_flow(session, domain.id)
    words = chart_words(domain.name, flow, str(get_locale() or "en"))
    return FlowChart(flow, words, chart_svg(flow, words))


def _when(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M UTC")


def chart_words(domain_name: str, flow: MailFlow, locale: str) -> ChartWords:
    """The words of ``flow``'s chart, translated (needs a request or app context)."""
    first, last = flow.days[0].day, flow.days[-1].day
    spans = []
    for event in flow.events:
        if event.ended_at is None:
            spans.append(_("since %(start)s (still open)", start=_when(event.started_at)))
        else:
            spans.append(
                _("%(start)s to %(end)s", start=_when(event.started_at), end=_when(event.ended_at))
            )
    return ChartWords(
        locale=locale,
        title=_(
            "Mail flow of %(domain)s, last %(num)d days (UTC)",
            domain=clean(domain_name, 253),
            num=len(flow.days),
        ),
        description=_(
            "Recipients received each day from %(first)s to %(last)s (days from 00:00 to"
            " 24:00 UTC), in stacked bars by what became of them: delivered, via"
            " Continuity, deferred, bounced. Shaded bands mark continuity events. A table"
            " with the same figures follows the chart.",
            first=first.isoformat(),
            last=last.isoformat(),
        ),
        series={
            FLOW_DELIVERED: _("Delivered"),
            FLOW_CONTINUITY: _("Via Continuity"),
            FLOW_DEFERRED: _("Deferred"),
            FLOW_BOUNCED: _("Bounced"),
        },
        day_labels=[format_date(day.day, "d MMM", locale=locale) for day in flow.days],
        event_labels=[_("Continuity event %(num)d", num=e.number) for e in flow.events],
        event_spans=spans,
        event_causes=[clean(e.reason) for e in flow.events],
        event=_("Continuity event"),
        axis_y=_("Recipients"),
        axis_x=_("Day (UTC)"),
    )


# ---------------------------------------------------------------------------
# The drawing
# ---------------------------------------------------------------------------
def number(value: int, locale: str) -> str:
    """A figure as a person reads it: grouped digits, millions in short form."""
    if value >= 1_000_000:
        return str(
            format_compact_decimal(value, format_type="short", locale=locale, fraction_digits=2)
        )
    return str(format_decimal(value, locale=locale))


def ticks(maximum: int) -> list[int]:
    """Round values for the vertical axis, from 0 to at least ``maximum``: the smallest
    step of 1, 2 or 5 times a power of ten that needs at most five of them."""
    step = 1
    while math.ceil(maximum / step) > 5:
        step = _next_step(step)
    return list(range(0, max(math.ceil(maximum / step), 1) * step + 1, step))


def _next_step(step: int) -> int:
    """The step after ``step`` in 1, 2, 5, 10, 20, 50, ..."""
    digits = str(step)
    return step * 5 // 2 if digits[0] == "2" else step * 2


def _text_width(text: str, size: float = FONT) -> float:
    """A generous estimate of a text's width (no font metrics on the server)."""
    return len(text) * size * 0.6


def _attr(value: object) -> str:
    return str(escape(str(value)))


def _n(value: float) -> str:
    return f"{value:.1f}".rstrip("0").rstrip(".")


def _patterns() -> list[str]:
    """Fills: delivered plain, via Continuity striped, deferred dotted, bounced hatched."""
    c = COLOURS
    return [
        '<pattern id="mf-continuity" width="6" height="6" patternUnits="userSpaceOnUse"'
        ' patternTransform="rotate(45)">'
        f'<rect width="6" height="6" fill="{c[FLOW_CONTINUITY]}"/>'
        f'<rect width="2" height="6" fill="{WHITE}" fill-opacity="0.45"/></pattern>',
        '<pattern id="mf-deferred" width="6" height="6" patternUnits="userSpaceOnUse">'
        f'<rect width="6" height="6" fill="{c[FLOW_DEFERRED]}"/>'
        f'<circle cx="3" cy="3" r="1.3" fill="{WHITE}" fill-opacity="0.6"/></pattern>',
        '<pattern id="mf-bounced" width="6" height="6" patternUnits="userSpaceOnUse">'
        f'<rect width="6" height="6" fill="{c[FLOW_BOUNCED]}"/>'
        f'<path d="M0 0L6 6M6 0L0 6" stroke="{WHITE}" stroke-opacity="0.5" stroke-width="1"/>'
        "</pattern>",
    ]


FILLS = {
    FLOW_DELIVERED: COLOURS[FLOW_DELIVERED],
    FLOW_CONTINUITY: "url(#mf-continuity)",
    FLOW_DEFERRED: "url(#mf-deferred)",
    FLOW_BOUNCED: "url(#mf-bounced)",
}


def _legend(words: ChartWords) -> tuple[list[str], int]:
    """The legend's items, wrapped into rows across the width; and the rows' height."""
    items = [(FILLS[flow], words.series[flow], False) for flow in FLOWS]
    items.append((BAND, words.event, True))
    parts: list[str] = []
    x, row = float(LEFT), 0
    for fill, label, band in items:
        width = 18 + _text_width(label) + 18
        if x + width > WIDTH - RIGHT and x > LEFT:
            x, row = float(LEFT), row + 1
        y = 6 + row * LEGEND_ROW
        edge = (
            f'stroke="{BAND_INK}" stroke-dasharray="3 2"'
            if band
            else f'stroke="{INK}" stroke-width="0.5"'
        )
        parts.append(
            f'<rect x="{_n(x)}" y="{y}" width="12" height="12" fill="{fill}" {edge}/>'
            f'<text x="{_n(x + 18)}" y="{y + 10}" fill="{INK}">{escape(label)}</text>'
        )
        x += width
    return parts, (row + 1) * LEGEND_ROW + 6


@dataclass(frozen=True)
class _Total:
    """A bar's total written above it, and the box its digits take."""

    x: float  # the centre
    y: float  # the baseline
    text: str

    @property
    def box(self) -> tuple[float, float, float, float]:
        """Left, top, right and bottom, with a pixel or two of air."""
        half = _text_width(self.text, TOTAL_FONT) / 2 + 2
        return self.x - half, self.y - TOTAL_FONT, self.x + half, self.y + 3


def chart_svg(flow: MailFlow, words: ChartWords) -> Markup:
    """The chart as an inline ``<svg>`` element (safe to place in the page as it is)."""
    legend, legend_height = _legend(words)
    labels_bottom = legend_height + LABEL_ROWS * LABEL_ROW + 4
    top = labels_bottom + TOTAL_ROOM
    bottom = top + PLOT_HEIGHT
    height = bottom + BOTTOM
    plot_width = WIDTH - LEFT - RIGHT
    days = len(flow.days)
    slot = plot_width / days
    axis = ticks(max((day.total for day in flow.days), default=0))
    scale = PLOT_HEIGHT / axis[-1]
    span = (flow.end - flow.start).total_seconds()

    def x_at(moment: datetime) -> float:
        seconds = (min(max(moment, flow.start), flow.end) - flow.start).total_seconds()
        return LEFT + plot_width * seconds / span

    # Each day's segments, bottom up, and its total above them (when there is room).
    every = max(1, math.ceil(44 / slot))  # a day label needs about 44 px
    bar = slot * 0.64
    segments: list[list[tuple[str, float, float]]] = []  # per day: (flow, y, height)
    totals: list[_Total] = []
    for n, day in enumerate(flow.days):
        y = float(bottom)
        stack = []
        for flow_name in FLOWS:
            value = day.count(flow_name)
            if value:
                height_px = max(value * scale, MIN_SEGMENT)
                y -= height_px
                stack.append((flow_name, y, height_px))
        segments.append(stack)
        if day.total and slot >= 30:
            totals.append(_Total(LEFT + (n + 0.5) * slot, y - 4, number(day.total, words.locale)))

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="mail-flow-chart" role="img"'
        f' viewBox="0 0 {WIDTH} {height}" width="{WIDTH}" height="{height}"'
        f' aria-labelledby="mf-title" aria-describedby="mf-desc"'
        f' font-family="system-ui, sans-serif" font-size="{FONT}">',
        f'<title id="mf-title">{escape(words.title)}</title>',
        f'<desc id="mf-desc">{escape(words.description)}</desc>',
        "<defs>",
        *_patterns(),
        "</defs>",
        f'<rect width="{WIDTH}" height="{height}" fill="{WHITE}"/>',
        *legend,
    ]
    out += _bands(flow, words, x_at, labels_bottom, bottom, totals)
    for value in axis:
        y = bottom - value * scale
        out.append(
            f'<line x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{_n(y)}" y2="{_n(y)}"'
            f' stroke="{MUTED if value == 0 else GRID}" stroke-width="1"/>'
            f'<text x="{LEFT - 6}" y="{_n(y + 4)}" text-anchor="end" fill="{MUTED}">'
            f"{escape(number(value, words.locale))}</text>"
        )
    for n, stack in enumerate(segments):
        left = LEFT + n * slot + (slot - bar) / 2
        for flow_name, y, height_px in stack:
            value = flow.days[n].count(flow_name)
            tip = f"{words.day_labels[n]}: {words.series[flow_name]} {number(value, words.locale)}"
            out.append(
                f'<rect x="{_n(left)}" y="{_n(y)}" width="{_n(bar)}" height="{_n(height_px)}"'
                f' fill="{FILLS[flow_name]}" stroke="{WHITE}" stroke-width="0.75">'
                f"<title>{escape(tip)}</title></rect>"
            )
        if n % every == 0 or n == days - 1:
            out.append(
                f'<text x="{_n(LEFT + (n + 0.5) * slot)}" y="{bottom + 16}"'
                f' text-anchor="middle" fill="{MUTED}"'
                f' font-size="11">{escape(words.day_labels[n])}</text>'
            )
    for total in totals:
        out.append(
            f'<text class="mf-total" x="{_n(total.x)}" y="{_n(total.y)}" text-anchor="middle"'
            f' fill="{INK}" font-size="{TOTAL_FONT}">{escape(total.text)}</text>'
        )
    out.append(
        f'<text x="{_n(LEFT + plot_width / 2)}" y="{height - 8}" text-anchor="middle"'
        f' fill="{INK}">{escape(words.axis_x)}</text>'
        f'<text transform="translate(16 {_n(top + PLOT_HEIGHT / 2)}) rotate(-90)"'
        f' text-anchor="middle" fill="{INK}">{escape(words.axis_y)}</text>'
    )
    out.append("</svg>")
    return Markup("".join(out))  # noqa: S704 - every piece of text above is escaped


def _open_stretches(
    x: float, top: float, bottom: float, totals: list[_Total]
) -> list[tuple[float, float]]:
    """The stretches of a vertical line at ``x`` from ``top`` to ``bottom`` that cross
    no total's digits (an event's edge passes behind a bar, never through its figure)."""
    cuts = sorted((box[1], box[3]) for box in (t.box for t in totals) if box[0] <= x <= box[2])
    stretches, y = [], top
    for upper, lower in cuts:
        if upper > y:
            stretches.append((y, min(upper, bottom)))
        y = max(y, lower)
    if y < bottom:
        stretches.append((y, bottom))
    return [(a, b) for a, b in stretches if b - a >= 1]


def _bands(
    flow: MailFlow,
    words: ChartWords,
    x_at: Callable[[datetime], float],
    top: float,
    bottom: float,
    totals: list[_Total],
) -> list[str]:
    """The events as shaded bands behind the bars, from ``top`` (the foot of the labels'
    band) down, each with its label in the band above them (on a second row when the
    first is taken there, by its number alone when both are, none when even that would
    overlap one); the bars' totals sit below ``top``, so no label meets one."""
    out: list[str] = []
    taken = [float(LEFT) - 1.0] * LABEL_ROWS  # where each label row is free from
    for index, event in enumerate(flow.events):
        start = x_at(event.started_at)
        end = x_at(event.ended_at or flow.now)
        width = max(end - start, 3.0)
        label = words.event_labels[index]
        tip = f"{label}: {words.event_spans[index]}"
        if words.event_causes[index]:
            tip += f" ({words.event_causes[index]})"
        out.append(
            f'<g class="event"><title>{escape(tip)}</title>'
            f'<rect x="{_n(start)}" y="{_n(top)}" width="{_n(width)}"'
            f' height="{_n(bottom - top)}" fill="{BAND}"/>'
        )
        for edge, inside in ((start, event.started_at), (start + width, event.ended_at)):
            if inside is not None and LEFT < edge < WIDTH - RIGHT:
                for upper, lower in _open_stretches(edge, top, bottom, totals):
                    out.append(
                        f'<line x1="{_n(edge)}" x2="{_n(edge)}" y1="{_n(upper)}"'
                        f' y2="{_n(lower)}" stroke="{BAND_INK}" stroke-width="1"'
                        ' stroke-dasharray="4 3"/>'
                    )
        place = _label_place(label, str(event.number), start, taken)
        if place is not None:
            shown, x, row = place
            taken[row] = x + _text_width(shown, LABEL_FONT) + 6
            out.append(
                f'<text class="mf-label" x="{_n(x)}" y="{_n(top - 6 - row * LABEL_ROW)}"'
                f' fill="{BAND_INK}" font-size="{LABEL_FONT}" font-weight="600">'
                f"{escape(shown)}</text>"
            )
        out.append("</g>")
    return out


def _label_place(
    label: str, short: str, start: float, taken: list[float]
) -> tuple[str, float, int] | None:
    """Where an event's label goes: its words, else its number alone, at the band's start
    (kept inside the picture) on the first row free there; None when even the number
    finds no room (the events are listed in words under the chart)."""
    for shown in (label, short):
        x = min(start + 2, WIDTH - RIGHT - _text_width(shown, LABEL_FONT))
        row = next((r for r in range(LABEL_ROWS) if taken[r] <= x), None)
        if row is not None:
            return shown, x, row
    return None
