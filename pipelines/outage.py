"""Riding out a dependency that went away: when to try again, and what to log.

A hand-over that fails because the database, the broker or the storage cannot be
reached is not the file's fault: it is tried again, with exponential backoff and
jitter (`Backoff`, scheduled per item by `Retries`), until it succeeds. `Outage` keeps
the log readable while that lasts: one line when a dependency goes away, one when it
is back, never a traceback per attempt. Any other error is the file's (or a bug): its
traceback is logged on the first failure only, and the core counts its attempts and
quarantines it once they run out.
"""

from __future__ import annotations

import enum
import heapq
import logging
import random
import time
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass
from typing import Generic, TypeVar

from sqlalchemy import exc as sa_exc

from pipelines.storage.base import TransientStorageError

K = TypeVar("K", bound=Hashable)


class Dependency(enum.StrEnum):
    DATABASE = "database"
    BROKER = "broker"
    STORAGE = "storage"


class Unreachable(Exception):
    """`dependency` could not be reached; raised by callers that know which one it is
    (the database and storage errors are recognised by `dependency_of` as they are)."""

    def __init__(self, dependency: Dependency, cause: BaseException) -> None:
        super().__init__(f"{type(cause).__name__}: {first_line(cause)}")
        self.dependency = dependency


def dependency_of(error: BaseException) -> Dependency | None:
    """Which dependency `error` says is unreachable; None for any other error."""
    if isinstance(error, Unreachable):
        return error.dependency
    if isinstance(error, sa_exc.OperationalError | sa_exc.InterfaceError
                  | sa_exc.DisconnectionError | sa_exc.TimeoutError):
        return Dependency.DATABASE
    if isinstance(error, TransientStorageError):
        return Dependency.STORAGE
    return None


def first_line(error: BaseException) -> str:
    """The error's message on one line (SQLAlchemy appends the SQL and a link)."""
    text = str(getattr(error, "orig", None) or error).strip()
    return text.splitlines()[0] if text else type(error).__name__


@dataclass(frozen=True, slots=True)
class Backoff:
    """Exponential backoff with jitter: the n-th retry waits between half and all of
    ``min(cap, first * factor ** (n - 1))`` seconds, so retries of many items spread."""

    first: float = 1.0
    cap: float = 30.0
    factor: float = 2.0

    def delay(self, failures: int, rng: Callable[[], float] = random.random) -> float:
        base = min(self.cap, self.first * self.factor ** max(0, failures - 1))
        return base * (0.5 + 0.5 * rng())


class Retries(Generic[K]):
    """When each item whose hand-over failed is due to be tried again."""

    def __init__(self, backoff: Backoff | None = None, *,
                 clock: Callable[[], float] = time.monotonic,
                 rng: Callable[[], float] = random.random) -> None:
        self.backoff = backoff or Backoff()
        self._clock = clock
        self._rng = rng
        self._failures: dict[K, int] = {}
        self._due: dict[K, float] = {}

    def failed(self, key: K) -> int:
        """Schedule `key` again; how many times in a row it has failed now."""
        failures = self._failures.get(key, 0) + 1
        self._failures[key] = failures
        self._due[key] = self._clock() + self.backoff.delay(failures, self._rng)
        return failures

    def forget(self, key: K) -> None:
        """`key` succeeded, or is gone: nothing to retry."""
        self._failures.pop(key, None)
        self._due.pop(key, None)

    def keep_only(self, present: Iterable[K]) -> None:
        """Forget the items not in `present` (taken or archived by someone else)."""
        keep = set(present)
        for key in [k for k in self._due if k not in keep]:
            self.forget(key)

    def hurry(self) -> None:
        """Make every item due now (what they waited for is back)."""
        now = self._clock()
        for key in self._due:
            self._due[key] = min(self._due[key], now)

    def is_waiting(self, key: K) -> bool:
        """True while `key` failed and its next try is not due yet."""
        return self._due.get(key, float("-inf")) > self._clock()

    def due(self, limit: int | None = None) -> list[K]:
        """The items due for another try now, the longest overdue first."""
        now = self._clock()
        ready = ((at, key) for key, at in self._due.items() if at <= now)
        chosen = heapq.nsmallest(limit, ready) if limit is not None else sorted(ready)
        return [key for _at, key in chosen]

    def next_due(self) -> float:
        """Clock time of the next try (infinity when nothing waits)."""
        return min(self._due.values(), default=float("inf"))

    def __contains__(self, key: object) -> bool:
        return key in self._due

    def __len__(self) -> int:
        return len(self._due)


class Outage:
    """Logs one line when a dependency goes away and one when it is back."""

    def __init__(self, log: logging.Logger, *, clock: Callable[[], float] = time.monotonic
                 ) -> None:
        self._log = log
        self._clock = clock
        self._down: dict[Dependency, float] = {}

    @property
    def down(self) -> bool:
        """True while some dependency is known to be unreachable."""
        return bool(self._down)

    def failed(self, error: BaseException, what: str, *, first: bool = True) -> Dependency | None:
        """Log that handing over `what` failed with `error`; the dependency it names.

        A dependency already known to be down logs nothing more; an error that names
        none logs its traceback on the `first` failure of `what` and one line after.
        """
        dependency = dependency_of(error)
        if dependency is not None:
            if dependency not in self._down:
                self._down[dependency] = self._clock()
                self._log.warning("%s unreachable: %s; retrying", dependency,
                                  first_line(error))
            else:
                self._log.debug("%s still unreachable (%s): %s", dependency, what,
                                first_line(error))
        elif first:
            self._log.error("handing over %s failed; retrying", what, exc_info=error)
        else:
            self._log.warning("handing over %s failed again (%s: %s); retrying", what,
                              type(error).__name__, first_line(error))
        return dependency

    def recovered(self, *dependencies: Dependency) -> bool:
        """A step that needs `dependencies` (all of them if none are named) succeeded;
        True if one of them was down until now."""
        now = self._clock()
        back = False
        for dependency in dependencies or tuple(self._down):
            since = self._down.pop(dependency, None)
            if since is not None:
                back = True
                self._log.warning("%s reachable again after %.0f s", dependency, now - since)
        return back
