"""Control Panel > Security settings > Continuity Service, for domain admins.

The scope selector lists the domains an admin administers; each domain's page shows the
overview and the settings: active or not, all users or only selected users, the list of
selected users (added one by one with suggestions, or in bulk), the emergency password
switch and reminders, the primary mail server, and the domain's audit trail.

The rules are roster.service's. A view finds the domain (a domain outside the admin's
scope is "not found", never "forbidden"), calls the rule inside one write transaction
that reads the domain again, and words the outcome in the reader's language.

One module a subject: ``page`` (the scope selector and the domain's page), ``service``
(activate, deactivate), ``coverage`` (all or selected users), ``users`` (the list),
``emergency`` (the emergency password), ``primary`` (the primary server and its test),
``events`` (continuity events by hand, and their list), ``audit`` (the audit trail),
``tracking`` (Email Live Tracking), ``dkim`` (the DNS records for what the webmail
sends), ``webmail`` (when the standby webmail
opens); ``badges`` shows a domain's state and its hand-back at a glance;
``scope`` finds the admin's domain, ``wording`` words
outcomes.
"""

# Each module registers its views on ``bp`` when imported.
from portal.controlpanel import (
    audit,
    badges,
    coverage,
    dkim,
    emergency,
    events,
    page,
    primary,
    service,
    tracking,
    users,
    webmail,
)
from portal.controlpanel.scope import PEOPLE_INDEX, bp

__all__ = [
    "PEOPLE_INDEX",
    "bp",
    "audit",
    "badges",
    "coverage",
    "dkim",
    "emergency",
    "events",
    "page",
    "primary",
    "service",
    "tracking",
    "users",
    "webmail",
]
