"""`airlock device`: a device on the far side of the air gap, driven from the shell.

Useful for demos, support and end-to-end tests; applications embed airlock_sdk.Device.
"""

from __future__ import annotations

import platform
import socket
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import typer

from airlock_sdk import Device, DeviceError, PublicBundle
from cli.common import db_session, emit, fail, settings_of
from pipelines import catalog
from pipelines.keyring import KeyringError, load_keyring

app = typer.Typer(help="Act as an offline device: activate, check, consume, deactivate.",
                  no_args_is_help=True)

DirArg = typer.Argument(..., help="The device's state folder.")
OutOpt = typer.Option(..., "--out", "-o", help="Where to write the file ('-' = stdout).")
VarOpt = typer.Option(None, "--var", help="Device variable NAME=VALUE (repeatable).")


@contextmanager
def friendly() -> Iterator[None]:
    """SDK refusals become one readable line with the reason code and exit status 1."""
    try:
        yield
    except DeviceError as exc:
        fail(exc.message, reason=exc.reason)


def open_device(directory: Path) -> Device:
    with friendly():
        return Device(directory)
    raise AssertionError("unreachable")  # pragma: no cover


def parse_vars(pairs: list[str] | None) -> dict[str, Any]:
    variables: dict[str, Any] = {}
    for pair in pairs or []:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            fail(f"--var expects NAME=VALUE, got {pair!r}", reason="invalid_argument")
        variables[name] = value
    return variables


def write_out(out: Path, data: bytes, what: str) -> None:
    if str(out) == "-":
        sys.stdout.buffer.write(data)
        sys.stdout.flush()
        return
    try:
        out.write_bytes(data)
    except OSError as exc:
        fail(f"cannot write {out}: {exc.strerror}", reason="io")
    typer.echo(f"{what} written to {out}", err=True)


def read_in(path: Path) -> bytes:
    try:
        return sys.stdin.buffer.read() if str(path) == "-" else path.read_bytes()
    except OSError as exc:
        fail(f"cannot read {path}: {exc.strerror}", reason="io")


@app.command("init")
def init(
    ctx: typer.Context,
    directory: Path = DirArg,
    hardware_id: str = typer.Option(..., "--hardware-id", help="This device's hardware id."),
    bundle: Path | None = typer.Option(
        None, "--bundle", help="Vendor public bundle JSON (default: from the local vendor keys)."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Create a device state folder that trusts the vendor's public bundle."""
    if bundle is not None:
        try:
            public = PublicBundle.from_json(read_in(bundle))
        except ValueError as exc:
            fail(str(exc), reason="bad_bundle")
    else:
        try:
            public = load_keyring(settings_of(ctx).resolved_keys_dir).public_bundle()
        except KeyringError as exc:
            fail(str(exc), reason="no_keys")
    with friendly():
        device = Device.init(directory, hardware_id, public)
    emit({"device": str(device.directory), "hardware_id": hardware_id,
          "vendor_keys": sorted(public.signing_keys), "sealing_key": public.sealing_kid},
         as_json=as_json)


@app.command("request-activation")
def request_activation(
    directory: Path = DirArg,
    product: str = typer.Option(..., "--product", help="Product code."),
    key: str | None = typer.Option(None, "--key", help="License key."),
    user: str | None = typer.Option(
        None, "--user", help="User email (the password is prompted for, or read from stdin)."),
    hostname: str | None = typer.Option(None, "--hostname", help="Default: this host."),
    os_name: str | None = typer.Option(None, "--os", help="Default: this system."),
    app_version: str | None = typer.Option(None, "--app-version"),
    var: list[str] | None = VarOpt,
    deactivation_delivered: bool = typer.Option(
        False, "--deactivation-delivered",
        help="The last deactivation file reached the vendor (needed to activate another "
             "license after a deactivation)."),
    out: Path = OutOpt,
) -> None:
    """Write a sealed activation request."""
    if (key is None) == (user is None):
        fail("give exactly one of --key or --user", reason="invalid_argument")
    password = read_password() if user is not None else None
    device = open_device(directory)
    with friendly():
        data = device.request_activation(
            product=product, license_key=key, email=user, password=password,
            hostname=hostname or socket.gethostname(),
            os_name=os_name or f"{platform.system()} {platform.release()}".strip(),
            app_version=app_version, variables=parse_vars(var),
            deactivation_delivered=deactivation_delivered)
    write_out(out, data, "activation request")


def read_password() -> str:
    """From a hidden prompt on a terminal, else the first line of stdin; never argv."""
    if sys.stdin.isatty():
        return str(typer.prompt("Password", hide_input=True))
    line = sys.stdin.readline()
    if not line:
        fail("no password on stdin", reason="invalid_argument")
    return line.rstrip("\r\n")


@app.command("load")
def load(directory: Path = DirArg,
         file: Path = typer.Argument(..., help="License or refresh file ('-' = stdin)."),
         as_json: bool = typer.Option(False, "--json")) -> None:
    """Verify and install a license file or a refresh file from the vendor."""
    device = open_device(directory)
    with friendly():
        ent = device.load(read_in(file))
        status = device.status()
    emit({"loaded": str(ent.kind), "license": ent.license_key, "product": ent.product,
          "serial": ent.serial, "issued_at": ent.payload["issued_at"],
          "state": str(status.state)}, as_json=as_json)


@app.command("status")
def status(directory: Path = DirArg, as_json: bool = typer.Option(False, "--json")) -> None:
    """Show what the device may do now (checked offline)."""
    device = open_device(directory)
    with friendly():
        current = device.status()
    data = current.to_dict()
    if as_json:
        emit(data, as_json=True)
        return
    features = data.pop("features")
    emit({k: v for k, v in data.items() if v not in (None, [], {})}, as_json=False)
    if features:
        emit(features, as_json=False, title="features",
             columns=["code", "kind", "enabled", "expires_at", "max", "used", "left"])


@app.command("consume")
def consume(directory: Path = DirArg,
            amount: int = typer.Option(1, "--amount", min=1, help="Units to consume."),
            feature: str | None = typer.Option(None, "--feature",
                                               help="Consumption feature code."),
            as_json: bool = typer.Option(False, "--json")) -> None:
    """Record local consumption (refused beyond the limit and allowed overages)."""
    device = open_device(directory)
    with friendly():
        record = device.consume(amount, feature=feature)
        left = device.consumption_left(feature)
    emit({"seq": record.seq, "amount": record.amount, "feature": record.feature,
          "at": record.at, "head": record.head,
          "left": "unlimited" if left is None else left}, as_json=as_json)


@app.command("deactivate")
def deactivate(directory: Path = DirArg, var: list[str] | None = VarOpt,
               out: Path = OutOpt) -> None:
    """Write the deactivation file (again, if it exists) and stop using the license."""
    device = open_device(directory)
    with friendly():
        data = device.deactivate(variables=parse_vars(var))
    write_out(out, data, "deactivation file")


@app.command("request-refresh")
def request_refresh(directory: Path = DirArg, out: Path = OutOpt) -> None:
    """Write a sealed request for this device's current entitlements."""
    device = open_device(directory)
    with friendly():
        data = device.request_refresh()
    write_out(out, data, "refresh request")


@app.command("release")
def release(ctx: typer.Context, license_key: str = typer.Argument(..., help="License key."),
            hardware_id: str = typer.Argument(..., help="Hardware id of the bound device."),
            as_json: bool = typer.Option(False, "--json")) -> None:
    """Vendor action: free the seat of a device that will never deactivate (replaced
    hardware). Usage it had not reported is lost; the release is audited."""
    with db_session(ctx) as session:
        released = catalog.release_device(session=session, key=license_key,
                                          hardware_id=hardware_id)
    emit(released, as_json=as_json)  # its "note" says that unreported usage is lost
