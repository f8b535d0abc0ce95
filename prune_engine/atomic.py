"""Writes that appear complete or not at all, and the clean-up after writers that died.

Files and folders (checkpoints, exports) are written under a hidden staging name beside their
destination, `.<name>.partial-<pid>-<tag>`, then renamed into place. A process killed mid-write
leaves its staging behind: the next writer (and every run as it starts) removes the ones whose
process is gone, never one a live process is still filling.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import uuid
from pathlib import Path

_PARTIAL = re.compile(r"^\.(?P<name>.+)\.partial-(?P<pid>\d+)-[0-9a-f]+$")


def pid_alive(pid: int | None) -> bool:
    """Whether a process with this id exists (signal 0 checks without sending anything)."""
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def write_text_atomic(path: Path, text: str) -> None:
    temporary = staging_folder(path)
    try:
        temporary.write_text(text)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def write_json_atomic(path: Path, data) -> None:
    write_text_atomic(path, json.dumps(data, indent=2))


def read_json(path: Path) -> dict | None:
    """The file's object, or None when it is absent or unreadable (being replaced this instant)."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def staging_folder(destination: Path) -> Path:
    """A fresh hidden name beside `destination` (for a folder or a file), owned by this process."""
    return destination.parent / f".{destination.name}.partial-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def remove_stale_partials(folder: Path, name: str | None = None) -> list[Path]:
    """Removes the staging folders and files in `folder` (for `name` only, if given) whose process
    has died, and returns them."""
    removed: list[Path] = []
    if not folder.is_dir():
        return removed
    for path in folder.iterdir():
        match = _PARTIAL.match(path.name)
        if not match or (name is not None and match["name"] != name) or pid_alive(int(match["pid"])):
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        removed.append(path)
    return removed
