"""The one error type of the device SDK, and its reason codes."""

from __future__ import annotations

from enum import StrEnum

from airlock_sdk.envelope import FormatError


class DeviceReason(StrEnum):
    """Reason codes raised by the device SDK (FormatError reasons pass through as-is)."""

    NOT_INITIALISED = "not_initialised"
    ALREADY_INITIALISED = "already_initialised"
    STATE_CORRUPT = "state_corrupt"
    USAGE_LOG_CORRUPT = "usage_log_corrupt"
    NOT_ACTIVATED = "not_activated"
    ALREADY_ACTIVATED = "already_activated"
    DEACTIVATION_PENDING = "deactivation_pending"
    DEACTIVATED = "deactivated"
    WRONG_DEVICE = "wrong_device"
    WRONG_PRODUCT = "wrong_product"
    WRONG_LICENSE = "wrong_license"
    NOT_FOR_THIS_REQUEST = "not_for_this_request"
    STALE_SERIAL = "stale_serial"
    CLOCK_ROLLBACK = "clock_rollback"
    REJECTED = "rejected"
    EXPIRED = "expired"
    DISABLED = "disabled"
    NOT_STARTED = "not_started"
    UNKNOWN_FEATURE = "unknown_feature"
    FEATURE_EXPIRED = "feature_expired"
    NOT_CONSUMABLE = "not_consumable"
    CONSUMPTION_LIMIT = "consumption_limit"
    INVALID_ARGUMENT = "invalid_argument"


class DeviceError(Exception):
    """Every refusal of the device SDK: a reason code and a readable sentence."""

    def __init__(self, reason: DeviceReason | str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = str(reason)
        self.message = message

    @classmethod
    def from_format(cls, error: FormatError) -> DeviceError:
        """Wrap a FormatError, keeping its reason code (malformed, bad_signature, ...)."""
        return cls(error.reason, error.message)
