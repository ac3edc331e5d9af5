"""Who may read sensitive files: raw datasets (before sanitize) and key files.

Raw datasets hold personal data and are written owner-only (files 0600, directories 0700);
`--group NAME` shares them with one group (0640/0750, group set to NAME). Modes are set
explicitly, not left to the umask: a umask of 022 would otherwise make every captured body
world-readable. Sanitized datasets are meant to travel and keep the umask's modes.

Key files are refused when group or others have any permission on them, as ssh refuses a
private key: whoever reads the key can reverse every pseudonym by brute force.
"""

from __future__ import annotations

import grp
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from shadowtape.errors import InputError

OWNER_FILE, OWNER_DIR = 0o600, 0o700
GROUP_FILE, GROUP_DIR = 0o640, 0o750


class ExposedKeyError(InputError):
    """A key file that other users can read."""


@dataclass(frozen=True, slots=True)
class FileAccess:
    """Modes (and group) for files a stage writes; picklable, so workers get it too."""

    file_mode: int = OWNER_FILE
    dir_mode: int = OWNER_DIR
    gid: int | None = None
    group: str | None = None

    @classmethod
    def private(cls, group: str | None = None) -> FileAccess:
        """Owner-only, or owner plus the named group (`--group NAME`)."""
        if not group:
            return cls()
        try:
            gid = grp.getgrnam(group).gr_gid
        except KeyError:
            raise InputError(
                f"--group {group}: no such group on this machine; `getent group` lists them"
            ) from None
        return cls(GROUP_FILE, GROUP_DIR, gid, group)

    def _own(self, path: Path, fd: int | None = None) -> None:
        if self.gid is None:
            return
        try:
            if fd is not None:
                os.fchown(fd, -1, self.gid)
            else:
                os.chown(path, -1, self.gid)
        except PermissionError:
            raise InputError(
                f"{path}: cannot give it to group {self.group} (you are not a member of it); "
                "pick a group of yours (`id -Gn`)"
            ) from None

    def make_dirs(self, directory: Path) -> None:
        """Create `directory` (and missing parents) with dir_mode; an existing one is left as
        it is (a shared --out directory the user chose), its new files are still private."""
        missing = []
        p = directory
        while not p.exists():
            missing.append(p)
            if p.parent == p:
                break
            p = p.parent
        for d in reversed(missing):
            try:
                d.mkdir(mode=self.dir_mode)
            except FileExistsError:
                continue  # a concurrent writer made it: theirs to set
            os.chmod(d, self.dir_mode)  # mkdir's mode is filtered by the umask
            self._own(d)

    def create_file(self, path: Path) -> None:
        """Create (or truncate) `path` with file_mode before any byte is written to it."""
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, self.file_mode)
        try:
            os.fchmod(fd, self.file_mode)
            self._own(path, fd)
        finally:
            os.close(fd)

    def describe(self) -> str:
        base = f"{self.file_mode:04o} files, {self.dir_mode:04o} directories"
        return base + (f", group {self.group}" if self.group else "")


def check_private_file(path: str | os.PathLike[str], what: str = "key file") -> None:
    """Refuse a secret file that group or others have any permission on."""
    p = Path(path)
    try:
        mode = p.stat().st_mode
    except OSError:
        return  # the reader reports a missing or unreadable file in its own words
    if stat.S_ISREG(mode) and mode & 0o077:
        raise ExposedKeyError(
            f"{p}: {what} has mode {stat.S_IMODE(mode):04o}, so other users can read it; "
            f"run `chmod 600 {p}` (and make a new key if others may have read it)"
        )


def exposed_to_others(modes: tuple[int, ...], is_dir: bool) -> bool:
    """Whether users other than owner and group can read a dataset's files: some file is
    world-readable and (for a directory) the directory lets others in."""
    if not modes:
        return False
    files = modes[1:] if is_dir else modes
    reachable = (not is_dir) or bool(modes[0] & stat.S_IXOTH)
    return reachable and any(m & stat.S_IROTH for m in files)
