"""The rule of every file kind the vendor accepts, with the rows its files name.

Adding a kind is one entry here and one module beside the others.
"""

from __future__ import annotations

from airlock_sdk.envelope import Kind
from pipelines.rules.activation import ACTIVATION
from pipelines.rules.common import Rule
from pipelines.rules.deactivation import DEACTIVATION
from pipelines.rules.refresh import REFRESH

RULES: dict[Kind, Rule] = {
    Kind.ACTIVATION_REQUEST: ACTIVATION,
    Kind.DEACTIVATION: DEACTIVATION,
    Kind.REFRESH_REQUEST: REFRESH,
}
ACCEPTED_KINDS = frozenset(RULES)
