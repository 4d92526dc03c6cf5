"""``continuity gateway``: the receiver, the group committer, the queue runners and the
standby copiers of one gateway process, started and stopped together."""

from __future__ import annotations

import logging
import socket
import ssl
import threading
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import Engine, select

from gateway.callout import Callout
from gateway.commit import GroupCommitter, make_durable
from gateway.copier import USERS_REFRESH_SECONDS, Copier, Recorder, UsersFile
from gateway.limits import ClientLimits, GatewayLimits
from gateway.listener import ClosingController
from gateway.monitor import Monitor
from gateway.receiver import GatewayHandler, GatewaySMTP, ReceiverSettings
from gateway.retention import DailyRetention
from gateway.runner import QueueRunner, RunnerSettings
from gateway.standby import StandbyStore
from roster.config import Config, ConfigError
from roster.continuity import held_domains_clause
from roster.db import make_engine
from roster.logs import log_event
from roster.models import Domain
from roster.primary_address import (
    PrimaryAddressRefused,
    PrimaryUnresolved,
    check_primary_address,
    resolve_primary,
)
from roster.queue import worker_name

log = logging.getLogger("continuity.gateway")

RETENTION_CHECK_SECONDS = 3600.0


@dataclass(frozen=True)
class GatewaySettings:
    """The gateway's configuration, with its defaults, read once at start."""

    host: str
    port: int
    hostname: str
    max_message_size: int
    receive_memory: int
    tls_context: ssl.SSLContext | None
    limits: GatewayLimits
    delivery_workers: int
    copy_workers: int
    lease: timedelta
    delay_warning: timedelta
    lifetime: timedelta
    max_held: timedelta
    ca_file: str | None
    relay: tuple[str, int] | None
    relay_username: str | None
    relay_password: str | None
    lmtp: tuple[str, int] | None
    copy_connections: int
    users_file: str | None


def _split(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    return host.strip("[]"), int(port)


def settings_from(config: Config) -> GatewaySettings:
    """The gateway's settings from the checked configuration (ConfigError if unusable)."""
    gateway: dict[str, Any] = config.gateway
    host, port = _split(gateway.get("listen", "0.0.0.0:25"))  # noqa: S104 - the MX listens
    tls_context = None
    cert, key = gateway.get("tls_cert_file"), gateway.get("tls_key_file")
    if bool(cert) != bool(key):
        raise ConfigError("[gateway] tls_cert_file and tls_key_file go together")
    if cert and key:
        tls_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        try:
            tls_context.load_cert_chain(cert, key)
        except (OSError, ssl.SSLError) as error:
            raise ConfigError(f"[gateway] tls_cert_file/tls_key_file: {error}") from error
    relay = config.outbound.get("relay")
    lmtp = config.standby.get("lmtp")
    return GatewaySettings(
        host=host,
        port=port,
        hostname=gateway.get("hostname") or socket.getfqdn(),
        max_message_size=gateway.get("max_message_size", 50 * 1024 * 1024),
        receive_memory=gateway.get("receive_memory_mb", 512) * 1024 * 1024,
        tls_context=tls_context,
        limits=GatewayLimits(
            trusted_networks=tuple(gateway.get("trusted_networks", ())),
            max_connections_per_client=gateway.get("max_connections_per_client", 50),
            max_messages_per_minute=gateway.get("max_messages_per_minute", 1000),
            max_recipients_per_minute=gateway.get("max_recipients_per_minute", 5000),
            callout_positive_seconds=gateway.get("callout_positive_seconds", 3600),
            callout_negative_seconds=gateway.get("callout_negative_seconds", 600),
            max_message_size=gateway.get("max_message_size", 50 * 1024 * 1024),
        ),
        delivery_workers=gateway.get("delivery_workers", 4),
        # A copier holds one LMTP connection at a time: as many copiers as connections
        # (four copiers on eight connections made 0.6 of Dovecot's own rate).
        copy_workers=gateway.get("copy_workers", config.standby.get("copy_connections", 8)),
        lease=timedelta(seconds=gateway.get("claim_seconds", 600)),
        delay_warning=timedelta(hours=gateway.get("delay_warning_hours", 4)),
        lifetime=timedelta(days=gateway.get("max_queue_days", 5)),
        max_held=timedelta(days=gateway.get("max_held_days", 30)),
        ca_file=gateway.get("ca_file"),
        relay=_split(relay) if relay else None,
        relay_username=config.outbound.get("username"),
        relay_password=config.outbound.get("password"),
        lmtp=_split(lmtp) if lmtp else None,
        copy_connections=config.standby.get("copy_connections", 8),
        users_file=config.standby.get("users_file"),
    )


class _Controller(ClosingController):
    """aiosmtpd's controller making the gateway's server class; stopping tells the
    clients still connected 421. They send again later what got no 250: nothing is lost,
    and a message whose commit landed just before the stop, its 250 not yet sent, may
    arrive twice."""

    def __init__(self, handler: GatewayHandler, settings: GatewaySettings) -> None:
        super().__init__(
            handler,
            hostname=settings.host,
            port=settings.port,
            goodbye=b"421 4.3.2 Service shutting down, try again later\r\n",
        )
        self._settings = settings

    def factory(self) -> GatewaySMTP:
        """One server object per connection."""
        return GatewaySMTP(
            self.handler,
            hostname=self._settings.hostname,
            data_size_limit=self._settings.max_message_size,
            enable_SMTPUTF8=True,
            tls_context=self._settings.tls_context,
            ident="Continuity",
            connections=self.connections,
        )


class Gateway:
    """One gateway process: start() it, stop() it."""

    def __init__(
        self,
        config: Config,
        *,
        engine: Engine | None = None,
        receive: bool = True,
        deliver: bool = True,
        copy: bool = True,
        monitor: bool = True,
        idle: float = 1.0,
        retention_check: float | None = RETENTION_CHECK_SECONDS,
    ) -> None:
        self.config = config
        self.settings = settings_from(config)
        self.engine = engine or make_engine(config.database_url)
        make_durable(self.engine)
        self.worker = worker_name()
        self.idle = idle
        self.committer = GroupCommitter(self.engine)
        self.limits = ClientLimits(self.settings.limits)
        self.callout = Callout(
            positive_seconds=self.settings.limits.callout_positive_seconds,
            negative_seconds=self.settings.limits.callout_negative_seconds,
            helo_name=self.settings.hostname,
        )
        self.handler = GatewayHandler(
            self.engine,
            self.committer,
            ReceiverSettings(
                hostname=self.settings.hostname,
                max_message_size=self.settings.max_message_size,
                receive_memory=self.settings.receive_memory,
                ask_primary=self.ask_primary,
            ),
            self.limits,
        )
        self.controller = _Controller(self.handler, self.settings) if receive else None
        runner_settings = RunnerSettings(
            hostname=self.settings.hostname,
            lease=self.settings.lease,
            delay_warning=self.settings.delay_warning,
            lifetime=self.settings.lifetime,
            max_held=self.settings.max_held,
            ca_file=self.settings.ca_file,
            relay=self.settings.relay,
            relay_username=self.settings.relay_username,
            relay_password=self.settings.relay_password,
        )
        self.runners = (
            [
                # A name of its own for each thread: claims tell apart who holds what.
                QueueRunner(self.engine, config, runner_settings, f"{self.worker}/r{index}")
                for index in range(self.settings.delivery_workers)
            ]
            if deliver
            else []
        )
        self.users = UsersFile(self.engine, self.settings.users_file)
        self.store: StandbyStore | None = None
        self.copiers: list[Copier] = []
        self.recorder = Recorder(self.engine, self.worker)
        if copy and self.settings.lmtp:
            host, port = self.settings.lmtp
            self.store = StandbyStore(host, port, connections=self.settings.copy_connections)
            self.copiers = [
                Copier(
                    self.engine,
                    self.store,
                    self.users,
                    f"{self.worker}/c{index}",
                    lease=self.settings.lease,
                    recorder=self.recorder,
                )
                for index in range(self.settings.copy_workers)
            ]
        self.monitor = (
            Monitor(
                self.engine,
                config,
                hostname=self.settings.hostname,
                ca_file=self.settings.ca_file,
                tick=min(idle, 1.0),
            )
            if monitor
            else None
        )
        # Retention once a day (None: not in this process); the lease and the record of
        # the last run keep it to one run a day for the whole deployment, cron included.
        self.retention = (
            DailyRetention(config, self.engine, self.worker, retention_check)
            if retention_check is not None
            else None
        )
        self._threads: list[threading.Thread] = []
        self._stopping = threading.Event()

    # -- the callout -------------------------------------------------------------
    def ask_primary(self, domain_name: str, address: str) -> str | None:
        """Ask the domain's primary whether ``address`` exists: None to accept, or the
        reply to give (550 with the primary's words, 450 while it cannot say)."""
        with self.engine.connect() as connection:
            row = connection.execute(
                select(
                    Domain.id,
                    Domain.primary_host,
                    Domain.primary_port,
                    Domain.primary_tls,
                    Domain.primary_tls_verify,
                ).where(Domain.name == domain_name)
            ).one_or_none()
            held = row is not None and row.id in set(connection.scalars(held_domains_clause()))
        # A primary known to be down is not asked (each try would wait for its timeout).
        if row is None or not row.primary_host or held:
            return "450 4.4.1 Recipient cannot be verified now: try again later"
        try:
            addresses = resolve_primary(row.primary_host, row.primary_port, 10.0)
            for ip in addresses:
                try:
                    check_primary_address(self.config, ip, row.primary_host)
                except PrimaryAddressRefused:
                    continue
                context = ssl.create_default_context(cafile=self.settings.ca_file)
                if not row.primary_tls_verify:
                    context.check_hostname = False
                    context.verify_mode = ssl.CERT_NONE
                result = self.callout.check(
                    address,
                    str(ip),
                    row.primary_port,
                    tls=row.primary_tls,
                    tls_context=context,
                    server_name=row.primary_host,
                )
                return result.reply(address)
        except PrimaryUnresolved:
            pass
        return "450 4.4.1 Recipient cannot be verified now: try again later"

    # -- start and stop ----------------------------------------------------------
    def start(self) -> None:
        """Start every part; the receiver last, once there is somewhere to store mail."""
        self.users.refresh()
        self.committer.start()
        if self.settings.users_file:
            self._thread("standby-users", self._keep_users_current)
        for index, runner in enumerate(self.runners):
            self._thread(f"runner-{index}", runner.run, self.idle)
        if self.copiers:
            self.recorder.start()
        for index, copier in enumerate(self.copiers):
            self._thread(f"copier-{index}", copier.run, self.idle)
        if self.monitor is not None:
            self._thread("monitor", self.monitor.run)
        if self.retention is not None:
            self._thread("retention", self.retention.run)
        if self.controller is not None:
            self.controller.start()
        log_event(
            log,
            logging.INFO,
            "gateway_started",
            listen=f"{self.settings.host}:{self.settings.port}" if self.controller else None,
            worker=self.worker,
            runners=len(self.runners),
            copiers=len(self.copiers),
        )

    def _thread(self, name: str, target: Any, *args: Any) -> None:
        thread = threading.Thread(target=target, args=args, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    def wake(self) -> None:
        """Have idle runners and copiers look at the queue now."""
        for event in self._wakes():
            event.set()

    def _keep_users_current(self) -> None:
        """Write the standby store's users file again every few seconds when the roster's
        covered people changed (a copy refused as unknown also writes it at once)."""
        while not self._stopping.wait(USERS_REFRESH_SECONDS):
            try:
                self.users.refresh()
            except Exception as error:  # the next round tries again
                log_event(log, logging.ERROR, "standby_users_failed", error=type(error).__name__)

    def _wakes(self) -> list[threading.Event]:
        return [*(r.wake for r in self.runners), *(c.wake for c in self.copiers)]

    def stop(self) -> None:
        """Stop receiving, let what is being stored land, then stop the workers."""
        if self.controller is not None:
            self.controller.stop()
        self.handler.close()
        self.committer.stop()
        self._stopping.set()
        for stopping in [*(r.stopping for r in self.runners), *(c.stopping for c in self.copiers)]:
            stopping.set()
        if self.monitor is not None:
            self.monitor.stopping.set()
        if self.retention is not None:
            self.retention.stopping.set()
        for event in self._wakes():
            event.set()
        deadline = time.monotonic() + 30
        for thread in self._threads:
            thread.join(max(0.1, deadline - time.monotonic()))
        self.recorder.stop(max(0.1, deadline - time.monotonic()))  # after the copiers
        if self.store is not None:
            self.store.close()
        log_event(log, logging.INFO, "gateway_stopped", worker=self.worker)
