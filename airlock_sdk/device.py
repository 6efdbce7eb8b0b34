"""The device side of offline licensing: one `Device` over a state folder.

The folder layout is in airlock_sdk.state; the file formats in docs/file-formats.md.
Every method takes `now=` (default: the system clock) so checks are reproducible.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from nacl.signing import SigningKey, VerifyKey

from airlock_sdk.bundle import PublicBundle
from airlock_sdk.envelope import (
    Envelope,
    FormatError,
    Kind,
    b64u,
    device_kid,
    open_envelope,
    seal,
)
from airlock_sdk.errors import DeviceError, DeviceReason
from airlock_sdk.license import Entitlements, State
from airlock_sdk.payloads import format_time, validate
from airlock_sdk.requests import (
    activation_payload,
    armoured_digest,
    deactivation_payload,
    refresh_request_payload,
)
from airlock_sdk.state import CLOCK_TOLERANCE, DeviceFolder, head_at, tip
from airlock_sdk.status import STATE_MESSAGES, Status, build_status
from airlock_sdk.store import locked, write_atomic
from airlock_sdk.usage import UsageRecord, make_record, summarise

_BLOCKING = {State.NOT_ACTIVATED: DeviceReason.NOT_ACTIVATED,
             State.DEACTIVATED: DeviceReason.DEACTIVATED,
             State.CLOCK_ROLLBACK: DeviceReason.CLOCK_ROLLBACK,
             State.DISABLED: DeviceReason.DISABLED, State.EXPIRED: DeviceReason.EXPIRED,
             State.NOT_STARTED: DeviceReason.NOT_STARTED}


def utc(now: datetime | None) -> datetime:
    """`now` as an aware UTC time to the second (naive times are taken as UTC)."""
    moment = datetime.now(UTC) if now is None else now
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).replace(microsecond=0)


class Device:
    """A device's licensing state: activation, offline checks, usage, deactivation."""

    def __init__(self, directory: Path | str, *,
                 clock_tolerance: timedelta = CLOCK_TOLERANCE) -> None:
        """Open an existing state folder (see `Device.init` to create one)."""
        self.directory = Path(directory)
        self.files = DeviceFolder(self.directory, clock_tolerance)
        self.hardware_id: str = self.files.read()["hardware_id"]
        self.bundle = self.files.read_bundle()
        self.usage_log = self.files.usage_log

    @classmethod
    def init(cls, directory: Path | str, hardware_id: str, bundle: PublicBundle, *,
             clock_tolerance: timedelta = CLOCK_TOLERANCE) -> Device:
        """Create the state folder for `hardware_id`, trusting the vendor keys in `bundle`."""
        if not isinstance(hardware_id, str) or not hardware_id.strip():
            raise DeviceError(DeviceReason.INVALID_ARGUMENT, "the hardware id cannot be empty")
        DeviceFolder.create(Path(directory), hardware_id, bundle)
        return cls(directory, clock_tolerance=clock_tolerance)

    @classmethod
    def open(cls, directory: Path | str, *,
             clock_tolerance: timedelta = CLOCK_TOLERANCE) -> Device:
        """Open an existing state folder (same as the constructor)."""
        return cls(directory, clock_tolerance=clock_tolerance)

    # --- identity -------------------------------------------------------------------------

    @property
    def signing_key(self) -> SigningKey | None:
        """The key bound at the current activation (or of the waiting request)."""
        state = self.files.read()
        entry = state["activation"] or state["pending"]
        return self.files.read_key(entry["request_id"]) if entry else None

    @property
    def verify_key(self) -> VerifyKey | None:
        key = self.signing_key
        return key.verify_key if key else None

    @property
    def kid(self) -> str | None:
        """The key id this device signs with: "dev:" + its public key."""
        key = self.verify_key
        return device_kid(key) if key else None

    @property
    def entitlements(self) -> Entitlements | None:
        """The installed license or refresh file (None before activation)."""
        activation = self.files.read()["activation"]
        return _entitlements(activation) if activation else None

    # --- activation -----------------------------------------------------------------------

    def request_activation(
        self, *, product: str, license_key: str | None = None, email: str | None = None,
        password: str | None = None, hostname: str | None = None, os_name: str | None = None,
        app_version: str | None = None, variables: Mapping[str, Any] | None = None,
        deactivation_delivered: bool = False, now: datetime | None = None,
    ) -> bytes:
        """A sealed activation request. Returns the file.

        The request is signed by a new device key, except where the vendor may hold a
        binding for this device already: asking again while a request waits reuses its
        key, and re-activating the same license after a deactivation reuses that
        activation's key and reports the usage since the last sync, exactly as the
        deactivation file does. Whether or not that file reached the vendor, every unit
        is billed once. Activating another license while a deactivation may still be
        undelivered is refused unless `deactivation_delivered` says it was delivered.
        """
        moment = utc(now)
        if (license_key is None) == (email is None) or (email is not None and password is None):
            raise DeviceError(DeviceReason.INVALID_ARGUMENT,
                              "give either a license key or a user email and password")
        auth: dict[str, str] = (
            {"method": "key", "key": license_key} if license_key is not None
            else {"method": "user", "email": str(email), "password": str(password)})
        with locked(self.directory):
            state = self.files.read()
            if state["activation"] and not state["deactivation"]:
                raise DeviceError(DeviceReason.ALREADY_ACTIVATED,
                                  "this device is activated: deactivate it first")
            self.files.observe(state, moment, strict=True)
            counter, head = self.files.sync_usage(state)
            key, synced = self._continuing(state, product, auth, deactivation_delivered)
            license_units, feature_units = (0, {}) if synced is None else summarise(
                self.files.full_log(state), after=synced["counter"])
            merged = {**state["variables"], **dict(variables or {})}
            payload = activation_payload(
                request_id=uuid.uuid4().hex, created_at=format_time(moment), product=product,
                auth=auth, hardware_id=self.hardware_id, public_key=b64u(bytes(key.verify_key)),
                hostname=hostname, os_name=os_name, app_version=app_version, variables=merged,
                synced=synced or {"counter": counter, "head": head}, counter=counter,
                head=head, consumptions=license_units, features=feature_units)
            _self_check(Kind.ACTIVATION_REQUEST, payload)
            data = self._seal(Kind.ACTIVATION_REQUEST, payload, key)
            self.files.write_key(payload["request_id"], key)
            old = state["pending"]
            # Earlier requests made with the same key: the vendor may answer any of them.
            earlier = [] if old is None or old["public_key"] != payload["device_public_key"] \
                else [*old.get("earlier", []), [old["request_id"], old["request_sha256"]]]
            state["pending"] = {
                "request_id": payload["request_id"], "request_sha256": armoured_digest(data),
                "created_at": payload["created_at"], "product": product,
                "public_key": payload["device_public_key"],
                "usage": {"counter": counter, "head": head}, "earlier": earlier}
            state["variables"] = merged
            self.files.write(state)
            if old:
                self.files.drop_key(old["request_id"])
        return data

    def _continuing(self, state: dict[str, Any], product: str, auth: Mapping[str, Any],
                    deactivation_delivered: bool) -> tuple[SigningKey, dict[str, Any] | None]:
        """(signing key, the tip the usage report starts at, or None: no usage to report)."""
        pending, activation = state["pending"], state["activation"]
        if state["deactivation"] and activation is not None:
            if _same_license(activation, product, auth):
                return self.files.read_key(activation["request_id"]), activation["synced"]
            if not deactivation_delivered:
                raise DeviceError(DeviceReason.DEACTIVATION_PENDING,
                                  "this device's deactivation file may not have reached the "
                                  "vendor: deliver it first (it bills the usage and frees "
                                  "the seat), then activate the other license")
        if pending is not None:
            return self.files.read_key(pending["request_id"]), None
        return SigningKey.generate(), None

    def load(self, data: bytes, *, now: datetime | None = None) -> Entitlements:
        """Verify and install a license file (answering the waiting request) or a refresh.

        A rejection report from the vendor is raised as DeviceError(rejected). Loading
        the file that is already installed again changes nothing.
        """
        moment = utc(now)
        env = self._open_vendor_file(data)
        try:
            ent = Entitlements.parse(env.kind, env.payload)
        except FormatError as exc:
            raise DeviceError.from_format(exc) from None
        with locked(self.directory):
            state = self.files.read()
            current = state["activation"]
            if current and current["digest"] == env.digest:
                return _entitlements(current)
            self.files.observe(state, moment, strict=True)
            if ent.issued_at > moment + self.files.clock_tolerance:
                raise DeviceError(DeviceReason.CLOCK_ROLLBACK,
                                  f"the file was issued at {env.payload['issued_at']}, later "
                                  f"than this device's clock ({format_time(moment)}): set "
                                  "the clock right")
            device = ent.payload["device"]
            if device["hardware_id"] != self.hardware_id:
                raise DeviceError(DeviceReason.WRONG_DEVICE,
                                  f"the file is for hardware id {device['hardware_id']!r}, "
                                  f"not {self.hardware_id!r}")
            if env.kind is Kind.LICENSE:
                self._install_license(state, ent, env.digest)
            else:
                self._install_refresh(state, ent, env.digest)
            self.files.observe(state, ent.issued_at, strict=False)
            self.files.write(state)
        return ent

    def _install_license(self, state: dict[str, Any], ent: Entitlements, digest: str) -> None:
        pending = state["pending"]
        if pending is None:
            raise DeviceError(DeviceReason.NOT_FOR_THIS_REQUEST,
                              "no activation request of this device is waiting for a license")
        _check_product(ent, pending["product"])
        answered = [ent.payload["request_id"], ent.payload["request_sha256"]]
        if answered != [pending["request_id"], pending["request_sha256"]] \
                and answered not in pending.get("earlier", []):
            raise DeviceError(DeviceReason.NOT_FOR_THIS_REQUEST,
                              "the license answers another activation request "
                              f"({ent.payload['request_id']}), not {pending['request_id']}")
        _check_key(ent, pending["public_key"])
        old = state["activation"]
        synced = pending["usage"]
        state["activation"] = {
            "request_id": pending["request_id"], "product": pending["product"],
            "public_key": pending["public_key"], "synced": synced,
            "period": {"start": synced["counter"], "license": 0, "features": {}},
            **_installed(ent, digest)}
        state.update(pending=None, deactivation=None, refresh_request=None)
        self.files.deactivation_path.unlink(missing_ok=True)
        if old:
            self.files.drop_key(old["request_id"])

    def _install_refresh(self, state: dict[str, Any], ent: Entitlements, digest: str) -> None:
        activation = state["activation"]
        if activation is None:
            raise DeviceError(DeviceReason.NOT_ACTIVATED,
                              "a refresh file needs an activated device")
        if state["deactivation"]:
            raise DeviceError(DeviceReason.DEACTIVATED, "this device has been deactivated")
        _check_product(ent, activation["product"])
        _check_key(ent, activation["public_key"])
        if ent.license_key != activation["license"]["license"]["key"]:
            raise DeviceError(DeviceReason.WRONG_LICENSE,
                              "the refresh is for another license than the one activated")
        if ent.serial <= activation["serial"]:
            raise DeviceError(DeviceReason.STALE_SERIAL,
                              f"the file has serial {ent.serial}; this device already loaded "
                              f"serial {activation['serial']}")
        activation.update(_installed(ent, digest))
        if ent.reset_consumption:
            counter, _ = self.files.sync_usage(state)
            activation["period"] = {"start": counter, "license": 0, "features": {}}

    # --- offline checks -------------------------------------------------------------------

    def status(self, *, now: datetime | None = None) -> Status:
        """What the device may do now, with limits, usage and pending requests."""
        moment = utc(now)
        with locked(self.directory):
            state = self.files.read()
            rollback = self.files.observe(state, moment, strict=False)
            self.files.sync_usage(state)
            self.files.write(state)
        return build_status(state, self.hardware_id, moment, rollback=rollback, kid=self.kid)

    def feature_enabled(self, code: str, *, now: datetime | None = None) -> bool:
        """True if the license is valid now and lists `code`, not expired."""
        status = self.status(now=now)
        return status.state is State.VALID and any(
            f["code"] == code and f["enabled"] for f in status.features)

    def consumption_left(self, feature: str | None = None, *,
                         now: datetime | None = None) -> int | None:
        """Units that may still be consumed (overage allowance included); None = no limit.

        0 when the license is not valid now.
        """
        status = self.status(now=now)
        if feature is None:
            entry = status.consumption
        else:
            entry = next((f for f in status.features if f["code"] == feature), None)
            if entry is None:
                raise DeviceError(DeviceReason.UNKNOWN_FEATURE,
                                  f"the license has no feature {feature!r}")
        if status.state is not State.VALID or entry is None:
            return 0
        return entry["left"]  # type: ignore[no-any-return]

    # --- usage ----------------------------------------------------------------------------

    def consume(self, amount: int = 1, *, feature: str | None = None,
                now: datetime | None = None) -> UsageRecord:
        """Record `amount` units of the license or of a consumption feature.

        Refused (nothing recorded) beyond the limit plus allowed overages, or when
        the license is not valid now.
        """
        moment = utc(now)
        if isinstance(amount, bool) or not isinstance(amount, int) or amount <= 0:
            raise DeviceError(DeviceReason.INVALID_ARGUMENT,
                              "the amount must be a positive whole number")
        with locked(self.directory):
            state = self.files.read()
            counter, head = self.files.sync_usage(state)
            activation = self._usable(state, moment)
            ent = _entitlements(activation)
            period = activation["period"]
            if feature is None:
                limit, used, what = ent.limit, period["license"], "the license"
            else:
                item = ent.features.get(feature)
                if item is None:
                    raise DeviceError(DeviceReason.UNKNOWN_FEATURE,
                                      f"the license has no feature {feature!r}")
                if item.kind != "consumption":
                    raise DeviceError(DeviceReason.NOT_CONSUMABLE,
                                      f"feature {feature!r} is not a consumption feature")
                if not item.active(moment):
                    raise DeviceError(DeviceReason.FEATURE_EXPIRED,
                                      f"feature {feature!r} has expired")
                limit, used = item.limit, period["features"].get(feature, 0)
                what = f"feature {feature!r}"
            left = limit.left(used)
            if left is not None and amount > left:
                overages = "allowed" if limit.allow_overages else "not allowed"
                raise DeviceError(DeviceReason.CONSUMPTION_LIMIT,
                                  f"{what} has {left} unit(s) left (limit {limit.max}, "
                                  f"overages {overages}); {amount} requested")
            record = make_record(counter, head, amount=amount, feature=feature,
                                 at=format_time(moment))
            self.files.append_usage(state, record)
            self.files.write(state)
        return record

    def verify_usage(self) -> tuple[int, str]:
        """Re-read the whole usage log, check its chain, return (counter, head)."""
        with locked(self.directory):
            return tip(self.files.full_log(self.files.read()))

    # --- deactivation and refresh -----------------------------------------------------------

    def deactivate(self, *, variables: Mapping[str, Any] | None = None,
                   now: datetime | None = None) -> bytes:
        """A sealed deactivation file reporting usage since the last sync.

        The device is deactivated locally at once. Calling again returns the same
        file (same request id), so it can be exported again.
        """
        moment = utc(now)
        with locked(self.directory):
            state = self.files.read()
            if state["deactivation"]:
                return self.files.deactivation_path.read_bytes()
            activation = state["activation"]
            if activation is None:
                raise DeviceError(DeviceReason.NOT_ACTIVATED, "this device is not activated")
            self.files.observe(state, moment, strict=False)
            self.files.sync_usage(state)
            records = self.files.full_log(state)
            synced = activation["synced"]
            counter, head = tip(records)
            if head_at(records, synced["counter"]) != synced["head"] \
                    or counter != state["usage"]["counter"]:
                raise DeviceError(DeviceReason.USAGE_LOG_CORRUPT,
                                  "the usage log does not match what this device reported")
            license_units, feature_units = summarise(records, after=synced["counter"])
            merged = {**state["variables"], **dict(variables or {})}
            payload = deactivation_payload(
                request_id=uuid.uuid4().hex, created_at=format_time(moment),
                product=activation["product"],
                license_key=activation["license"]["license"]["key"],
                hardware_id=self.hardware_id, serial=activation["serial"], synced=synced,
                counter=counter, head=head, consumptions=license_units,
                features=feature_units, variables=merged)
            _self_check(Kind.DEACTIVATION, payload)
            data = self._seal(Kind.DEACTIVATION, payload,
                              self.files.read_key(activation["request_id"]))
            write_atomic(self.files.deactivation_path, data, mode=0o644)
            state["variables"] = merged
            state["deactivation"] = {"request_id": payload["request_id"],
                                     "created_at": payload["created_at"]}
            self.files.write(state)
        return data

    def deactivation_file(self) -> bytes | None:
        """The deactivation file created earlier, or None."""
        if not self.files.read()["deactivation"]:
            return None
        return self.files.deactivation_path.read_bytes()

    def request_refresh(self, *, now: datetime | None = None) -> bytes:
        """A sealed request for the current entitlements of this device."""
        moment = utc(now)
        with locked(self.directory):
            state = self.files.read()
            activation = state["activation"]
            if activation is None:
                raise DeviceError(DeviceReason.NOT_ACTIVATED, "this device is not activated")
            if state["deactivation"]:
                raise DeviceError(DeviceReason.DEACTIVATED, "this device has been deactivated")
            self.files.observe(state, moment, strict=False)
            payload = refresh_request_payload(
                request_id=uuid.uuid4().hex, created_at=format_time(moment),
                license_key=activation["license"]["license"]["key"],
                hardware_id=self.hardware_id)
            _self_check(Kind.REFRESH_REQUEST, payload)
            data = self._seal(Kind.REFRESH_REQUEST, payload,
                              self.files.read_key(activation["request_id"]))
            state["refresh_request"] = {"request_id": payload["request_id"],
                                        "created_at": payload["created_at"]}
            self.files.write(state)
        return data

    # --- internals ------------------------------------------------------------------------

    def _seal(self, kind: Kind, payload: dict[str, Any], key: SigningKey) -> bytes:
        return seal(kind, payload, signing_key=key, kid=device_kid(key.verify_key),
                    recipient=self.bundle.sealing_key, recipient_kid=self.bundle.sealing_kid)

    def _open_vendor_file(self, data: bytes) -> Envelope:
        try:
            env = open_envelope(data, resolve_verify_key=self.bundle.verify_key,
                                kinds={Kind.LICENSE, Kind.REFRESH, Kind.REJECTION})
            if env.kind is Kind.REJECTION:
                validate(Kind.REJECTION, env.payload)
        except FormatError as exc:
            raise DeviceError.from_format(exc) from None
        if env.kind is Kind.REJECTION:
            raise DeviceError(DeviceReason.REJECTED,
                              f"the vendor rejected request {env.payload['request_id']}: "
                              f"[{env.payload['reason']}] {env.payload['message']}")
        return env

    def _usable(self, state: dict[str, Any], moment: datetime) -> dict[str, Any]:
        """The activation, if the license may be used at `moment` (clock checked too)."""
        activation = state["activation"]
        if activation is None:
            current = State.NOT_ACTIVATED
        elif state["deactivation"]:
            current = State.DEACTIVATED
        else:
            self.files.observe(state, moment, strict=True)
            current = _entitlements(activation).state(moment)
        if current is not State.VALID:
            raise DeviceError(_BLOCKING[current], STATE_MESSAGES[current])
        return activation  # type: ignore[no-any-return]


def _same_license(activation: Mapping[str, Any], product: str, auth: Mapping[str, Any]) -> bool:
    """Does an activation with `auth` ask for the license `activation` holds?"""
    lic = activation["license"]["license"]
    if activation["product"] != product:
        return False
    if auth["method"] == "key":
        return bool(lic["key"] == auth["key"])
    return lic["user"] is not None and str(lic["user"]).lower() == str(auth["email"]).lower()


def _entitlements(activation: Mapping[str, Any]) -> Entitlements:
    return Entitlements(kind=Kind(activation["kind"]), payload=activation["license"])


def _installed(ent: Entitlements, digest: str) -> dict[str, Any]:
    return {"license": dict(ent.payload), "kind": str(ent.kind), "serial": ent.serial,
            "digest": digest, "issued_at": ent.payload["issued_at"]}


def _check_product(ent: Entitlements, product: str) -> None:
    if ent.product != product:
        raise DeviceError(DeviceReason.WRONG_PRODUCT,
                          f"the file is for product {ent.product!r}, not {product!r}")


def _check_key(ent: Entitlements, public_key: str) -> None:
    if ent.payload["device"]["public_key"] != public_key:
        raise DeviceError(DeviceReason.WRONG_DEVICE,
                          "the file is bound to another device key than this device's")


def _self_check(kind: Kind, payload: Mapping[str, Any]) -> None:
    """Refuse to write a file the vendor would reject as malformed."""
    try:
        validate(kind, payload)
    except FormatError as exc:
        raise DeviceError(DeviceReason.INVALID_ARGUMENT, exc.message) from None
