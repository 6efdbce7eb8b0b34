"""Vendor keyring commands."""

from __future__ import annotations

from pathlib import Path

import typer

from cli.common import emit, fail, keyring_of, settings_of
from pipelines.keyring import KeyringError, rotate_keyring

keys_app = typer.Typer(help="Vendor signing and sealing keys.", no_args_is_help=True)


@keys_app.command("rotate")
def keys_rotate(ctx: typer.Context, as_json: bool = typer.Option(False, "--json")) -> None:
    """Add a new current key pair; files signed with older keys still verify."""
    try:
        ring = rotate_keyring(settings_of(ctx).resolved_keys_dir)
    except KeyringError as exc:
        fail(str(exc), reason="no_keys")
    emit({"signing": ring.current_signing, "sealing": ring.current_sealing,
          "signing_keys": sorted(ring.signing)}, as_json=as_json)


@keys_app.command("export-public")
def keys_export_public(ctx: typer.Context, out: Path | None = typer.Option(
        None, "--out", help="File to write; stdout if not given")) -> None:
    """Write the public bundle an application embeds (verification and sealing keys)."""
    text = keyring_of(ctx).public_bundle().to_json()
    if out is None:
        typer.echo(text, nl=False)
    else:
        out.write_text(text)
        typer.echo(f"wrote {out}", err=True)


@keys_app.command("list")
def keys_list(ctx: typer.Context, as_json: bool = typer.Option(False, "--json")) -> None:
    """List key ids; the current ones are marked."""
    ring = keyring_of(ctx)
    rows = [{"kid": kid, "use": "signing", "current": kid == ring.current_signing}
            for kid in ring.signing]
    rows += [{"kid": kid, "use": "sealing", "current": kid == ring.current_sealing}
             for kid in ring.sealing]
    emit(rows, as_json=as_json, title="Vendor keys")
