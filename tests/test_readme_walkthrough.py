"""The README's "Using it" walkthrough, command by command, as a user would type it.

The commands are read from README.md itself; only placeholders are filled in (KEY,
FILE..., DIR, EMAIL, HARDWARE_ID, <request id>, <name>), optional ``[...]`` parts are
dropped, and ``airlock run`` gets ``--drain`` so that it ends once the inbox is empty.
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli.main import app

README = Path(__file__).resolve().parent.parent / "README.md"


def _commands() -> list[str]:
    """Every `airlock ...` line of the walkthrough's code blocks, comments removed."""
    text = README.read_text()
    section = text[text.index("## Using it"):text.index("### Inbox and outbox layout")]
    lines = []
    for block in re.findall(r"```sh\n(.*?)```", section, re.S):
        for line in block.splitlines():
            line = line.split(" # ")[0].strip()
            for command in line.split(" ; "):
                if command.startswith("airlock "):
                    lines.append(re.sub(r"\s*\[[^\]]*\]", "", command).strip())
    return lines


class Walkthrough:
    def __init__(self, home: Path) -> None:
        self.home = home
        self.runner = CliRunner()
        self.readme = _commands()
        self.values: dict[str, str] = {}
        self.ran: list[str] = []

    def line(self, start: str) -> str:
        """The README line that starts with `start` (the first not run yet, if any)."""
        lines = [line for line in self.readme if line.startswith(start)]
        if not lines:
            raise AssertionError(f"the README has no line starting {start!r}")
        return next((line for line in lines if line not in self.ran), lines[0])

    def run(self, start: str, *, extra: tuple[str, ...] = (), stdin: str | None = None,
            ok: bool = True) -> str:
        line = self.line(start)
        self.ran.append(line)
        filled = line
        for name, value in sorted(self.values.items(), key=lambda kv: -len(kv[0])):
            filled = filled.replace(name, value)
        args = [*shlex.split(filled)[1:], *extra]
        result = self.runner.invoke(app, args, input=stdin, env={"AIRLOCK_HOME": None})
        if ok:
            assert result.exit_code == 0, (filled, result.output, result.exception)
        return result.output


    def deliver_and_load(self) -> None:
        """`airlock run` answers the waiting request; the device loads its license."""
        self.run("airlock run", extra=("--drain", "--timeout", "60"))
        status = self.runner.invoke(app, ["device", "status", "dev1", "--json"]).output
        self.values["<request id>"] = json.loads(status)["pending_request"]
        self.run("airlock device load dev1")


@pytest.fixture
def walk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Walkthrough:
    monkeypatch.chdir(tmp_path)  # the README works in ./var
    monkeypatch.delenv("AIRLOCK_HOME", raising=False)
    return Walkthrough(tmp_path / "var")


def test_the_readme_walkthrough_works_as_written(walk: Walkthrough, tmp_path: Path) -> None:
    walk.run("airlock init")
    walk.run("airlock customer add ACME")
    assert (walk.home / "inbox" / "ACME").is_dir() and (walk.home / "outbox" / "ACME").is_dir()
    walk.run("airlock product add pro")
    walk.run("airlock policy add pro-annual")
    walk.values["KEY"] = json.loads(walk.run("airlock license add --customer ACME --policy"))[
        "key"]
    user_license = walk.run("airlock license add --customer ACME --product pro --user",
                            stdin="long-password\n")
    assert "key" in user_license
    walk.run("airlock license show KEY")
    walk.run("airlock license update KEY")

    # The device's files go through the drop folder and `airlock run`.
    walk.run("airlock device init dev1")
    walk.run("airlock device request-activation dev1 --product pro --key KEY --out "
             "var/inbox/ACME/hw1.req")
    walk.deliver_and_load()
    walk.run("airlock device consume dev1")
    status = json.loads(walk.run("airlock device status dev1"))
    assert status["state"] == "valid"
    walk.run("airlock device deactivate dev1")
    walk.run("airlock run", extra=("--drain", "--timeout", "60"))
    walk.run("airlock device request-activation dev1 --product pro --key KEY --out "
             "var/inbox/ACME/hw1-again.req")
    walk.deliver_and_load()
    shown = json.loads(walk.runner.invoke(app, ["license", "show", walk.values["KEY"],
                                                "--json"]).output)
    assert shown["consumptions"]["total"] == 5  # billed once, by the deactivation
    assert shown["active_devices"] == 1

    # The vendor's other commands.
    other = tmp_path / "dev2"
    walk.runner.invoke(app, ["device", "init", str(other), "--hardware-id", "HW-2"])
    request = tmp_path / "dev2.req"
    walk.runner.invoke(app, ["device", "request-activation", str(other), "--product", "pro",
                             "--key", walk.values["KEY"], "--out", str(request)])
    walk.values["FILE..."] = str(request)
    walk.run("airlock process FILE...")
    walk.values["DIR"] = str(tmp_path / "refresh")
    walk.run("airlock refresh KEY --out DIR")
    assert list((tmp_path / "refresh").rglob("license_refresh.lic"))
    walk.run("airlock refresh-request --license KEY")
    walk.values.update({"EMAIL": "ana@acme.example", "HARDWARE_ID": "HW-2"})
    users = json.loads(walk.runner.invoke(app, ["license", "list", "--json"]).output)
    user_key = next(lic["key"] for lic in users if lic["auth_method"] == "user")
    walk.values["unlock KEY"] = f"unlock {user_key}"
    walk.run("airlock license unlock KEY --user EMAIL")
    walk.run("airlock device release KEY HARDWARE_ID")
    listed = json.loads(walk.run("airlock outbox list --customer ACME --json"))
    walk.values["<name>"] = listed[0]["key"].split("/", 1)[1]
    walk.run("airlock outbox get ACME/<name>")
    walk.run("airlock keys rotate")
    walk.run("airlock keys export-public")
    walk.run("airlock device request-refresh dev1")
    skipped = [line for line in walk.readme if line not in walk.ran]
    assert skipped == [], f"README commands the walkthrough did not run: {skipped}"
