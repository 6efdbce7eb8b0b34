"""The Core `Table` of every model, typed, for set-based SQL (executemany, Core selects).

SQLModel exposes `__table__` untyped; naming each table once here keeps the
`type: ignore` in one place.
"""

from __future__ import annotations

from typing import cast

from sqlalchemy import Table

from models import (
    ApiToken,
    AppliedRequest,
    AuditEvent,
    Batch,
    ConsumptionEvent,
    Customer,
    Device,
    IdempotentUpload,
    Job,
    JobEvaluation,
    JobOutput,
    License,
    LicenseFeature,
    LicenseUser,
    LoginFailure,
    MailMessage,
    MailSender,
    Operator,
    OperatorSession,
    Product,
    WorkerBeat,
)


def _table(model: type) -> Table:
    return cast(Table, model.__table__)  # type: ignore[attr-defined]


APPLIED = _table(AppliedRequest)
API_TOKEN = _table(ApiToken)
IDEMPOTENT = _table(IdempotentUpload)
AUDIT = _table(AuditEvent)
BATCH = _table(Batch)
CUSTOMER = _table(Customer)
DEVICE = _table(Device)
EVALUATION = _table(JobEvaluation)
EVENT = _table(ConsumptionEvent)
FEATURE = _table(LicenseFeature)
JOB = _table(Job)
LICENSE = _table(License)
LOGIN_FAILURE = _table(LoginFailure)
MAIL_MESSAGE = _table(MailMessage)
MAIL_SENDER = _table(MailSender)
OPERATOR = _table(Operator)
OPERATOR_SESSION = _table(OperatorSession)
OUTPUT = _table(JobOutput)
PRODUCT = _table(Product)
USER = _table(LicenseUser)
WORKER_BEAT = _table(WorkerBeat)
