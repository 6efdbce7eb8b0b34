"""Reasons a file is refused: a stable code and a sentence a person understands."""

from __future__ import annotations

from enum import StrEnum


class RejectReason(StrEnum):
    """Why a file was refused: a stable code (its sentence is in MESSAGES)."""

    MALFORMED = "malformed"
    BAD_SIGNATURE = "bad_signature"
    UNKNOWN_KEY = "unknown_key"
    WRONG_KIND = "wrong_kind"
    UNSUPPORTED_VERSION = "unsupported_version"
    TOO_LARGE = "too_large"
    UNDECRYPTABLE = "undecryptable"
    OUT_OF_RANGE = "out_of_range"
    NOT_SEALED = "not_sealed"
    KEY_MISMATCH = "key_mismatch"
    NEEDS_TENANT = "needs_tenant"
    UNKNOWN_TENANT = "unknown_tenant"
    WRONG_TENANT = "wrong_tenant"
    UNKNOWN_PRODUCT = "unknown_product"
    WRONG_PRODUCT = "wrong_product"
    UNKNOWN_LICENSE = "unknown_license"
    BAD_CREDENTIALS = "bad_credentials"
    LOCKED_OUT = "locked_out"
    LICENSE_DISABLED = "license_disabled"
    LICENSE_EXPIRED = "license_expired"
    OFFLINE_NOT_ALLOWED = "offline_not_allowed"
    SUBSCRIPTION_OFFLINE = "subscription_offline"
    NO_SEATS_LEFT = "no_seats_left"
    UNKNOWN_DEVICE = "unknown_device"
    DEVICE_ALREADY_ACTIVE = "device_already_active"
    DEVICE_NOT_ACTIVE = "device_not_active"
    WRONG_DEVICE_KEY = "wrong_device_key"
    ALREADY_DEACTIVATED = "already_deactivated"
    USAGE_DISCONTINUITY = "usage_discontinuity"
    RESET_NOT_ALLOWED = "reset_not_allowed"
    REPLAY = "replay"
    EXPIRED_REQUEST = "expired_request"
    POISON = "poison"
    NOT_A_FILE = "not_a_file"
    UNREADABLE = "unreadable"
    BAD_NAME = "bad_name"
    UNSUPPORTED_ARCHIVE = "unsupported_archive"
    UNSAFE_ARCHIVE = "unsafe_archive"
    ARCHIVE_TOO_LARGE = "archive_too_large"


MESSAGES: dict[RejectReason, str] = {
    # format layer (airlock_sdk.envelope.Reason)
    RejectReason.MALFORMED: "The file is not a well-formed Airlock file.",
    RejectReason.BAD_SIGNATURE:
        "The signature does not match the content: the file was altered or forged.",
    RejectReason.UNKNOWN_KEY: "The file is signed or sealed with a key this vendor does not know.",
    RejectReason.WRONG_KIND: "This kind of file cannot be submitted here.",
    RejectReason.UNSUPPORTED_VERSION:
        "The file uses a format version this vendor does not support.",
    RejectReason.TOO_LARGE: "The file is larger than the accepted limit.",
    RejectReason.UNDECRYPTABLE: "The sealed content cannot be decrypted with the vendor's keys.",
    RejectReason.OUT_OF_RANGE: "A number in the file is outside the range the vendor accepts.",
    # routing and identity
    RejectReason.NOT_SEALED:
        "Device files must be sealed to the vendor key; this one is readable in transit and is "
        "refused.",
    RejectReason.KEY_MISMATCH:
        "The device key inside the request differs from the key that signed it.",
    RejectReason.NEEDS_TENANT:
        "Device files must arrive in a customer's inbox, not the operator area.",
    RejectReason.UNKNOWN_TENANT: "The file arrived in an inbox folder that belongs to no customer.",
    RejectReason.WRONG_TENANT:
        "The license belongs to another customer than the inbox this file arrived in.",
    # licensing rules
    RejectReason.UNKNOWN_PRODUCT: "The product named in the file does not exist.",
    RejectReason.WRONG_PRODUCT:
        "The license is for another product than the one named in the file.",
    RejectReason.UNKNOWN_LICENSE: "No license of this customer matches the key in the file.",
    RejectReason.BAD_CREDENTIALS:
        "The user name or password is wrong, the user is not assigned to a license for this "
        "product, or sign-in is locked after too many failed attempts.",
    RejectReason.LOCKED_OUT: "Too many failed password attempts: sign-in is locked for a while.",
    RejectReason.LICENSE_DISABLED: "The license is disabled.",
    RejectReason.LICENSE_EXPIRED: "The license has expired.",
    RejectReason.OFFLINE_NOT_ALLOWED:
        "Offline activation is turned off for this license; activate it online.",
    RejectReason.SUBSCRIPTION_OFFLINE:
        "Subscription licenses cannot be managed offline: their validity is decided by an external"
        " subscription system.",
    RejectReason.NO_SEATS_LEFT:
        "Every seat of the license is in use; deactivate another device first.",
    RejectReason.UNKNOWN_DEVICE:
        "No device with this hardware id is bound to the license with the key that signed this "
        "file.",
    RejectReason.DEVICE_ALREADY_ACTIVE:
        "This hardware id is active on the license with another device key; deactivate it first, "
        "or ask the vendor to release it.",
    RejectReason.DEVICE_NOT_ACTIVE: "The device is not active on the license.",
    RejectReason.WRONG_DEVICE_KEY: "The file is not signed by the device key bound at activation.",
    RejectReason.ALREADY_DEACTIVATED:
        "The device was already deactivated; the original receipt is attached.",
    RejectReason.USAGE_DISCONTINUITY:
        "The usage counter or hash chain does not continue from what the device reported before.",
    RejectReason.RESET_NOT_ALLOWED: "A device cannot reset its own consumption; ask the vendor.",
    RejectReason.REPLAY: "A file with the same request id was already applied.",
    RejectReason.EXPIRED_REQUEST: "The vendor request has expired; ask the vendor for a new one.",
    RejectReason.POISON:
        "The file failed processing repeatedly and was quarantined for inspection.",
    RejectReason.NOT_A_FILE:
        "The entry is not a regular file (a link, pipe, socket or device) and was quarantined "
        "unopened.",
    RejectReason.UNREADABLE: "The file could not be read and was quarantined for inspection.",
    RejectReason.BAD_NAME:
        "The file name is not valid UTF-8, holds control characters or is too long; rename the "
        "file and send it again.",
    RejectReason.UNSUPPORTED_ARCHIVE: "The archive type is not supported.",
    RejectReason.UNSAFE_ARCHIVE:
        "The archive has unsafe members (absolute paths, '..', links) and was refused.",
    RejectReason.ARCHIVE_TOO_LARGE:
        "The archive exceeds the member count, size or compression limits.",
}

# What the sender is told where the precise reason would teach them something about
# another tenant or a binding their key does not hold. The job keeps the precise one.
PUBLIC_REASONS: dict[RejectReason, RejectReason] = {
    RejectReason.WRONG_TENANT: RejectReason.UNKNOWN_LICENSE,
    RejectReason.WRONG_DEVICE_KEY: RejectReason.UNKNOWN_DEVICE,
    RejectReason.LOCKED_OUT: RejectReason.BAD_CREDENTIALS,
}

# Refusals that quarantine the file (for the vendor to look at) instead of rejecting it.
QUARANTINE_REASONS = frozenset({RejectReason.POISON, RejectReason.NOT_A_FILE,
                                RejectReason.UNREADABLE})

# Refusals whose cause the vendor can remove: the same file sent again is evaluated again.
FIXABLE_REASONS = frozenset({
    RejectReason.NO_SEATS_LEFT, RejectReason.LICENSE_DISABLED, RejectReason.LICENSE_EXPIRED,
    RejectReason.OFFLINE_NOT_ALLOWED, RejectReason.LOCKED_OUT, RejectReason.UNKNOWN_TENANT})


def public_reason(reason: str) -> RejectReason:
    precise = RejectReason(reason)
    return PUBLIC_REASONS.get(precise, precise)


def public_message(reason: str, message: str | None) -> str | None:
    """The precise message only when the precise reason is public."""
    public = public_reason(reason)
    return message if public == reason else MESSAGES[public]


class Rejection(Exception):
    """A refusal: rendered into a signed rejection report. Only a FIXABLE reason is
    evaluated again, and only when the file arrives again."""

    def __init__(self, reason: RejectReason | str, message: str | None = None, *,
                 attachments: list[tuple[str, bytes]] | None = None) -> None:
        self.reason = RejectReason(reason)  # a FormatError's code is one of them too
        self.message = message or MESSAGES[self.reason]
        self.attachments = attachments or []
        super().__init__(f"{reason}: {self.message}")

    @property
    def public_reason(self) -> RejectReason:
        return public_reason(self.reason)

    @property
    def public_message(self) -> str:
        return public_message(self.reason, self.message) or self.message
