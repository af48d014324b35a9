"""Files in a session's directory: paths that cannot lead out of it, listings, streamed uploads.

A session's directory is its kernel's working directory, so the kernel (any code an agent
runs) can put symlinks in it. Every path is therefore checked twice: as text (no ``..``,
no absolute path) and as the file the operating system opens (the opened descriptor's
real path must lie inside the directory), so neither a symlink out nor one swapped in
between the check and the use reaches another session's files or the server's.
"""

from __future__ import annotations

import datetime
import os
import shutil
import stat
import uuid
from pathlib import Path
from typing import Any

from .errors import BadRequest, Conflict, Forbidden, NotFound, PayloadTooLarge

CHUNK = 1 << 16  # bytes read from a file per write to the client
MAX_LISTING = 10_000  # entries one listing returns at most


def uploads_dir(root: Path) -> Path:
    """Where uploads are written until complete: beside the sessions, never inside one (no id starts with '.')."""
    return root / ".uploads"


def _inside(base: str, real: str) -> bool:
    return real == base or real.startswith(base + os.sep)


def _parts(relative: str) -> list[str]:
    if not isinstance(relative, str) or "\x00" in relative:
        raise BadRequest("a file path must be text without NUL characters")
    if relative.startswith(("/", "\\")) or os.path.isabs(relative):
        raise Forbidden(f"absolute paths are refused ({relative!r}); paths are relative to the session's directory")
    parts = [p for p in relative.replace("\\", "/").split("/") if p not in ("", ".")]
    if ".." in parts:
        raise Forbidden(f"'..' is refused in paths ({relative!r}); paths stay inside the session's directory")
    return parts


def resolve(directory: Path, relative: str, *, must_exist: bool = True, follow: bool = True) -> Path:
    """``relative`` inside ``directory``, checked: Forbidden if it leads out, NotFound if missing (``must_exist``).

    With ``follow`` the result is the real path (symlinks inside the directory resolved);
    without, the last component is left as it is (to delete a symlink itself).
    """
    parts = _parts(relative)
    base = os.path.realpath(directory)
    if not parts:
        return Path(base)
    path = Path(base, *parts)
    parent = os.path.realpath(path.parent)
    real = os.path.realpath(path) if follow else os.path.join(parent, path.name)
    if not _inside(base, parent) or not _inside(base, real):
        raise Forbidden(f"{relative!r} leads out of the session's directory (through a symlink)")
    if must_exist and not os.path.lexists(real):
        raise NotFound(f"no file {relative!r} in the session's directory")
    return Path(real)


def check_opened(directory: Path, fd: int, relative: str) -> None:
    """Forbidden unless the opened descriptor ``fd`` is inside ``directory`` (the caller closes it)."""
    real = os.path.realpath(f"/proc/self/fd/{fd}") if os.path.exists("/proc/self/fd") else None
    if real is not None and not _inside(os.path.realpath(directory), real):
        raise Forbidden(f"{relative!r} leads out of the session's directory (through a symlink)")


def open_for_reading(directory: Path, relative: str) -> tuple[int, int]:
    """(descriptor, size) of the regular file ``relative``; NotFound for a directory or nothing there."""
    path = resolve(directory, relative)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as exc:
        raise NotFound(f"cannot read {relative!r}: {exc.strerror}") from None
    try:
        check_opened(directory, fd, relative)
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise NotFound(f"{relative!r} is not a file; GET files/ lists the session's files")
    except BaseException:
        os.close(fd)
        raise
    return fd, info.st_size


def _entry(base: str, path: str, info: os.stat_result) -> dict[str, Any]:
    kind = "directory" if stat.S_ISDIR(info.st_mode) else "symlink" if stat.S_ISLNK(info.st_mode) else "file"
    modified = datetime.datetime.fromtimestamp(info.st_mtime, datetime.timezone.utc).isoformat().replace("+00:00", "Z")
    return {"path": os.path.relpath(path, base), "type": kind, "size": info.st_size, "modified": modified}


def listing(directory: Path, relative: str = "") -> list[dict[str, Any]]:
    """Every file and directory below ``relative`` (recursively, symlinks listed, not followed), sorted."""
    top = resolve(directory, relative)
    if not top.is_dir():
        raise NotFound(f"{relative!r} is not a directory")
    base = os.path.realpath(directory)
    out: list[dict[str, Any]] = []
    for here, dirs, names in os.walk(top):
        for name in sorted(dirs) + sorted(names):
            path = os.path.join(here, name)
            try:
                out.append(_entry(base, path, os.lstat(path)))
            except OSError:
                continue  # removed meanwhile
            if len(out) >= MAX_LISTING:
                return out
    return sorted(out, key=lambda e: e["path"])


def delete(directory: Path, relative: str) -> None:
    """Remove the file, symlink or directory tree ``relative`` (never the session's directory itself)."""
    if not _parts(relative):
        raise BadRequest("name a file to delete; DELETE the session to remove all of its files")
    path = resolve(directory, relative, follow=False)
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()


class Upload:
    """A file being received: written to a private temporary file, moved into place only when complete.

    Past ``limit`` bytes, or on :meth:`abort`, the temporary file is removed: a refused or
    broken upload leaves nothing behind, and the old file (if any) is untouched.
    """

    def __init__(self, root: Path, directory: Path, relative: str, limit: int) -> None:
        self.directory = directory
        self.relative = relative
        self.limit = limit
        self.size = 0
        if not _parts(relative):
            raise BadRequest("name the file to upload: PUT .../files/NAME")
        self.target = resolve(directory, relative, must_exist=False)
        if self.target.is_dir():
            raise Conflict(f"{relative!r} is a directory")
        self.temp = uploads_dir(root) / f"{uuid.uuid4().hex}.part"
        self._file = open(self.temp, "xb")

    def write(self, chunk: bytes) -> None:
        """Append ``chunk``; PayloadTooLarge (and nothing left behind) past the limit."""
        self.size += len(chunk)
        if self.size > self.limit:
            self.abort()
            raise PayloadTooLarge(f"the upload is over the limit of {self.limit:,} bytes; nothing was written")
        self._file.write(chunk)

    def commit(self) -> bool:
        """Move the complete file into place (creating its directories); True if it is new."""
        self._file.close()
        try:
            parent = self.target.parent
            parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
            try:
                check_opened(self.directory, fd, self.relative)
                created = not os.path.lexists(os.path.join(parent, self.target.name))
                os.replace(self.temp, self.target.name, dst_dir_fd=fd)
            finally:
                os.close(fd)
            return created
        finally:
            self.temp.unlink(missing_ok=True)

    def abort(self) -> None:
        """Drop the partial file."""
        self._file.close()
        self.temp.unlink(missing_ok=True)
