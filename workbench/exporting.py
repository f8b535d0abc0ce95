"""The Export page's engine side: where an export may go, what it holds, how to load it, and its
ONNX serving variants scored as the run's end scores them."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

from prune_engine.config import RunConfig
from prune_engine.documents import load_documents, split_documents
from prune_engine.embedder import Embedder
from prune_engine.finish import Evaluation, serving_variants

from .runs import WorkbenchError

# What a run's pruning_info.json holds that a copy of its export must not repeat: export_embedder
# sets the first; the second names the run's own ONNX files, which a copy does not carry.
NOT_COPIED = ("needs_trust_remote_code", "serving")


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


def copied_info(info: dict) -> dict:
    """A run's pruning_info.json, as the copy written by the Export page records it."""
    return {key: value for key, value in info.items() if key not in NOT_COPIED}


def write_serving(export_dir: Path, config: RunConfig, original: Embedder, threshold: float) -> dict:
    """ONNX fp32 and int8 beside an export, both scored on what the run was scored on (its
    evaluation data and its held-out documents) against `original`; the quality gate's decision
    goes into the export's pruning_info.json (`finish.serving_variants`)."""
    documents = (split_documents(load_documents(config.documents), config.documents_held_out)
                 if config.documents is not None else None)
    return serving_variants(Path(export_dir), Evaluation.for_run(config, original, documents), threshold)


def quality_gate(info: dict | None) -> dict | None:
    """The serving quality gate an export's pruning_info.json (or a run's report) holds, if any."""
    return ((info or {}).get("serving") or {}).get("quality_gate")
