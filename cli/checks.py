"""Start-up checks: what a command needs is there before it starts work.

Each check raises `NotReady` with one line a person can act on (never a traceback),
and never prints a password: every URL in a message goes through `redact`. Network
checks give up after `CONNECT_TIMEOUT` seconds, so a closed port fails at once and a
silent host fails fast.
"""

from __future__ import annotations

import os
import stat
from dataclasses import replace
from enum import StrEnum
from pathlib import Path
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

from config.broker import BrokerKind, broker_kind
from config.settings import Settings

CONNECT_TIMEOUT = 3.0
VERSION_TABLE = "alembic_version"  # where Alembic records the revision
_SECRET_PARAMS = {"password", "passwd", "secret", "token"}
_HOW_TO_MIGRATE = "run 'airlock db upgrade' (or 'airlock init')"


class Unready(StrEnum):
    """What is missing; printed as the error's reason code."""

    DATABASE = "database"  # unreachable, or not a database
    SCHEMA = "schema"  # reachable, but not migrated to this version's head
    BROKER = "broker"
    KEYS = "no_keys"  # the vendor keyring ('airlock init' makes it)
    STORE = "store"  # an inbox, outbox or bucket
    INPUT = "input"  # a file given on the command line


class NotReady(Exception):
    """A dependency of the command is missing; `message` is one line, secrets redacted."""

    def __init__(self, reason: Unready, message: str) -> None:
        self.reason = reason
        self.message = " ".join(message.split())  # one line, whatever a driver said
        super().__init__(self.message)


def redact(url: str) -> str:
    """`url` with its password (in the user info or a query parameter) as ``***``."""
    parts = urlsplit(url)
    userinfo, at, hostport = parts.netloc.rpartition("@")
    netloc = parts.netloc
    if at and ":" in userinfo:
        netloc = f"{userinfo.split(':', 1)[0]}:***@{hostport}"
    query = parts.query
    if any(k.lower() in _SECRET_PARAMS for k, _ in parse_qsl(query)):
        pairs = parse_qsl(query, keep_blank_values=True)
        query = urlencode([(k, "***" if k.lower() in _SECRET_PARAMS else v) for k, v in pairs],
                          safe="*")
    if (netloc, query) == (parts.netloc, parts.query):
        return url  # urlunsplit would rewrite an empty host (sqlite:///x to sqlite:/x)
    return urlunsplit(parts._replace(netloc=netloc, query=query))


def _scrubbed(text: str, url: str) -> str:
    """A driver's message with any literal secret of `url` removed (belt and braces)."""
    parts = urlsplit(url)
    secrets = [parts.password] if parts.password else []
    secrets += [v for k, v in parse_qsl(parts.query) if k.lower() in _SECRET_PARAMS]
    for secret in filter(None, secrets):
        text = text.replace(secret, "***").replace(unquote(secret), "***")
    return text


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0].strip()


def check_pipeline(settings: Settings, *, broker: bool, inbox_must_exist: bool) -> None:
    """What a pipeline process needs: the inbox and outbox, a current database, the
    vendor keys and, with `broker`, the broker."""
    check_store(settings.resolved_inbox, settings, what="inbox", must_exist=inbox_must_exist)
    check_store(settings.resolved_outbox, settings, what="outbox", must_exist=False)
    check_database(settings)
    check_keys(settings)
    if broker:
        check_broker(settings)


def check_keys(settings: Settings) -> None:
    """The vendor keyring loads."""
    from pipelines.keyring import KeyringError, load_keyring

    try:
        load_keyring(settings.resolved_keys_dir)
    except KeyringError as exc:
        raise NotReady(Unready.KEYS, str(exc)) from None


# --- the database ---------------------------------------------------------------------


def check_database(settings: Settings, *, migrated: bool = True) -> None:
    """The database answers and (with `migrated`) its schema is at the migrations' head.

    A SQLite file that does not exist is not created here: it means 'airlock init' has
    not run (or the URL is mistyped).
    """
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    url = settings.resolved_database_url
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise NotReady(Unready.DATABASE, f"{redact(url)} is not a database URL") from None
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database or ""
        if database in ("", ":memory:") or database.startswith("file:"):
            return
        if not Path(database).exists():
            if migrated:
                raise NotReady(Unready.SCHEMA, f"no database at {database}; run 'airlock init'")
            return
    revision = _reach(url)
    if migrated:
        _check_revision(url, revision)


def _reach(url: str) -> str | None:
    """Connect once (short timeout, no pool) and read the Alembic revision (directly:
    Alembic's MigrationContext logs at INFO, noise before every command)."""
    from sqlalchemy import create_engine, inspect
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import SQLAlchemyError
    from sqlalchemy.pool import NullPool

    connect_args: dict[str, object] = (
        {"timeout": CONNECT_TIMEOUT} if make_url(url).get_backend_name() == "sqlite"
        else {"connect_timeout": int(CONNECT_TIMEOUT)})
    try:
        engine = create_engine(url, poolclass=NullPool, connect_args=connect_args)
    except (SQLAlchemyError, ImportError) as exc:
        raise NotReady(Unready.DATABASE, f"cannot use the database {redact(url)}: "
                       f"{_scrubbed(_first_line(exc), url)}") from None
    try:
        with engine.connect() as connection:
            if not inspect(connection).has_table(VERSION_TABLE):
                return None
            return connection.exec_driver_sql(
                f"SELECT version_num FROM {VERSION_TABLE}").scalar()
    except SQLAlchemyError as exc:
        reason = _first_line(getattr(exc, "orig", None) or exc)
        raise NotReady(Unready.DATABASE, f"cannot reach the database at {redact(url)}: "
                       f"{_scrubbed(reason, url)}") from None
    finally:
        engine.dispose()


def _check_revision(url: str, current: str | None) -> None:
    from models.migrate import head_revision, known_revision

    head = head_revision()
    if current == head:
        return
    if current is None:
        raise NotReady(Unready.SCHEMA, f"the database at {redact(url)} has no schema yet; "
                       f"{_HOW_TO_MIGRATE}")
    if not known_revision(current):
        raise NotReady(Unready.SCHEMA, f"the database at {redact(url)} is at revision "
                       f"{current}, which this version of airlock does not know (a newer "
                       "airlock migrated it); upgrade airlock")
    raise NotReady(Unready.SCHEMA, f"the database at {redact(url)} is at revision {current}, "
                   f"behind {head}; {_HOW_TO_MIGRATE}")


# --- the broker -----------------------------------------------------------------------


def check_broker(settings: Settings) -> None:
    """The configured broker (Redis or RabbitMQ) accepts a connection."""
    from kombu import Connection

    url = settings.broker_url
    if url is None:
        raise NotReady(Unready.BROKER, "no broker configured: set AIRLOCK_BROKER_URL="
                       "redis://... or amqp://... (or use 'airlock run' for embedded mode)")
    connection = Connection(url, connect_timeout=CONNECT_TIMEOUT,
                            transport_options={"socket_connect_timeout": CONNECT_TIMEOUT,
                                               "socket_timeout": CONNECT_TIMEOUT})
    try:
        if broker_kind(url) is BrokerKind.REDIS:
            _ping_redis(url)  # kombu connects to Redis lazily: a connection proves little
        else:
            connection.ensure_connection(max_retries=1, timeout=CONNECT_TIMEOUT)
    except Exception as exc:  # noqa: BLE001 - every transport fails in its own way
        raise NotReady(Unready.BROKER, f"cannot reach the broker at {redact(url)}: "
                       f"{_scrubbed(_first_line(exc), url)}") from None
    finally:
        connection.release()


def _ping_redis(url: str) -> None:
    import redis

    client = redis.Redis.from_url(url, socket_connect_timeout=CONNECT_TIMEOUT,
                                  socket_timeout=CONNECT_TIMEOUT)
    try:
        client.ping()
    finally:
        client.close()


# --- stores: inbox and outbox ---------------------------------------------------------


def check_store(location: str, settings: Settings, *, what: str,
                must_exist: bool = True) -> None:
    """`location` (a folder or ``s3://bucket/prefix``) can be used as the `what`.

    A bucket must exist. A folder must be a folder; with `must_exist` it must already
    be there (a mistyped path is refused rather than created), otherwise it is made on
    the first write and only what stands in its way is refused.
    """
    if location.startswith("s3://"):
        _check_bucket(location, settings, what=what)
    else:
        _check_folder(_local_path(location), what=what, must_exist=must_exist)


def _local_path(location: str) -> Path:
    if location.startswith("file://"):
        return Path(unquote(urlsplit(location).path))
    return Path(location)


def _check_folder(path: Path, *, what: str, must_exist: bool) -> None:
    try:
        mode = path.stat().st_mode
    except (FileNotFoundError, NotADirectoryError):  # the latter: a file on the way
        if must_exist:
            raise NotReady(Unready.STORE, f"the {what} folder {path} does not exist; "
                           "'airlock init' creates it and 'airlock customer add' a "
                           "customer's folder in it (or fix AIRLOCK_"
                           f"{what.upper()})") from None
        blocker = next((p for p in path.parents if p.exists()), None)
        if blocker is not None and not blocker.is_dir():
            raise NotReady(Unready.STORE, f"the {what} {path} cannot be made: {blocker} "
                           "is a file, not a folder") from None
        return
    except OSError as exc:
        raise NotReady(Unready.STORE, f"the {what} {path}: {exc.strerror}") from None
    if not stat.S_ISDIR(mode):
        raise NotReady(Unready.STORE, f"the {what} {path} is a {_kind(mode)}, not a folder")
    if not os.access(path, os.R_OK | os.W_OK | os.X_OK):
        raise NotReady(Unready.STORE, f"the {what} folder {path} is not readable and "
                       "writable by this user")


def _check_bucket(location: str, settings: Settings, *, what: str) -> None:
    from botocore.exceptions import BotoCoreError, ClientError

    from pipelines.storage.s3 import S3ClientParams, make_client, parse_s3_url

    bucket, _ = parse_s3_url(location)
    params = S3ClientParams.from_settings(settings)
    params = replace(params, connect_timeout=min(params.connect_timeout, CONNECT_TIMEOUT),
                     read_timeout=min(params.read_timeout, 10.0), max_attempts=1)
    client = make_client("s3", params)
    try:
        client.head_bucket(Bucket=bucket)
    except ClientError as exc:
        code = str(exc.response.get("Error", {}).get("Code", ""))
        if code in ("404", "NoSuchBucket", "NotFound"):
            message = f"the {what} bucket {bucket} does not exist ({location})"
        elif code in ("403", "AccessDenied", "Forbidden"):
            message = f"access to the {what} bucket {bucket} is denied ({location})"
        else:
            message = f"the {what} bucket {bucket} cannot be used: {code or exc}"
        raise NotReady(Unready.STORE, message) from None
    except BotoCoreError as exc:
        raise NotReady(Unready.STORE, f"cannot reach the {what} bucket {bucket}: "
                       f"{_first_line(exc)}") from None
    finally:
        client.close()


# --- files given on the command line --------------------------------------------------


def check_input(path: Path) -> None:
    """`path` is a regular file this user can read. Only stat and access are used:
    opening a FIFO would wait for a writer."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise NotReady(Unready.INPUT, f"{path}: no such file") from None
    except OSError as exc:
        raise NotReady(Unready.INPUT, f"{path}: {exc.strerror}") from None
    if not stat.S_ISREG(mode):
        raise NotReady(Unready.INPUT, f"{path} is a {_kind(mode)}, not a regular file")
    if not os.access(path, os.R_OK):
        raise NotReady(Unready.INPUT, f"{path} is not readable by this user")


def read_input(path: Path) -> bytes:
    """The bytes of the regular file `path`; `NotReady` if it is anything else.

    Opened without blocking and checked again on the open file, so a FIFO swapped in
    after `check_input` cannot hang the command.
    """
    check_input(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError as exc:
        raise NotReady(Unready.INPUT, f"{path}: cannot open ({exc.strerror})") from None
    with os.fdopen(fd, "rb") as handle:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise NotReady(Unready.INPUT, f"{path} is a {_kind(mode)}, not a regular file")
        try:
            return handle.read()
        except OSError as exc:
            raise NotReady(Unready.INPUT, f"{path}: cannot read ({exc.strerror})") from None


def _kind(mode: int) -> str:
    kinds = ((stat.S_ISDIR, "folder"), (stat.S_ISREG, "file"), (stat.S_ISFIFO, "FIFO"),
             (stat.S_ISSOCK, "socket"), (stat.S_ISCHR, "character device"),
             (stat.S_ISBLK, "block device"))
    return next((name for test, name in kinds if test(mode)), "special file")
