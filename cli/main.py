"""The `airlock` command line. Settings are read once here and passed down."""

from __future__ import annotations

from pathlib import Path

import typer

from cli.admin import customer_app, license_app, policy_app, product_app
from cli.checks import check_database, check_store
from cli.common import emit, fail, preflight, settings_of
from cli.keys import keys_app
from config.process import settle_heap
from config.settings import Settings, SettingsError, load_settings
from models.migrate import upgrade
from pipelines.keyring import init_keyring

app = typer.Typer(help="Airlock: the vendor side of offline license activation.",
                  no_args_is_help=True, pretty_exceptions_enable=False)
db_app = typer.Typer(help="Database schema.", no_args_is_help=True)

app.add_typer(db_app, name="db")
app.add_typer(customer_app, name="customer")
app.add_typer(product_app, name="product")
app.add_typer(policy_app, name="policy")
app.add_typer(license_app, name="license")
app.add_typer(keys_app, name="keys")


def run() -> None:
    """The `airlock` program (and ``python -m cli``)."""
    settle_heap()
    app(prog_name="airlock")


@app.callback()
def main(ctx: typer.Context) -> None:
    """Configuration comes from AIRLOCK_* environment variables (see README)."""
    try:
        settings = load_settings()
    except SettingsError as exc:
        fail(str(exc), reason="config", code=2)
    ctx.obj = {"settings": settings}


@db_app.command("upgrade")
def db_upgrade(ctx: typer.Context, revision: str = typer.Argument("head")) -> None:
    """Apply the migrations up to REVISION."""
    settings = settings_of(ctx)
    with preflight():
        check_database(settings, migrated=False)
    upgrade(settings.resolved_database_url, revision)
    typer.echo("database at " + revision, err=True)


@app.command("init")
def init(ctx: typer.Context, as_json: bool = typer.Option(False, "--json"),
         create_buckets: bool = typer.Option(
             False, "--create-buckets", help="Create s3:// inbox/outbox buckets that are "
             "missing (a test or compose setup; production buckets are provisioned)")) -> None:
    """Create ./var, the database and the vendor keys. Safe to run again."""
    settings = settings_of(ctx)
    locations = {"inbox": settings.resolved_inbox, "outbox": settings.resolved_outbox}
    if create_buckets:
        for location in locations.values():
            if location.startswith("s3://"):
                _make_bucket(location, settings)
    with preflight():
        check_store(str(settings.home), settings, what="home", must_exist=False)
        for what, location in locations.items():
            check_store(location, settings, what=what, must_exist=False)
        check_database(settings, migrated=False)
    settings.home.mkdir(parents=True, exist_ok=True)
    for location in locations.values():
        if not location.startswith("s3://"):
            Path(location).mkdir(parents=True, exist_ok=True)
    upgrade(settings.resolved_database_url)
    ring, created = init_keyring(settings.resolved_keys_dir)
    emit({"home": str(settings.home), "database": "migrated to head",
          "keys": "created" if created else "kept", "signing_key": ring.current_signing,
          "sealing_key": ring.current_sealing}, as_json=as_json)


def _make_bucket(location: str, settings: Settings) -> None:
    from botocore.exceptions import BotoCoreError, ClientError

    from pipelines.storage.s3 import make_s3_client, parse_s3_url

    bucket, _ = parse_s3_url(location)
    client = make_s3_client(settings)
    where = ({} if settings.s3_region == "us-east-1" else
             {"CreateBucketConfiguration": {"LocationConstraint": settings.s3_region}})
    try:
        client.create_bucket(Bucket=bucket, **where)
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") != "BucketAlreadyOwnedByYou":
            fail(f"cannot create the bucket {bucket}: {exc}", reason="store")
    except BotoCoreError as exc:
        fail(f"cannot create the bucket {bucket}: {exc}", reason="store")
    finally:
        client.close()


def _register_optional() -> None:
    """Command groups that live in their own modules."""
    import importlib

    for module, name in (("cli.device", "device"), ("cli.pipeline", None), ("cli.demo", None),
                         ("cli.distributed", None), ("cli.ops", None), ("cli.bench", None),
                         ("cli.web", None), ("cli.operators", "operator"),
                         ("cli.mail", None)):
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name != module:
                raise
            continue
        if name:
            app.add_typer(mod.app, name=name)
        else:
            mod.register(app)


_register_optional()
