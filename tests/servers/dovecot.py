"""A real Dovecot standby store for the tests: continuity.localdovecot (the demo's too),
rendered from deploy/dovecot/dovecot.conf in a temp directory on free loopback ports."""

from __future__ import annotations

from continuity.localdovecot import (
    DEPLOY_CONFIG,
    MASTER_USER,
    DovecotError,
    render_config,
)
from continuity.localdovecot import Dovecot as DovecotServer

__all__ = ["DEPLOY_CONFIG", "MASTER_USER", "DovecotError", "DovecotServer", "render_config"]
