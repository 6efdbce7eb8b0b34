"""A `Store` over a local folder (or a mounted share): one file per key."""

from __future__ import annotations

import builtins
import contextlib
import ctypes
import errno
import os
import re
import secrets
import shutil
import stat
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import IO

from airlock_sdk.store import fsync_dir
from pipelines.storage.base import (
    InvalidKey,
    ObjectInfo,
    ObjectTooLarge,
    check_key,
    check_prefix,
)

# Our own in-flight writes: ".<name>.airlock-<hex>.tmp" next to the final file. The
# leading dot and the .tmp suffix make folder watchers and the arrival layout ignore it.
_TEMP_NAME = re.compile(r"^\..*\.airlock-[0-9a-f]{16}\.tmp$", re.DOTALL)

# Files at rest are not world-readable: results, reports and archived uploads are
# owner read/write, group read (the operator's tooling); folders owner + group.
DEFAULT_FILE_MODE = 0o640
DEFAULT_DIR_MODE = 0o750
_LAYOUT_DEPTH = 2  # folder levels below the root that only the operator changes


def _load_syncfs() -> Callable[[int], int] | None:
    try:
        func = ctypes.CDLL(None, use_errno=True).syncfs
    except (OSError, AttributeError):
        return None
    func.argtypes = [ctypes.c_int]
    func.restype = ctypes.c_int
    return func  # type: ignore[no-any-return]


_SYNCFS = _load_syncfs()  # Linux: flush one file system, not every mounted one


def write_all(fd: int, data: bytes | bytearray | memoryview) -> None:
    """Write all of `data` to `fd` (a write may take only part of it)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _unlink_quietly(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def _is_own_temp(name: str) -> bool:
    return _TEMP_NAME.match(name) is not None


def _load_renameat2() -> Callable[..., int] | None:
    try:
        func = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return None
    func.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p,
                     ctypes.c_uint]
    func.restype = ctypes.c_int
    return func


_RENAMEAT2 = _load_renameat2()
_AT_FDCWD, _RENAME_NOREPLACE = -100, 1


def rename_noreplace(src: str, dst: str) -> None:
    """Rename `src` to `dst` atomically; FileExistsError instead of replacing `dst`.

    Uses Linux ``renameat2(RENAME_NOREPLACE)``; where that is unavailable (another OS,
    or a file system without support) it checks for `dst` first, which leaves a tiny
    window in which a racing rename of the same name could be replaced.
    """
    if _RENAMEAT2 is not None:
        if _RENAMEAT2(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst),
                      _RENAME_NOREPLACE) == 0:
            return
        err = ctypes.get_errno()
        if err not in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
            raise OSError(err, os.strerror(err), src, None, dst)
    if os.path.lexists(dst):
        raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), dst)
    os.rename(src, dst)


class LocalStore:
    """Files under `root`; keys map to relative paths, checked to stay inside `root`.

    Every file the store creates (or moves into place) gets exactly `file_mode`, and
    every folder it creates `dir_mode`, whatever the process umask.
    """

    def __init__(self, root: Path | str, *, file_mode: int = DEFAULT_FILE_MODE,
                 dir_mode: int = DEFAULT_DIR_MODE) -> None:
        for name, mode in (("file_mode", file_mode), ("dir_mode", dir_mode)):
            if not 0 <= mode <= 0o777:
                raise ValueError(f"{name} must be permission bits (0..0o777), got {mode:#o}")
        self.file_mode = file_mode
        self.dir_mode = dir_mode
        self.root = Path(root).resolve()
        self._root_text = str(self.root)
        self.location = self.root.as_uri()
        self._made_dirs: set[str] = set()  # folders known to exist: no mkdir per write
        self._plain_dirs: set[str] = set()  # layout folders found not to be symlinks

    def __repr__(self) -> str:
        return f"LocalStore({str(self.root)!r})"

    # --- key → path -------------------------------------------------------------------

    def path_for(self, key: str, *, follow: bool = True) -> Path:
        """The file path for `key`; `InvalidKey` if the key is unsafe or the resolved
        path (following any symlinked folders) would leave the store root. With
        `follow=False` a symlink that is the key's last segment is the entry itself
        (to move it, never to read through it), so where it points does not matter."""
        return Path(self._resolve(key, follow=follow)[0])

    def _resolve(self, key: str, *, follow: bool = True, look_at_last: bool = True
                 ) -> tuple[str, os.stat_result | None]:
        """`path_for` as text, with the ``lstat`` of the entry itself (None if it is
        missing, or not looked at: `look_at_last=False` for a rename's target, which
        replaces a symlink there rather than following it)."""
        check_key(key)
        parts = key.split("/")
        last = len(parts) - 1
        # The root was resolved once, when the operator configured it. Below it, a
        # symlinked folder or file could point anywhere: each existing component is
        # lstat'ed (cheap), and only a symlink costs a full resolve and check. The
        # folders of the first two levels are the operator's layout (``_processed/``,
        # an area): found to be plain folders once, they are not looked at again.
        # Plain strings: building pathlib objects per component cost more than lstats.
        current = self._root_text
        entry: os.stat_result | None = None
        for index, part in enumerate(parts):
            current = f"{current}{os.sep}{part}"
            if index < last and current in self._plain_dirs:
                continue
            if index == last and not look_at_last:
                break
            try:
                st = os.lstat(current)
            except (FileNotFoundError, NotADirectoryError):
                break  # the rest does not exist: nothing to follow
            if stat.S_ISLNK(st.st_mode) and not (index == last and not follow):
                resolved = Path(os.path.realpath(f"{self._root_text}{os.sep}{key}"))
                if not resolved.is_relative_to(self.root) or resolved == self.root:
                    raise InvalidKey(f"key {key!r} resolves outside {self.location}")
                entry = os.lstat(current) if index == last else None
                break
            if index == last:
                entry = st
            elif index < _LAYOUT_DEPTH and stat.S_ISDIR(st.st_mode):
                self._plain_dirs.add(current)
        return f"{self._root_text}{os.sep}{key}", entry

    def _file_stat(self, key: str) -> os.stat_result:
        path = self.path_for(key)
        try:
            st = path.stat()
        except NotADirectoryError:
            raise FileNotFoundError(errno.ENOENT, "no such object", key) from None
        if not stat.S_ISREG(st.st_mode):
            raise FileNotFoundError(errno.ENOENT, "no such object", key)
        return st

    def _entry_stat(self, key: str) -> os.stat_result:
        """The ``lstat`` of the entry at `key` that is not a folder: a file, or a
        symlink, FIFO, socket or device (moved, never opened). The resolution's own
        ``lstat`` of the entry is used when it made one (one ``lstat`` per key)."""
        path, st = self._resolve(key, follow=False)
        if st is None:  # missing, or behind a symlinked folder the resolution checked
            try:
                st = os.lstat(path)
            except NotADirectoryError:
                raise FileNotFoundError(errno.ENOENT, "no such object", key) from None
        if stat.S_ISDIR(st.st_mode):
            raise FileNotFoundError(errno.ENOENT, "no such object", key)
        return st

    # --- writing ----------------------------------------------------------------------

    def make_folder(self, prefix: str) -> None:
        self._ensure_dir(self._resolve(prefix)[0])

    def _ensure_dir(self, folder: str) -> None:
        """Make `folder` (and any missing folder between it and the root, or the root
        itself) with exactly `dir_mode`; folders that already exist are left alone.
        Paths are plain strings here: this runs for every file written."""
        if folder in self._made_dirs:
            return
        missing: list[str] = []
        current = folder
        while not os.path.exists(current) and current != os.path.dirname(current):
            missing.append(current)
            current = os.path.dirname(current)
        if not missing and not os.path.isdir(folder):
            os.mkdir(folder)  # FileExistsError: a file sits where the folder should be
        for made in reversed(missing):
            try:  # NotADirectoryError if an existing ancestor is a file
                os.mkdir(made, self.dir_mode)
            except FileExistsError:
                if not os.path.isdir(made):
                    raise
                continue  # a racing writer made it
            os.chmod(made, self.dir_mode)  # the umask may have narrowed (or kept) bits
        self._made_dirs.add(folder)

    def _open_new(self, path: str) -> int:
        """An exclusive create with exactly `file_mode` (fchmod: the umask only masks)."""
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, self.file_mode)
        try:
            os.fchmod(fd, self.file_mode)
        except BaseException:
            os.close(fd)
            os.unlink(path)
            raise
        return fd

    def _write_temp(self, path: str, data: bytes | IO[bytes], *, fsync: bool = True) -> str:
        """Write `data` (bytes, or a file read to its end) to a fresh temp file beside
        `path`, created with `file_mode` and flushed to disk (unless the caller makes a
        whole batch durable at once with `sync`)."""
        folder, name = os.path.split(path)
        self._ensure_dir(folder)
        tmp = f"{folder}{os.sep}.{name}.airlock-{secrets.token_hex(8)}.tmp"
        try:
            fd = self._open_new(tmp)
        except FileNotFoundError:  # the folder was removed since we made it
            self._made_dirs.discard(folder)
            self._ensure_dir(folder)
            fd = self._open_new(tmp)
        try:
            if isinstance(data, bytes | bytearray | memoryview):
                try:  # straight to the descriptor: a file object costs three syscalls more
                    write_all(fd, data)
                    if fsync:
                        os.fsync(fd)
                finally:
                    os.close(fd)
            else:
                with os.fdopen(fd, "wb") as fh:
                    shutil.copyfileobj(data, fh, 1024 * 1024)
                    if fsync:
                        fh.flush()
                        os.fsync(fh.fileno())
        except BaseException:
            _unlink_quietly(tmp)
            raise
        return tmp

    _sync_dir = staticmethod(fsync_dir)

    def put(self, key: str, data: bytes) -> None:
        """Write via a temp file in the same folder, fsync, then `os.replace`."""
        self._put(key, data, durable=True)

    def put_file(self, key: str, fileobj: IO[bytes]) -> None:
        """`put`, copying from `fileobj` in blocks."""
        self._put(key, fileobj, durable=True)

    def put_many(self, items: Iterable[tuple[str, bytes]], *, durable: bool = True) -> None:
        """`put` each (key, data), atomically each, durable all together: one `sync`
        after the batch instead of two fsyncs per file (`durable=False`: the caller
        syncs later)."""
        for key, data in items:
            self._put(key, data, durable=False)
        if durable:
            self.sync()

    def _put(self, key: str, data: bytes | IO[bytes], *, durable: bool) -> None:
        # The replace takes the place of whatever entry is at `key` (a symlink there is
        # replaced, never written through): only the folders on the way are checked.
        path = self._resolve(key, look_at_last=False)[0]
        tmp = self._write_temp(path, data, fsync=durable)
        try:
            os.replace(tmp, path)
        except BaseException:
            _unlink_quietly(tmp)
            raise
        if durable:
            self._sync_dir(os.path.dirname(path))

    def sync(self) -> None:
        """Flush everything written under the root (data and folder entries) to disk:
        ``syncfs`` of the store's file system where available, else ``os.sync``."""
        try:
            fd = os.open(self.root, os.O_RDONLY)
        except FileNotFoundError:
            return  # nothing was ever written here
        try:
            if _SYNCFS is None or _SYNCFS(fd) != 0:
                os.sync()
        finally:
            os.close(fd)

    def put_if_absent(self, key: str, data: bytes, *, durable: bool = True) -> bool:
        """Hard-link a complete temp file into place; False if `key` already exists.
        `durable=False`: the caller makes a whole batch durable at once with `sync`.

        Where hard links are unsupported, falls back to an exclusive create.
        """
        path = self._resolve(key)[0]
        tmp = self._write_temp(path, data, fsync=durable)
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        except OSError as exc:
            if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV):
                raise
            return self._create_exclusive(path, data)
        finally:
            _unlink_quietly(tmp)
        if durable:
            self._sync_dir(os.path.dirname(path))
        return True

    def _create_exclusive(self, path: str, data: bytes) -> bool:
        try:
            fd = self._open_new(path)
        except FileExistsError:
            return False
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        return True

    # --- reading ----------------------------------------------------------------------

    def get(self, key: str) -> bytes:
        """The file's bytes; `FileNotFoundError` if missing (or not a regular file)."""
        self._file_stat(key)
        try:
            return self.path_for(key).read_bytes()
        except (IsADirectoryError, NotADirectoryError):
            raise FileNotFoundError(errno.ENOENT, "no such object", key) from None

    @contextmanager
    def open(self, key: str, *, limit: int | None = None) -> Iterator[IO[bytes]]:
        """The file opened in place, read-only. Never a FIFO, device or symlink: opened
        with O_NONBLOCK | O_NOFOLLOW and checked to be a regular file before any read;
        a file over `limit` is refused from its size."""
        path = self.path_for(key)
        flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0) | getattr(
            os, "O_CLOEXEC", 0)
        try:
            fd = os.open(path, flags)
        except (OSError, ValueError) as exc:  # ELOOP: a symlink; ENXIO: a socket
            if isinstance(exc, PermissionError):
                raise
            raise FileNotFoundError(errno.ENOENT, "no such object", key) from exc
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise FileNotFoundError(errno.ENOENT, "no such object", key)
            if limit is not None and st.st_size > limit:
                raise ObjectTooLarge(key, st.st_size, limit)
            os.set_blocking(fd, True)
            handle = os.fdopen(fd, "rb")
        except BaseException:
            os.close(fd)
            raise
        with handle:
            yield handle

    def head(self, key: str) -> ObjectInfo:
        """Size and modification time; `FileNotFoundError` if missing."""
        st = self._file_stat(key)
        return ObjectInfo(key, st.st_size, datetime.fromtimestamp(st.st_mtime, tz=UTC))

    def exists(self, key: str) -> bool:
        """True if an entry other than a folder is under `key`: a regular file, or a
        symlink, FIFO, socket or device left to archive (never followed or opened)."""
        try:
            self._entry_stat(key)
        except FileNotFoundError:
            return False
        return True

    def which_exist(self, keys: Iterable[str]) -> set[str]:
        """One ``stat`` per key."""
        return {key for key in keys if self.exists(key)}

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Regular files whose key starts with `prefix`, sorted by key.

        Symlinks and this store's own temp files are skipped.
        """
        check_prefix(prefix)
        return iter(self._scan(prefix))

    def _scan(self, prefix: str) -> builtins.list[ObjectInfo]:
        folder, _, _ = prefix.rpartition("/")
        start = self.root.joinpath(*folder.split("/")) if folder else self.root
        if start.is_symlink() or not start.resolve().is_relative_to(self.root):
            return []
        found: list[ObjectInfo] = []
        for dirpath, dirnames, filenames in os.walk(start, followlinks=False):
            rel_dir = os.path.relpath(dirpath, self.root)
            base = "" if rel_dir == "." else rel_dir.replace(os.sep, "/") + "/"
            dirnames[:] = [d for d in dirnames if _could_match(base + d + "/", prefix)]
            for name in filenames:
                key = base + name
                if not key.startswith(prefix) or _is_own_temp(name):
                    continue
                try:
                    st = os.lstat(os.path.join(dirpath, name))
                    check_key(key)
                except (OSError, InvalidKey):
                    continue
                if stat.S_ISREG(st.st_mode):
                    modified = datetime.fromtimestamp(st.st_mtime, tz=UTC)
                    found.append(ObjectInfo(key, st.st_size, modified))
        found.sort(key=lambda info: info.key)
        return found

    # --- removing and renaming --------------------------------------------------------

    def remove_stale_temp(self, older_than: float) -> int:
        """Remove our ``.<name>.airlock-<hex>.tmp`` files not modified for `older_than`
        seconds (a SIGKILL between write and rename leaves one); other files, and temp
        files a live writer may still be filling, are left alone."""
        cutoff = time.time() - older_than
        removed = 0
        for dirpath, dirnames, filenames in os.walk(self.root, followlinks=False):
            dirnames[:] = [d for d in dirnames if not os.path.islink(os.path.join(dirpath, d))]
            for name in filenames:
                if not _is_own_temp(name):
                    continue
                path = os.path.join(dirpath, name)
                try:
                    st = os.lstat(path)
                    if stat.S_ISREG(st.st_mode) and st.st_mtime < cutoff:
                        os.unlink(path)
                        removed += 1
                except FileNotFoundError:
                    continue
        return removed

    def delete(self, key: str) -> None:
        """Remove the file; a missing file is fine."""
        path = self.path_for(key)
        try:
            if path.is_dir() and not path.is_symlink():
                return
            path.unlink()
        except (FileNotFoundError, NotADirectoryError):
            return

    def move(self, src: str, dst: str, *, durable: bool = True, replace: bool = True) -> None:
        """Atomic `os.replace` within the root (same filesystem), replacing `dst`.

        The moved file keeps its content and ends with `file_mode` (an upload arrives
        with whatever mode the uploader gave it).
        `durable=False` leaves the folder fsync to a later `sync` of a whole batch;
        `replace=False` raises FileExistsError instead of replacing an existing `dst`.
        An entry that is not a regular file (a symlink, a FIFO) moves as it is: a
        symlink's rename moves the link, never its target.
        """
        rename = os.replace if replace else rename_noreplace
        src_text, st = self._resolve(src, follow=False)
        if st is None or stat.S_ISDIR(st.st_mode):
            raise FileNotFoundError(errno.ENOENT, "no such object", src)
        dst_text, _ = self._resolve(dst, look_at_last=False)
        dst_folder = os.path.dirname(dst_text)
        self._ensure_dir(dst_folder)
        try:
            rename(src_text, dst_text)
        except FileNotFoundError:
            if os.path.lexists(src_text):  # our folder was removed since we made it
                self._made_dirs.discard(dst_folder)
                self._plain_dirs.clear()
                self._ensure_dir(dst_folder)
                rename(src_text, dst_text)
            else:
                raise
        if stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) != self.file_mode:
            self._set_file_mode(dst_text)  # a rename keeps the mode: only then chmod
        if durable:
            self._sync_dir(dst_folder)

    def _set_file_mode(self, path: str) -> None:
        """chmod the regular file just moved to `path` (in a folder of ours) to
        `file_mode`; a file another user owns (a shared drop folder), which we may not
        chmod, is left as it is: the move has happened."""
        try:
            os.chmod(path, self.file_mode)
        except (FileNotFoundError, PermissionError):
            return


def _could_match(dir_key: str, prefix: str) -> bool:
    """Could a folder whose keys start with `dir_key` hold a key starting with `prefix`?"""
    return dir_key.startswith(prefix) or prefix.startswith(dir_key)
