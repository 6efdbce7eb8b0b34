"""Walking the drop folder: the area folders, the files in them, and rechecks."""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Iterable, Iterator
from typing import NamedTuple

from pipelines.layout import OPERATOR, PROCESSING, is_area, is_temporary_name
from pipelines.sources.dropfolder.fs import Root

log = logging.getLogger(__name__)


class Area(NamedTuple):
    """A tenant or operator folder: its key (``ACME`` or ``_processing/ACME``), path
    and inode (a folder replaced under the same name has a new one)."""

    key: str
    path: str
    inode: int


class WarnOnce:
    """Warns about a name once, not on every scan (bounded, for a folder of junk)."""

    def __init__(self) -> None:
        self._warned: set[str] = set()

    def __call__(self, what: str, message: str, *args: object) -> None:
        if what not in self._warned and len(self._warned) < 10_000:
            self._warned.add(what)
            log.warning(message, what, *args)


class Tree:
    """Lists what is in the inbox; ignores (and warns once about) what is not for anyone."""

    def __init__(self, root: Root, warn: WarnOnce) -> None:
        self.root = root
        self.warn = warn

    def arrival_areas(self) -> list[Area]:
        return self._areas(self.root.path, None)

    def processing_areas(self) -> list[Area]:
        return self._areas(os.path.join(self.root.path, PROCESSING), PROCESSING)

    def _areas(self, base: str, prefix: str | None) -> list[Area]:
        """The area folders in `base` (the root, or ``_processing``)."""
        try:
            with os.scandir(base) as it:
                top = sorted(it, key=lambda e: e.name)
        except FileNotFoundError:
            return []
        areas = []
        for entry in top:
            name = entry.name
            if not entry.is_dir(follow_symlinks=False):
                if prefix is None and entry.is_file(follow_symlinks=False) \
                        and not is_temporary_name(name):
                    self.warn(name, "ignoring %s: files directly in the inbox root "
                                    "are not for anyone; put them in a customer folder")
                continue
            if name.startswith(".") or (prefix is None and name.startswith("_")
                                        and name != OPERATOR):
                continue
            if not is_area(name):
                self.warn(name + "/", "ignoring folder %s: not a customer code")
                continue
            areas.append(Area(name if prefix is None else f"{prefix}/{name}", entry.path,
                              entry.inode()))
        return areas

    def files(self, areas: Iterable[Area]) -> Iterator[tuple[str, os.DirEntry[str]]]:
        """(key, entry) of every non-temporary entry under `areas` that is not a folder:
        regular files, and the symlinks, FIFOs, sockets and devices that must end in
        quarantine. A key may be one no store accepts (not UTF-8, control characters,
        too long): the claim renames such an entry before anything else."""
        for area in areas:
            yield from self._walk(area.path, area.key)

    def arrivals(self, areas: Iterable[Area]) -> Iterator[tuple[str, os.stat_result]]:
        """(key, lstat) of every candidate entry in the arrival `areas`."""
        for key, entry in self.files(areas):
            try:
                yield key, entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue

    def processing_keys(self) -> list[str]:
        """The keys of every entry in ``_processing/`` (files, and what was claimed to
        be quarantined)."""
        return [key for key, _entry in self.files(self.processing_areas())]

    def recheck(self, keys: Iterable[str]) -> Iterator[tuple[str, os.stat_result | None]]:
        """(key, lstat) of each of `keys`: None for one that is gone or a folder."""
        for key in sorted(keys):
            try:
                st = os.stat(self.root.of(key), follow_symlinks=False)
            except (FileNotFoundError, NotADirectoryError):
                yield key, None
                continue
            yield key, None if stat.S_ISDIR(st.st_mode) else st

    def _walk(self, path: str, key: str) -> Iterator[tuple[str, os.DirEntry[str]]]:
        stack = [(path, key)]
        while stack:
            folder, folder_key = stack.pop()
            try:
                with os.scandir(folder) as it:
                    entries = sorted(it, key=lambda e: e.name, reverse=True)
            except (FileNotFoundError, NotADirectoryError):
                continue
            except PermissionError as exc:
                self.warn(folder_key + "/", "cannot read folder %s: %s", exc)
                continue
            for entry in entries:
                if entry.name.startswith("."):
                    continue
                entry_key = f"{folder_key}/{entry.name}"
                if entry.is_dir(follow_symlinks=False):
                    stack.append((entry.path, entry_key))
                elif not is_temporary_name(entry.name):
                    yield entry_key, entry
