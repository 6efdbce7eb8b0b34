"""Settings, migrations on both databases, catalog rules, and the admin CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect
from sqlmodel import Session, SQLModel, select

from config.settings import SettingsError, load_settings
from models import License, LicenseType, LicenseUser
from models.db import make_engine
from models.migrate import current_revision, upgrade
from pipelines import catalog
from pipelines.passwords import check_password


def test_settings_defaults_live_under_home(tmp_path: Path) -> None:
    settings = load_settings(home=tmp_path)
    assert settings.resolved_database_url == f"sqlite:///{tmp_path / 'airlock.db'}"
    assert settings.resolved_inbox == str(tmp_path / "inbox")
    assert settings.embedded


@pytest.mark.parametrize("env,needle", [
    ({"AIRLOCK_DATABASE_URL": "mysql://x"}, "AIRLOCK_DATABASE_URL"),
    ({"AIRLOCK_BROKER_URL": "sqs://x"}, "AIRLOCK_BROKER_URL"),
    ({"AIRLOCK_MAX_FILE_BYTES": "-1"}, "AIRLOCK_MAX_FILE_BYTES"),
    ({"AIRLOCK_MAX_ATTEMPTS": "lots"}, "AIRLOCK_MAX_ATTEMPTS"),
])
def test_malformed_setting_is_refused_with_its_name(monkeypatch: pytest.MonkeyPatch,
                                                    env: dict[str, str], needle: str) -> None:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(SettingsError, match=needle):
        load_settings()


def _assert_migrated_schema_matches_models(url: str) -> None:
    assert current_revision(url) == "0001" or current_revision(url) is not None
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn), SQLModel.metadata)
            tables = set(inspect(conn).get_table_names())
    finally:
        engine.dispose()
    assert {"license", "device", "job", "applied_request"} <= tables
    assert diff == [], f"migrations drifted from the models: {diff}"


def test_migrations_upgrade_empty_sqlite(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'm.db'}"
    upgrade(url)
    upgrade(url)  # idempotent
    _assert_migrated_schema_matches_models(url)


@pytest.mark.postgres
def test_migrations_upgrade_empty_postgres(fresh_pg_url: str) -> None:
    upgrade(fresh_pg_url)
    _assert_migrated_schema_matches_models(fresh_pg_url)


def _vendor(session: Session) -> None:
    catalog.add_customer(session=session, code="ACME", name="Acme")
    catalog.add_product(session=session, code="pro", name="Pro")


def test_policy_offline_default_is_inherited_and_overridable(session: Session) -> None:
    _vendor(session)
    catalog.add_policy(session=session, code="online-only", name="x", product_code="pro",
                       license_type=LicenseType.TIME_LIMITED, validity_days=30,
                       max_activations=3, allow_offline_activation=False)
    inherited = catalog.add_license(session=session, customer_code="ACME",
                                    policy_code="online-only")
    overridden = catalog.add_license(session=session, customer_code="ACME",
                                     policy_code="online-only", allow_offline_activation=True)
    plain = catalog.add_license(session=session, customer_code="ACME", product_code="pro")
    session.commit()
    assert inherited.allow_offline_activation is False
    assert inherited.max_activations == 3 and inherited.license_type == "time_limited"
    assert inherited.expires_at is not None
    assert overridden.allow_offline_activation is True
    assert plain.allow_offline_activation is True


def test_user_based_license_stores_only_a_hash(session: Session) -> None:
    _vendor(session)
    lic = catalog.add_license(session=session, customer_code="ACME", product_code="pro",
                              users={"Ana@Example.com": "correct horse"})
    session.commit()
    user = session.exec(select(LicenseUser).where(LicenseUser.license_id == lic.id)).one()
    assert lic.auth_method == "user"
    assert user.email == "ana@example.com"
    assert "correct horse" not in user.password_hash
    assert user.password_hash.startswith("$argon2id$v=19$m=19456,t=2,p=1$")
    assert check_password("correct horse", user.password_hash).ok
    assert not check_password("wrong horse", user.password_hash).ok


@pytest.mark.parametrize("kwargs,reason", [
    (dict(customer_code="NOPE", product_code="pro"), "unknown_customer"),
    (dict(customer_code="ACME", product_code="nope"), "unknown_product"),
    (dict(customer_code="ACME"), "missing_product"),
    (dict(customer_code="ACME", product_code="pro", license_type=LicenseType.TIME_LIMITED),
     "missing_validity"),
    (dict(customer_code="ACME", product_code="pro", max_activations=-1), "invalid_number"),
])
def test_license_creation_errors_have_reasons(session: Session, kwargs: dict,
                                              reason: str) -> None:
    _vendor(session)
    with pytest.raises(catalog.CatalogError) as info:
        catalog.add_license(session=session, **kwargs)
    assert info.value.reason == reason
    assert session.exec(select(License)).first() is None


def test_feature_spec_parsing() -> None:
    spec = catalog.FeatureSpec.parse("export:consumption:100")
    assert (spec.code, spec.kind, spec.max_consumptions) == ("export", "consumption", 100)
    assert catalog.FeatureSpec.parse("pdf").kind == "activation"
    for bad in ("", "a:b", "x:activation:5", "x:consumption:-1", "x:consumption:n"):
        with pytest.raises(catalog.CatalogError):
            catalog.FeatureSpec.parse(bad)


def run_cli(home: Path, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "AIRLOCK_HOME": str(home)}
    env.pop("AIRLOCK_DATABASE_URL", None)
    return subprocess.run([sys.executable, "-m", "cli", *args], env=env, input=stdin,
                          capture_output=True, text=True, timeout=120)


def test_cli_issue_acceptance_flow(tmp_path: Path) -> None:
    home = tmp_path / "var"
    for args in (["init"], ["init"], ["customer", "add", "ACME", "--name", "Acme Corp"],
                 ["product", "add", "pro", "--name", "Pro"]):
        result = run_cli(home, *args)
        assert result.returncode == 0, result.stderr
    added = run_cli(home, "license", "add", "--product", "pro", "--customer", "ACME", "--type",
                    "time_limited", "--validity-days", "365", "--max-activations", "2",
                    "--feature", "export:consumption:50", "--json")
    assert added.returncode == 0, added.stderr
    key = json.loads(added.stdout)["key"]
    shown = json.loads(run_cli(home, "license", "show", key, "--json").stdout)
    assert shown["key"] == key and shown["max_activations"] == 2
    assert shown["type"] == "time_limited" and shown["expires_at"]
    assert shown["features"][0]["code"] == "export"
    keys = home / "keys" / "signing"
    assert all(oct(p.stat().st_mode & 0o777) == "0o600" for p in keys.iterdir())


def test_cli_user_password_comes_from_stdin_not_argv(tmp_path: Path) -> None:
    home = tmp_path / "var"
    run_cli(home, "init")
    run_cli(home, "customer", "add", "ACME", "--name", "Acme")
    run_cli(home, "product", "add", "pro", "--name", "Pro")
    added = run_cli(home, "license", "add", "--product", "pro", "--customer", "ACME",
                    "--user", "ana@example.com", "--json", stdin="s3cret-pass\n")
    assert added.returncode == 0, added.stderr
    assert json.loads(added.stdout)["users"] == ["ana@example.com"]
    assert "s3cret-pass" not in added.stdout


def test_cli_errors_are_friendly_and_nonzero(tmp_path: Path) -> None:
    home = tmp_path / "var"
    run_cli(home, "init")
    assert run_cli(home, "customer", "add", "ACME", "--name", "A").returncode == 0
    dup = run_cli(home, "customer", "add", "ACME", "--name", "A")
    assert dup.returncode == 1 and "[duplicate]" in dup.stderr and "Traceback" not in dup.stderr
    missing = run_cli(home, "license", "show", "NOPE", "--json")
    assert missing.returncode == 1 and "unknown_license" in missing.stderr
    bad_env = subprocess.run([sys.executable, "-m", "cli", "customer", "list"],
                             env={**os.environ, "AIRLOCK_BROKER_URL": "ftp://x"},
                             capture_output=True, text=True)
    assert bad_env.returncode == 2 and "AIRLOCK_BROKER_URL" in bad_env.stderr
