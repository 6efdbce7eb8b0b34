"""SQLModel tables, split by domain. Importing this package registers every table."""

from models.access import ApiToken, IdempotentUpload, Operator, OperatorSession
from models.devices import Device, DeviceStatus
from models.ledger import (
    AppliedRequest,
    AuditEvent,
    Batch,
    BatchStatus,
    ConsumptionEvent,
    Job,
    JobEvaluation,
    JobOutput,
    JobStatus,
    LoginFailure,
    WorkerBeat,
)
from models.licensing import (
    AuthMethod,
    Customer,
    FeatureKind,
    License,
    LicenseFeature,
    LicensePolicy,
    LicenseType,
    LicenseUser,
    Product,
)
from models.mail import MailMessage, MailSender, MailStatus

__all__ = [
    "ApiToken",
    "IdempotentUpload",
    "AppliedRequest",
    "AuditEvent",
    "AuthMethod",
    "Batch",
    "ConsumptionEvent",
    "Customer",
    "Device",
    "DeviceStatus",
    "FeatureKind",
    "Job",
    "JobEvaluation",
    "JobOutput",
    "BatchStatus",
    "JobStatus",
    "License",
    "LicenseFeature",
    "LicensePolicy",
    "LicenseType",
    "LicenseUser",
    "LoginFailure",
    "MailMessage",
    "MailSender",
    "MailStatus",
    "Operator",
    "OperatorSession",
    "Product",
    "WorkerBeat",
]
