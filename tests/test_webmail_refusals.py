"""A relay that refuses the sender for good: the person is told why, nothing is lost
(the message waits in Drafts), and nothing counts against their sending limit."""

from __future__ import annotations

from typing import Any

from tests.portal_support import Portal, submit, text
from tests.servers.dovecot import DovecotServer
from tests.servers.smtp import smtp_server
from tests.webmail_support import Webmail, standby_store, webmail_world  # noqa: F401


class RefuseSender:
    """A relay that answers 550 to every MAIL FROM."""

    async def handle_MAIL(  # noqa: N802 - aiosmtpd's hook name
        self, _server: Any, _session: Any, _envelope: Any, _address: str, _options: Any
    ) -> str:
        return "550 5.7.1 Sender not allowed here"


def test_a_sender_refused_for_good_is_told_and_kept_in_drafts(
    portal: Portal,
    standby_store: DovecotServer,  # noqa: F811
) -> None:
    with smtp_server(RefuseSender()) as port:
        for world in webmail_world(portal, standby_store, relay_port=port):
            ana = world.person("ana")
            client = world.client(ana)

            answer = submit(
                client,
                "/webmail/compose",
                {"to": "bo@other.test", "subject": "Plans", "body": "Tomorrow?", "action": "send"},
            )

            assert answer.status_code == 400
            shown = text(answer)
            assert "refused the message (550 5.7.1 Sender not allowed here)" in shown
            drafts = world.folder(ana, "Drafts")
            assert len(drafts) == 1 and b"Subject: Plans" in drafts[0]
            assert not [a for a, _actor in portal.audit_actions() if a == "webmail_sent"]
