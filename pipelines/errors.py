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
    "unknown_license": "No license matches the key in the file.",
    "bad_credentials": "The user name or password is wrong, or the user is not assigned to a "
                       "license for this product.",
    "license_disabled": "The license is disabled.",
    "license_expired": "The license has expired.",
    "offline_not_allowed": "Offline activation is turned off for this license; activate it "
                           "online.",
    "subscription_offline": "Subscription licenses cannot be managed offline: their validity "
                            "is decided by an external subscription system.",
    "no_seats_left": "Every seat of the license is in use; deactivate another device first.",
    "unknown_device": "No device with this hardware id was activated on the license.",
    "device_not_active": "The device is not active on the license.",
    "wrong_device_key": "The file is not signed by the device key bound at activation.",
    "already_deactivated": "The device was already deactivated; the original receipt is "
                           "attached.",
    "usage_discontinuity": "The usage counter or hash chain does not continue from what the "
                           "device reported before.",
    "reset_not_allowed": "A device cannot reset its own consumption; ask the vendor.",
    "replay": "A different file with the same request id was already applied.",
    "poison": "The file failed processing repeatedly and was quarantined for inspection.",
    "unsupported_archive": "The archive type is not supported.",
    "unsafe_archive": "The archive has unsafe members (absolute paths, '..', links) and was "
                      "refused.",
    "archive_too_large": "The archive exceeds the member count, size or compression limits.",
}


class Rejection(Exception):
    """A permanent refusal: rendered into a signed rejection report, never retried."""

    def __init__(self, reason: str, message: str | None = None, *,
                 attachments: list[tuple[str, bytes]] | None = None) -> None:
        self.reason = reason
        self.message = message or REASONS.get(reason, reason)
        self.attachments = attachments or []
        super().__init__(f"{reason}: {self.message}")
