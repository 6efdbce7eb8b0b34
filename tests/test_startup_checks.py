"""Start-up checks through the real command line: a missing database, schema, broker,
bucket, folder or input is one line on stderr (no traceback), a non-zero exit, and no
password in anything printed."""

from __future__ import annotations

import os
import shutil
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import text

from cli.checks import NotReady, Unready, check_input, read_input, redact
from models.db import make_engine
from models.migrate import head_revision, upgrade
from pipelines.keyring import init_keyring
from tests.s3fixtures import MotoEndpoint, create_bucket, moto_server  # noqa: F401

ROOT = Path(__file__).resolve().parent.parent
SECRET = "hunter2-s3cret"


def closed_port() -> int:
    """A local port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def airlock(home: Path, *args: str, **settings: str) -> subprocess.CompletedProcess[str]:
    """`airlock ARGS` in a child process with AIRLOCK_HOME=home plus `settings`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRLOCK_")}
    env.update({"AIRLOCK_HOME": str(home), "PYTHONPATH": str(ROOT)})
    env.update({f"AIRLOCK_{name.upper()}": value for name, value in settings.items()})
    # The timeout only stops a hung command from hanging the suite; nothing is timed.
    return subprocess.run([sys.executable, "-m", "cli", *args], env=env, capture_output=True,
                          text=True, timeout=120, cwd=home.parent, stdin=subprocess.DEVNULL)


def refused(result: subprocess.CompletedProcess[str], reason: str, *needles: str,
            code: int = 1) -> str:
    """The command failed with exactly one error line naming `reason`; that line."""
    lines = result.stderr.strip().splitlines()
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"error: [{reason}] "), lines[0]
    assert "Traceback" not in result.stderr + result.stdout
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    assert SECRET not in result.stderr + result.stdout
    return lines[0]


@pytest.fixture
def home(tmp_path: Path) -> Path:
    """What `airlock init` sets up (made in-process: quicker than a child per test)."""
    home = tmp_path / "var"
    for folder in ("inbox", "outbox"):
        (home / folder).mkdir(parents=True)
    upgrade(f"sqlite:///{home / 'airlock.db'}")
    init_keyring(home / "keys")
    return home


def archive_file(tmp_path: Path) -> Path:
    path = tmp_path / "upload.zip"
    path.write_bytes(b"PK\x05\x06" + b"\0" * 18)  # an empty zip
    return path


# --- the database ---------------------------------------------------------------------


COMMANDS = {
    "run": ("run", "--drain"),
    "watch": ("watch",),
    "worker": ("worker", "--pool", "solo"),
    "import": ("import", "{archive}", "--customer", "ACME"),
    "process": ("process", "{archive}", "--customer", "ACME"),
}


def command(name: str, tmp_path: Path) -> list[str]:
    archive = str(archive_file(tmp_path))
    return [arg.replace("{archive}", archive) for arg in COMMANDS[name]]


@pytest.mark.parametrize("name", [*COMMANDS, "init", "db upgrade"])
def test_a_closed_postgres_port_is_one_line_without_the_password(
        name: str, tmp_path: Path, redis_url: str) -> None:
    home = tmp_path / "var"
    for folder in ("inbox", "outbox"):
        (home / folder).mkdir(parents=True)
    url = f"postgresql+psycopg://airlock:{SECRET}@127.0.0.1:{closed_port()}/airlock"
    args = name.split() if name in ("init", "db upgrade") else command(name, tmp_path)
    result = airlock(home, *args, database_url=url, broker_url=redis_url)
    refused(result, "database", "cannot reach the database at",
                   "postgresql+psycopg://airlock:***@127.0.0.1:")


def test_outbox_commands_do_not_need_the_database(home: Path) -> None:
    """`outbox list|get` read the outbox only: a database that is down does not stop them."""
    (home / "outbox" / "ACME").mkdir()
    (home / "outbox" / "ACME" / "a.lic").write_text("x")
    url = f"postgresql+psycopg://airlock:{SECRET}@127.0.0.1:{closed_port()}/airlock"
    listed = airlock(home, "outbox", "list", "--json", database_url=url)
    assert listed.returncode == 0, listed.stderr
    assert "ACME/a.lic" in listed.stdout


def test_a_missing_sqlite_database_is_not_created(tmp_path: Path) -> None:
    home = tmp_path / "var"
    (home / "inbox").mkdir(parents=True)
    refused(airlock(home, "run", "--drain"), "schema", "no database at", "run 'airlock init'")
    assert not (home / "airlock.db").exists()


@pytest.mark.parametrize("name", list(COMMANDS))
def test_a_database_behind_the_head_names_the_command_that_migrates(
        name: str, tmp_path: Path, redis_url: str) -> None:
    home = tmp_path / "var"
    for folder in ("inbox", "outbox"):
        (home / folder).mkdir(parents=True)
    upgrade(f"sqlite:///{home / 'airlock.db'}", "0001")
    result = airlock(home, *command(name, tmp_path), broker_url=redis_url)
    refused(result, "schema", "at revision 0001, behind " + str(head_revision()),
            "run 'airlock db upgrade' (or 'airlock init')")


def test_init_migrates_a_database_behind_the_head(tmp_path: Path) -> None:
    home = tmp_path / "var"
    home.mkdir()
    upgrade(f"sqlite:///{home / 'airlock.db'}", "0001")
    assert airlock(home, "init").returncode == 0
    result = airlock(home, "run", "--drain", "--timeout", "60")
    assert result.returncode == 0, result.stderr


def test_a_reachable_postgres_without_the_schema(fresh_pg_url: str, tmp_path: Path) -> None:
    home = tmp_path / "var"
    (home / "inbox").mkdir(parents=True)
    init_keyring(home / "keys")
    refused(airlock(home, "run", "--drain", database_url=fresh_pg_url), "schema",
            "has no schema yet", "run 'airlock db upgrade' (or 'airlock init')")
    assert airlock(home, "db", "upgrade", database_url=fresh_pg_url).returncode == 0
    result = airlock(home, "run", "--drain", "--timeout", "60", database_url=fresh_pg_url)
    assert result.returncode == 0, result.stderr


def test_a_database_from_a_newer_airlock_is_refused(home: Path) -> None:
    engine = make_engine(f"sqlite:///{home / 'airlock.db'}")
    with engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '9999_future'"))
    engine.dispose()
    refused(airlock(home, "run", "--drain"), "schema", "revision 9999_future",
            "upgrade airlock")


def test_a_file_that_is_not_a_database(tmp_path: Path) -> None:
    home = tmp_path / "var"
    (home / "inbox").mkdir(parents=True)
    (home / "airlock.db").write_bytes(b"not a database, just text " * 100)
    refused(airlock(home, "run", "--drain"), "database", "cannot reach the database at")


def test_missing_vendor_keys(home: Path) -> None:
    shutil.rmtree(home / "keys")
    refused(airlock(home, "run", "--drain"), "no_keys", "no vendor keys in",
            "run 'airlock init'")


# --- the broker -----------------------------------------------------------------------


@pytest.mark.parametrize("name", ["watch", "worker", "import"])
def test_redis_down_is_one_line_without_the_password(name: str, home: Path,
                                                     tmp_path: Path) -> None:
    url = f"redis://:{SECRET}@127.0.0.1:{closed_port()}/0"
    result = airlock(home, *command(name, tmp_path), broker_url=url)
    refused(result, "broker", "cannot reach the broker at redis://:***@127.0.0.1:")


def test_import_in_embedded_mode_needs_no_broker(home: Path, tmp_path: Path) -> None:
    """Past the checks to the importer, which refuses the archive (no customer ACME)."""
    result = airlock(home, *command("import", tmp_path))
    assert result.returncode == 1 and "error:" not in result.stderr, result.stderr
    assert "reason: unknown_tenant" in result.stdout


# --- inbox and outbox -----------------------------------------------------------------


def test_run_does_not_create_a_mistyped_inbox(home: Path) -> None:
    mistyped = home / "inbxo"
    result = airlock(home, "run", "--drain", inbox=str(mistyped))
    refused(result, "store", f"the inbox folder {mistyped} does not exist",
            "'airlock init' creates it", "'airlock customer add'")
    assert not mistyped.exists()


def test_watch_does_not_create_a_mistyped_inbox(home: Path, redis_url: str) -> None:
    mistyped = home / "inbxo"
    refused(airlock(home, "watch", inbox=str(mistyped), broker_url=redis_url), "store",
            "does not exist")
    assert not mistyped.exists()


def test_customer_add_makes_the_inbox_that_run_needs(home: Path) -> None:
    inbox = home / "elsewhere" / "inbox"
    assert airlock(home, "customer", "add", "ACME", "--name", "Acme",
                   inbox=str(inbox)).returncode == 0
    assert (inbox / "ACME").is_dir()
    result = airlock(home, "run", "--drain", "--timeout", "60", inbox=str(inbox))
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("name", ["run", "init"])
def test_an_inbox_that_is_a_file(name: str, tmp_path: Path) -> None:
    home = tmp_path / "var"
    home.mkdir()
    assert airlock(home, "init").returncode == 0
    inbox = home / "inbox.txt"
    inbox.write_text("oops")
    args = ["run", "--drain"] if name == "run" else ["init"]
    refused(airlock(home, *args, inbox=str(inbox)), "store",
            f"the inbox {inbox} is a file, not a folder")


def test_an_outbox_below_a_file(home: Path) -> None:
    blocker = home / "notes.txt"
    blocker.write_text("x")
    refused(airlock(home, "run", "--drain", outbox=str(blocker / "outbox")), "store",
            f"{blocker} is a file, not a folder")


def test_outbox_list_refuses_a_missing_folder(home: Path) -> None:
    refused(airlock(home, "outbox", "list", outbox=str(home / "outbx")), "store",
            "the outbox folder", "does not exist")


def test_missing_buckets_are_refused(home: Path, moto_server: MotoEndpoint) -> None:  # noqa: F811
    s3 = {"s3_endpoint_url": moto_server.url, "s3_region": moto_server.region}
    missing = "no-such-bucket-" + os.urandom(4).hex()
    refused(airlock(home, "run", "--drain", inbox=f"s3://{missing}/inbox", **s3), "store",
            f"the inbox bucket {missing} does not exist")
    refused(airlock(home, "outbox", "list", outbox=f"s3://{missing}/outbox", **s3), "store",
            f"the outbox bucket {missing} does not exist")
    refused(airlock(home, "init", outbox=f"s3://{missing}/outbox", **s3), "store",
            f"the outbox bucket {missing} does not exist")
    bucket = create_bucket(moto_server)
    assert airlock(home, "outbox", "list", outbox=f"s3://{bucket}/outbox",
                   **s3).returncode == 0


def test_init_can_create_the_buckets(home: Path, moto_server: MotoEndpoint) -> None:  # noqa: F811
    s3 = {"s3_endpoint_url": moto_server.url, "s3_region": moto_server.region}
    bucket = "made-by-init-" + os.urandom(4).hex()
    locations = {"inbox": f"s3://{bucket}/inbox", "outbox": f"s3://{bucket}/outbox"}
    for _ in range(2):  # safe to run again
        result = airlock(home, "init", "--create-buckets", **locations, **s3)
        assert result.returncode == 0, result.stderr
    moto_server.client("s3").head_bucket(Bucket=bucket)


def test_an_unreachable_s3_endpoint(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(name, "testing")  # so it is the endpoint that fails
    result = airlock(home, "outbox", "list", outbox="s3://somewhere/outbox",
                     s3_endpoint_url=f"http://127.0.0.1:{closed_port()}",
                     s3_connect_timeout="1")
    refused(result, "store", "cannot reach the outbox bucket somewhere")


# --- files given to `process` and `import` ----------------------------------------------


def _am_root() -> bool:
    return os.geteuid() == 0


def test_process_an_unreadable_file(home: Path, tmp_path: Path) -> None:
    """chmod 000: refused for a user; root reads it anyway, and then it is processed."""
    locked = tmp_path / "locked.req"
    locked.write_bytes(b"not an airlock file")
    locked.chmod(0)
    result = airlock(home, "process", str(locked), "--customer", "ACME", "--json")
    if os.access(locked, os.R_OK):  # root: the permission bits do not stop it
        assert _am_root()
        assert result.returncode == 1 and "[input]" not in result.stderr
        assert '"file": "locked.req"' in result.stdout and '"status": "rejected"' in result.stdout
    else:
        refused(result, "input", f"{locked} is not readable by this user")


@pytest.mark.parametrize("kind", ["folder", "fifo", "missing", "dangling symlink", "socket"])
def test_process_refuses_what_is_not_a_regular_file(kind: str, home: Path,
                                                    tmp_path: Path) -> None:
    path = tmp_path / "input"
    expected = {"folder": "is a folder, not a regular file",
                "fifo": "is a FIFO, not a regular file", "missing": "no such file",
                "dangling symlink": "no such file",
                "socket": "is a socket, not a regular file"}[kind]
    holder = None
    if kind == "folder":
        path.mkdir()
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "dangling symlink":
        path.symlink_to(tmp_path / "gone")
    elif kind == "socket":
        holder = socket.socket(socket.AF_UNIX)
        holder.bind(str(path))
    try:
        good = tmp_path / "good.req"
        good.write_bytes(b"x")
        result = airlock(home, "process", str(good), str(path), "--customer", "ACME")
        refused(result, "input", f"{path} {expected}" if kind != "missing"
                and kind != "dangling symlink" else f"{path}: {expected}")
        assert not list((home / "outbox").rglob("*.rejection"))  # nothing half done
    finally:
        if holder is not None:
            holder.close()


def test_import_refuses_a_fifo(home: Path, tmp_path: Path) -> None:
    fifo = tmp_path / "upload.zip"
    os.mkfifo(fifo)
    refused(airlock(home, "import", str(fifo), "--customer", "ACME"), "input",
            "is a FIFO, not a regular file", code=2)


def test_read_input_does_not_block_on_a_fifo_swapped_in(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """The second line of defence: opened without blocking, checked on the open file."""
    fifo = tmp_path / "late.req"
    os.mkfifo(fifo)
    monkeypatch.setattr("cli.checks.check_input", lambda path: None)  # the race lost
    with pytest.raises(NotReady, match="is a FIFO") as caught:
        read_input(fifo)
    assert caught.value.reason is Unready.INPUT


def test_check_input_accepts_a_regular_file(tmp_path: Path) -> None:
    path = tmp_path / "ok.req"
    path.write_bytes(b"data")
    check_input(path)
    assert read_input(path) == b"data"
    assert stat.S_ISREG(path.stat().st_mode)


# --- redaction ------------------------------------------------------------------------


@pytest.mark.parametrize("url,shown", [
    ("postgresql+psycopg://airlock:pw@db:5432/airlock",
     "postgresql+psycopg://airlock:***@db:5432/airlock"),
    ("redis://:pw@127.0.0.1:6379/0", "redis://:***@127.0.0.1:6379/0"),
    ("rediss://user:p%40ss@host/1", "rediss://user:***@host/1"),
    ("postgresql+psycopg://u@db/x?password=pw&sslmode=require",
     "postgresql+psycopg://u@db/x?password=***&sslmode=require"),
    ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
    ("sqlite:///var/airlock.db", "sqlite:///var/airlock.db"),
])
def test_redact_hides_passwords(url: str, shown: str) -> None:
    assert redact(url) == shown


def test_messages_are_one_line() -> None:
    assert NotReady(Unready.BROKER, "first\n  second\tthird").message == "first second third"
