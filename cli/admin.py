"""Vendor administration commands: customers, products, policies, licenses."""

from __future__ import annotations

import sys
from datetime import datetime

import typer
from sqlmodel import col, select

from cli.common import db_session, emit, fail, settings_of
from models import Customer, LicensePolicy, LicenseType, Product
from pipelines import catalog
from pipelines.catalog import CatalogError, FeatureSpec
from pipelines.storage import open_store

customer_app = typer.Typer(help="Customers (tenants): each has its own inbox and outbox.",
                           no_args_is_help=True)
product_app = typer.Typer(help="Products that licenses are issued for.", no_args_is_help=True)
policy_app = typer.Typer(help="License policies: defaults copied onto new licenses.",
                         no_args_is_help=True)
license_app = typer.Typer(help="Licenses: issue, inspect, change entitlements.",
                          no_args_is_help=True)

JSON_OPT = typer.Option(False, "--json", help="Print JSON for scripts.")


@customer_app.command("add")
def customer_add(ctx: typer.Context, code: str = typer.Argument(..., help="Short tenant code"),
                 name: str = typer.Option(..., "--name"), as_json: bool = JSON_OPT) -> None:
    """Add a customer; CODE names its inbox/outbox folders (made now on local stores)."""
    settings = settings_of(ctx)
    with db_session(ctx) as session:
        customer = catalog.add_customer(session=session, code=code, name=name)
    folders = {}
    for what, location in (("inbox", settings.resolved_inbox),
                           ("outbox", settings.resolved_outbox)):
        store = open_store(location, settings)
        store.make_folder(customer.code)
        folders[what] = f"{store.location}/{customer.code}"
    emit({"code": customer.code, "name": customer.name, **folders}, as_json=as_json)


@customer_app.command("list")
def customer_list(ctx: typer.Context, as_json: bool = JSON_OPT) -> None:
    """List customers."""
    with db_session(ctx) as session:
        rows = [{"code": c.code, "name": c.name}
                for c in session.exec(select(Customer).order_by(Customer.code))]
    emit(rows, as_json=as_json, columns=["code", "name"], title="Customers")


@product_app.command("add")
def product_add(ctx: typer.Context, code: str = typer.Argument(...),
                name: str = typer.Option(..., "--name"), as_json: bool = JSON_OPT) -> None:
    """Add a product."""
    with db_session(ctx) as session:
        product = catalog.add_product(session=session, code=code, name=name)
        emit({"code": product.code, "name": product.name}, as_json=as_json)


@product_app.command("list")
def product_list(ctx: typer.Context, as_json: bool = JSON_OPT) -> None:
    """List products."""
    with db_session(ctx) as session:
        rows = [{"code": p.code, "name": p.name}
                for p in session.exec(select(Product).order_by(Product.code))]
    emit(rows, as_json=as_json, columns=["code", "name"], title="Products")


@policy_app.command("add")
def policy_add(
    ctx: typer.Context,
    code: str = typer.Argument(...),
    product: str = typer.Option(..., "--product"),
    name: str = typer.Option("", "--name"),
    license_type: LicenseType = typer.Option(LicenseType.PERPETUAL, "--type"),
    max_activations: int = typer.Option(1, "--max-activations"),
    validity_days: int | None = typer.Option(None, "--validity-days"),
    no_offline: bool = typer.Option(False, "--no-offline",
                                    help="Licenses from this policy refuse offline activation."),
    max_consumptions: int | None = typer.Option(None, "--max-consumptions"),
    allow_overages: bool = typer.Option(False, "--allow-overages"),
    as_json: bool = JSON_OPT,
) -> None:
    """Add a license policy."""
    with db_session(ctx) as session:
        policy = catalog.add_policy(
            session=session, code=code, name=name or code, product_code=product,
            license_type=license_type, max_activations=max_activations,
            validity_days=validity_days, allow_offline_activation=not no_offline,
            max_consumptions=max_consumptions, allow_overages=allow_overages)
        emit(_policy_row(policy, product), as_json=as_json)


def _policy_row(policy: LicensePolicy, product: str) -> dict[str, object]:
    return {"code": policy.code, "product": product, "type": policy.license_type,
            "max_activations": policy.max_activations, "validity_days": policy.validity_days,
            "allow_offline_activation": policy.allow_offline_activation}


@policy_app.command("list")
def policy_list(ctx: typer.Context, as_json: bool = JSON_OPT) -> None:
    """List license policies."""
    with db_session(ctx) as session:
        rows = [_policy_row(p, code) for p, code in session.exec(
            select(LicensePolicy, Product.code)
            .join(Product, col(Product.id) == col(LicensePolicy.product_id))
            .order_by(LicensePolicy.code))]
    emit(rows, as_json=as_json, title="Policies")


def _parse_features(values: list[str]) -> list[FeatureSpec]:
    try:
        return [FeatureSpec.parse(v) for v in values]
    except CatalogError as exc:
        fail(exc.message, reason=exc.reason, code=2)


def _read_password(email: str) -> str:
    if sys.stdin.isatty():
        return typer.prompt(f"Password for {email}", hide_input=True, confirmation_prompt=True)
    line = sys.stdin.readline().rstrip("\n")
    if not line:
        fail(f"no password for {email} on stdin", reason="missing_password", code=2)
    return line


@license_app.command("add")
def license_add(
    ctx: typer.Context,
    customer: str = typer.Option(..., "--customer"),
    product: str | None = typer.Option(None, "--product"),
    policy: str | None = typer.Option(None, "--policy"),
    license_type: LicenseType | None = typer.Option(None, "--type"),
    max_activations: int | None = typer.Option(None, "--max-activations"),
    validity_days: int | None = typer.Option(None, "--validity-days"),
    no_offline: bool = typer.Option(False, "--no-offline"),
    offline: bool = typer.Option(False, "--offline",
                                 help="Allow offline activation even if the policy does not."),
    max_consumptions: int | None = typer.Option(None, "--max-consumptions"),
    allow_overages: bool | None = typer.Option(None, "--allow-overages/--no-overages"),
    feature: list[str] = typer.Option([], "--feature", help="CODE[:consumption[:MAX]]"),
    user: list[str] = typer.Option([], "--user", help="EMAIL; password read from prompt/stdin"),
    as_json: bool = JSON_OPT,
) -> None:
    """Issue a license and print its key."""
    if no_offline and offline:
        fail("--offline and --no-offline contradict each other", code=2)
    allow_offline = False if no_offline else (True if offline else None)
    features = _parse_features(feature)
    users = {email: _read_password(email) for email in user}
    with db_session(ctx) as session:
        lic = catalog.add_license(
            session=session, customer_code=customer, product_code=product,
            policy_code=policy, license_type=license_type, max_activations=max_activations,
            validity_days=validity_days, allow_offline_activation=allow_offline,
            max_consumptions=max_consumptions, allow_overages=allow_overages,
            features=features, users=users)
        described = catalog.describe_license(session=session, key=lic.key)
    emit(described if as_json else {"key": described["key"], "type": described["type"],
                                     "expires_at": described["expires_at"]}, as_json=as_json)


@license_app.command("show")
def license_show(ctx: typer.Context, key: str = typer.Argument(...),
                 as_json: bool = JSON_OPT) -> None:
    """Show a license: entitlements, active devices, consumption totals, recent files."""
    with db_session(ctx) as session:
        described = catalog.describe_license(session=session, key=key)
    emit(described, as_json=as_json)


@license_app.command("list")
def license_list(ctx: typer.Context, customer: str | None = typer.Option(None, "--customer"),
                 as_json: bool = JSON_OPT) -> None:
    """List licenses."""
    with db_session(ctx) as session:
        rows = catalog.list_licenses(session=session, customer_code=customer)
    emit(rows, as_json=as_json, title="Licenses")


@license_app.command("update")
def license_update(
    ctx: typer.Context,
    key: str = typer.Argument(...),
    expires_at: datetime | None = typer.Option(None, "--expires-at", help="New expiry (UTC)"),
    extend_days: int | None = typer.Option(None, "--extend-days"),
    max_activations: int | None = typer.Option(None, "--max-activations"),
    enabled: bool | None = typer.Option(None, "--enable/--disable"),
    offline: bool | None = typer.Option(None, "--offline/--no-offline"),
    max_consumptions: int | None = typer.Option(None, "--max-consumptions"),
    feature: list[str] = typer.Option([], "--feature", help="Add or change CODE[:KIND[:MAX]]"),
    remove_feature: list[str] = typer.Option([], "--remove-feature"),
    as_json: bool = JSON_OPT,
) -> None:
    """Change a license's entitlements; send devices a refresh file afterwards."""
    from datetime import UTC

    features = _parse_features(feature)
    with db_session(ctx) as session:
        catalog.update_license(
            session=session, key=key,
            expires_at=expires_at.replace(tzinfo=expires_at.tzinfo or UTC) if expires_at else None,
            extend_days=extend_days, max_activations=max_activations, enabled=enabled,
            allow_offline_activation=offline, max_consumptions=max_consumptions,
            put_features=features, remove_features=remove_feature)
        described = catalog.describe_license(session=session, key=key)
    emit(described, as_json=as_json)


@license_app.command("unlock")
def license_unlock(ctx: typer.Context, key: str = typer.Argument(...),
                   user: str = typer.Option(..., "--user", help="The user's email"),
                   as_json: bool = JSON_OPT) -> None:
    """Lift a user's sign-in lockout before its window passes."""
    with db_session(ctx) as session:
        cleared = catalog.unlock_user(session=session, key=key, email=user)
    emit({"license": key, "user": user.strip().lower(), "failures_cleared": cleared},
         as_json=as_json)
