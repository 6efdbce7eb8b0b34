"""Reasons a file is refused: a stable code and a sentence a person understands."""

from __future__ import annotations

REASONS: dict[str, str] = {
    # format layer (airlock_sdk.envelope.Reason)
    "malformed": "The file is not a well-formed Airlock file.",
    "bad_signature": "The signature does not match the content: the file was altered or forged.",
    "unknown_key": "The file is signed or sealed with a key this vendor does not know.",
    "wrong_kind": "This kind of file cannot be submitted here.",
    "unsupported_version": "The file uses a format version this vendor does not support.",
    "too_large": "The file is larger than the accepted limit.",
    "undecryptable": "The sealed content cannot be decrypted with the vendor's keys.",
    "out_of_range": "A number in the file is outside the range the vendor accepts.",
    # routing and identity
    "not_sealed": "Device files must be sealed to the vendor key; this one is readable in "
                  "transit and is refused.",
    "key_mismatch": "The device key inside the request differs from the key that signed it.",
    "operator_only": "Only vendor-signed files are accepted in the operator area.",
    "needs_tenant": "Device files must arrive in a customer's inbox, not the operator area.",
    "unknown_tenant": "The file arrived in an inbox folder that belongs to no customer.",
    "wrong_tenant": "The license belongs to another customer than the inbox this file "
                    "arrived in.",
    # licensing rules
    "unknown_product": "The product named in the file does not exist.",
    "wrong_product": "The license is for another product than the one named in the file.",
    "unknown_license": "No license of this customer matches the key in the file.",
    "bad_credentials": "The user name or password is wrong, the user is not assigned to a "
                       "license for this product, or sign-in is locked after too many failed "
                       "attempts.",
    "locked_out": "Too many failed password attempts: sign-in is locked for a while.",
    "license_disabled": "The license is disabled.",
    "license_expired": "The license has expired.",
    "offline_not_allowed": "Offline activation is turned off for this license; activate it "
                           "online.",
    "subscription_offline": "Subscription licenses cannot be managed offline: their validity "
                            "is decided by an external subscription system.",
    "no_seats_left": "Every seat of the license is in use; deactivate another device first.",
    "unknown_device": "No device with this hardware id is bound to the license with the key "
                      "that signed this file.",
    "device_already_active": "This hardware id is active on the license with another device "
                             "key; deactivate it first, or ask the vendor to release it.",
    "device_not_active": "The device is not active on the license.",
    "wrong_device_key": "The file is not signed by the device key bound at activation.",
    "already_deactivated": "The device was already deactivated; the original receipt is "
                           "attached.",
    "usage_discontinuity": "The usage counter or hash chain does not continue from what the "
                           "device reported before.",
    "reset_not_allowed": "A device cannot reset its own consumption; ask the vendor.",
    "replay": "A file with the same request id was already applied.",
    "expired_request": "The vendor request has expired; ask the vendor for a new one.",
    "poison": "The file failed processing repeatedly and was quarantined for inspection.",
    "unsupported_archive": "The archive type is not supported.",
    "unsafe_archive": "The archive has unsafe members (absolute paths, '..', links) and was "
                      "refused.",
    "archive_too_large": "The archive exceeds the member count, size or compression limits.",
}

# What the sender is told where the precise reason would teach them something about
# another tenant or a binding their key does not hold. The job keeps the precise one.
PUBLIC_REASONS: dict[str, str] = {
    "wrong_tenant": "unknown_license",
    "wrong_device_key": "unknown_device",
    "locked_out": "bad_credentials",
}

# Refusals whose cause the vendor can remove: the same file sent again is evaluated again.
FIXABLE_REASONS = frozenset({"no_seats_left", "license_disabled", "license_expired",
                             "offline_not_allowed", "locked_out", "unknown_tenant"})


def public_reason(reason: str) -> str:
    return PUBLIC_REASONS.get(reason, reason)


def public_message(reason: str, message: str | None) -> str | None:
    """The precise message only when the precise reason is public."""
    public = public_reason(reason)
    return message if public == reason else REASONS[public]


class Rejection(Exception):
    """A refusal: rendered into a signed rejection report. Only a FIXABLE reason is
    evaluated again, and only when the file arrives again."""

    def __init__(self, reason: str, message: str | None = None, *,
                 attachments: list[tuple[str, bytes]] | None = None) -> None:
        self.reason = reason
        self.message = message or REASONS.get(reason, reason)
        self.attachments = attachments or []
        super().__init__(f"{reason}: {self.message}")

    @property
    def public_reason(self) -> str:
        return public_reason(self.reason)

    @property
    def public_message(self) -> str:
        return public_message(self.reason, self.message) or self.message
