"""Whose file is it? For the public portal, where no channel names the customer.

The verified file names its license: an activation by its key (or its user), a
deactivation or a device's refresh request by the device key that signed it. The
customer that owns that license is the tenant the file is handled for, just as if it
had arrived in that customer's inbox; the pipeline then checks it in full.
"""

from __future__ import annotations

from sqlalchemy import Engine, select

from airlock_sdk.envelope import DEVICE_KID_PREFIX, FormatError, Kind, b64u, device_key_from_kid
from airlock_sdk.envelope import open_envelope as _open_envelope
from airlock_sdk.payloads import validate
from models import AuthMethod
from models.db import reading
from models.tables import CUSTOMER, DEVICE, LICENSE, PRODUCT, USER
from pipelines.errors import Rejection, RejectReason
from pipelines.passwords import check_password
from pipelines.process import Processor
from pipelines.rules import ACCEPTED_KINDS


def owner_of(engine: Engine, processor: Processor, data: bytes) -> str:
    """The customer code that owns the license `data` names; `Rejection` with a public
    reason when the file is not a device's verifiable request or names no license."""
    ring = processor.keyring
    try:
        envelope = _open_envelope(data, resolve_verify_key=ring.any_verify_key,
                                  resolve_unseal_key=ring.unseal_key, kinds=ACCEPTED_KINDS,
                                  max_bytes=processor.max_bytes)
        validate(envelope.kind, envelope.payload)
    except FormatError as exc:
        raise Rejection(exc.reason) from None
    if not envelope.kid.startswith(DEVICE_KID_PREFIX):
        raise Rejection(RejectReason.WRONG_KIND, "Only a device's own files can be uploaded here.")
    payload = envelope.payload
    with reading(engine) as conn:
        if envelope.kind is Kind.ACTIVATION_REQUEST and payload["auth"]["method"] == "key":
            owners = conn.execute(select(CUSTOMER.c.code)
                                  .join(LICENSE, LICENSE.c.customer_id == CUSTOMER.c.id)
                                  .where(LICENSE.c.key == payload["auth"]["key"])).scalars().all()
            reason = RejectReason.UNKNOWN_LICENSE
        elif envelope.kind is Kind.ACTIVATION_REQUEST:
            owners = conn.execute(
                select(CUSTOMER.c.code).distinct()
                .join(LICENSE, LICENSE.c.customer_id == CUSTOMER.c.id)
                .join(USER, USER.c.license_id == LICENSE.c.id)
                .join(PRODUCT, PRODUCT.c.id == LICENSE.c.product_id)
                .where(USER.c.email == payload["auth"]["email"].strip().lower(),
                       PRODUCT.c.code == payload["product"],
                       LICENSE.c.auth_method == AuthMethod.USER)).scalars().all()
            reason = RejectReason.BAD_CREDENTIALS
            if len(owners) != 1:  # cost what the pipeline's password check costs
                check_password(payload["auth"]["password"], None)
        else:
            device_key = b64u(bytes(device_key_from_kid(envelope.kid)))
            owners = conn.execute(
                select(CUSTOMER.c.code).distinct()
                .join(LICENSE, LICENSE.c.customer_id == CUSTOMER.c.id)
                .join(DEVICE, DEVICE.c.license_id == LICENSE.c.id)
                .where(DEVICE.c.public_key == device_key)).scalars().all()
            reason = RejectReason.UNKNOWN_DEVICE
    if len(owners) != 1:
        raise Rejection(reason)
    return str(owners[0])
