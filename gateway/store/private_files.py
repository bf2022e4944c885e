"""Where secrets live on disk: directories 0700 and files 0600, whatever the umask.

The state directory holds key hashes, stored answers, webhook secrets and the admin token.
Modes are set when a path is made (``mkdir``/``open`` modes are masked by the umask, so an
explicit ``chmod`` follows), never left to the process's umask.

An existing directory is not changed: it may be shared (the working directory, ``/var/lib``).
It is reported when group or others may list it; the files in it are owner-only regardless.
An existing file of ours that group or others may read is tightened, and reported.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import structlog

log = structlog.get_logger("gateway.store")

DIR_MODE = 0o700
FILE_MODE = 0o600
_GROUP_OR_OTHERS = 0o077


@dataclass(frozen=True, slots=True)
class LooseMode:
    """A path that group or others could reach when the gateway found it."""

    event: str  # state_dir_not_private | state_file_tightened | state_file_not_private
    path: Path
    mode: int

    def log(self) -> None:
        fields = {"path": str(self.path), "mode": f"{self.mode:04o}"}
        if self.event == "state_dir_not_private":
            fields["hint"] = f"chmod 700 {self.path}"
        log.warning(self.event, **fields)


def report(found: Iterable[LooseMode | None]) -> None:
    """Log what was found; called on the event loop (the log writer is not thread-safe)."""
    for item in found:
        if item is not None:
            item.log()


def private_dir(path: Path) -> LooseMode | None:
    """Make ``path`` (and any missing parent) if it is missing; the new directory is 0700."""
    try:
        path.mkdir(mode=DIR_MODE, parents=True)
    except FileExistsError:
        mode = stat.S_IMODE(path.stat().st_mode)
        return LooseMode("state_dir_not_private", path, mode) if mode & _GROUP_OR_OTHERS else None
    # SECURITY: mkdir's mode is masked by the umask (never looser, but maybe unusable); chmod's
    # is exact.
    os.chmod(path, DIR_MODE)
    return None


def private_file(path: Path) -> LooseMode | None:
    """Make ``path`` empty and 0600 if it is missing; tighten it if it is not owner-only."""
    try:
        # SECURITY: created owner-only from the start: no moment where another user may open it.
        fd = os.open(path, os.O_RDONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, FILE_MODE)
    except FileExistsError:
        return tighten(path)
    try:
        os.fchmod(fd, FILE_MODE)  # exact, whatever the umask left of FILE_MODE
    finally:
        os.close(fd)
    return None


def tighten(path: Path) -> LooseMode | None:
    """An existing file of ours that group or others may reach becomes 0600; a missing one is
    left missing."""
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        return None
    if not mode & _GROUP_OR_OTHERS:
        return None
    try:
        os.chmod(path, FILE_MODE)
    except PermissionError:  # another user's file: say so rather than refuse to start
        return LooseMode("state_file_not_private", path, mode)
    return LooseMode("state_file_tightened", path, mode)
