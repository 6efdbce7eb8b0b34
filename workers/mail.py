"""`airlock mail`: read the mailbox, hand its files over, reply; until stopped."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

from config.settings import Settings
from pipelines.sources.mail.endpoints import Endpoint, parse_endpoint
from pipelines.sources.mail.imap import MailboxError, open_mailbox
from pipelines.sources.mail.intake import MailIntake, MailPolicy
from pipelines.sources.mail.message import MailLimits
from pipelines.uploads import Uploads
from workers.handover import handover_for
from workers.runtime import build_runtime

log = logging.getLogger("airlock.mail")

RECONNECT_SECONDS = (1, 2, 5, 10, 30, 60)


class MailSettingsError(ValueError):
    """A mail setting is missing or malformed."""


@dataclass(frozen=True)
class MailSetup:
    imap: Endpoint
    smtp: Endpoint
    policy: MailPolicy


def mail_setup(settings: Settings) -> MailSetup:
    if not settings.imap_url or not settings.smtp_url or not settings.mail_from:
        raise MailSettingsError("set AIRLOCK_IMAP_URL, AIRLOCK_SMTP_URL and AIRLOCK_MAIL_FROM")
    if settings.mail_require_auth and not settings.mail_authserv_id:
        raise MailSettingsError("AIRLOCK_MAIL_REQUIRE_AUTH needs AIRLOCK_MAIL_AUTHSERV_ID: the "
                                "receiving server's name in its Authentication-Results")
    try:
        imap = parse_endpoint(settings.imap_url, "imap")
        smtp = parse_endpoint(settings.smtp_url, "smtp")
    except ValueError as exc:
        raise MailSettingsError(str(exc)) from None
    limits = MailLimits(max_message_bytes=settings.mail_max_message_bytes,
                        max_attachments=settings.mail_max_attachments,
                        max_file_bytes=settings.max_file_bytes,
                        max_archive_bytes=min(settings.max_archive_bytes,
                                              settings.mail_max_message_bytes))
    policy = MailPolicy(limits=limits, mail_from=settings.mail_from,
                        require_auth=settings.mail_require_auth,
                        authserv_id=settings.mail_authserv_id,
                        answer_wait=max(settings.answer_wait_seconds, 1.0))
    return MailSetup(imap, smtp, policy)


def run_mail(settings: Settings, stop: threading.Event, *, once: bool = False) -> None:
    """Handle the folder's messages, then wait for more (IDLE, else polling); with
    `once`, a single pass. A lost connection is opened again with backoff."""
    setup = mail_setup(settings)
    runtime = build_runtime(settings)
    handover, end_handover = handover_for(runtime)
    archives, end_archives = handover_for(runtime)  # started on the first archive
    uploads = Uploads(runtime.engine, runtime.inbox, runtime.outbox, handover,
                      archive_handover=archives)
    uploads.start()
    intake = MailIntake(runtime.engine, uploads, setup.smtp, setup.policy)
    failures = 0
    try:
        while not stop.is_set():
            try:
                with open_mailbox(setup.imap) as box:
                    log.info("reading %s", setup.imap.label)
                    failures = 0
                    while not stop.is_set():
                        intake.run_once(box)
                        if once:
                            return
                        box.wait(settings.mail_poll_seconds)
            except (MailboxError, OSError) as exc:
                if once:
                    raise
                delay = RECONNECT_SECONDS[min(failures, len(RECONNECT_SECONDS) - 1)]
                failures += 1
                log.warning("mailbox %s: %s; connecting again in %d s", setup.imap.label,
                            exc, delay)
                stop.wait(delay)
    finally:
        uploads.close()
        end_handover()
        end_archives()
        runtime.close()
