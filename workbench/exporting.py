"""The Export page's engine side: where an export may go, what it holds, how to load it."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

from .runs import WorkbenchError


def resolve_destination(text: str, workspace: Path) -> Path:
    """A relative path lands inside the workspace and may not climb out of it, nor be the workspace
    itself; writing elsewhere takes an explicit absolute path (`~` is read as the home folder)."""
    text = text.strip()
    if not text:
        raise WorkbenchError("give a destination directory, e.g. exports/my-model")
    path = Path(text).expanduser()
    workspace = workspace.resolve()
    resolved = path.resolve() if path.is_absolute() else (workspace / path).resolve()
    if not path.is_absolute() and not resolved.is_relative_to(workspace):
        raise WorkbenchError(
            f"{text} points outside the workspace {workspace}; to write there, give the full absolute path"
        )
    if workspace.is_relative_to(resolved):
        raise WorkbenchError(f"{resolved} is the workspace or a folder holding it: choose a folder inside it, "
                             "e.g. exports/my-model")
    if (resolved / "status.json").is_file() or (resolved / "run.lock").exists():
        raise WorkbenchError(f"{resolved} is a run directory: export to a folder of its own, e.g. exports/my-model")
    return resolved


def directory_listing(path: Path) -> list[dict]:
    """Every file under `path` with its size, for the Export page."""
    return [
        {"file": str(p.relative_to(path)), "bytes": p.stat().st_size}
        for p in sorted(path.rglob("*")) if p.is_file()
    ]


def zip_directory(path: Path) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
        for file in sorted(path.rglob("*")):
            if file.is_file():
                archive.write(file, Path(path.name) / file.relative_to(path))
    return buffer.getvalue()


def loading_snippet(path: Path, remote_code: bool) -> str:
    flag = ", trust_remote_code=True" if remote_code else ""
    return (
        "from sentence_transformers import SentenceTransformer\n"
        f"model = SentenceTransformer({str(path)!r}{flag})\n"
        'embeddings = model.encode(["A sentence to embed."])'
    )
