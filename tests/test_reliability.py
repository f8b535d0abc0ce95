"""Faults a demanding user meets: bad files and values, kill -9, a full disk, planted files.

Each test reproduces one case of docs/FAULTS.md: nothing the user wrote is lost, nothing runs
that was not asked for, and every failure ends with one line saying what failed and what to do.
"""

from __future__ import annotations

import errno
import itertools
import json
import os
import pickle
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest
import torch
from conftest import random_uneven_masks, tiny_config

from prune_engine import checkpoint as checkpoint_module
from prune_engine import run_inputs, trainer
from prune_engine.cli import main
from prune_engine.config import config_yaml
from prune_engine.export import ExportError, export_embedder, pruning_info
from prune_engine.l0 import StructureMasks
from prune_engine.prune import kept_indices, prune_embedder
from prune_engine.run_dir import RunDirectory, TrainingError
from prune_engine.trainer import PruningRun
from workbench import exporting
from workbench.runs import WorkbenchError

ROOT = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------- helpers


def snapshot(folder: Path) -> dict[str, bytes | None]:
    """Every path under `folder` with its bytes (None for folders): equal snapshots, nothing touched."""
    return {str(p.relative_to(folder)): (p.read_bytes() if p.is_file() else None) for p in sorted(folder.rglob("*"))}


def dead_pid() -> int:
    """The id of a process that has exited."""
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(done.stdout)


def cli(argv: list[str], capsys) -> tuple[int, list[str]]:
    """`python -m prune_engine ...` in this process: its exit code and its error lines."""
    code = main([str(a) for a in argv])
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    return code, errors


def config_file(config, path: Path) -> Path:
    path.write_text(config_yaml(config))
    return path


def cancelled_run(config, at_step: int) -> RunDirectory:
    """A run stopped (with a checkpoint at `at_step`) as the workbench's Stop button stops it."""
    cancel = threading.Event()

    def stop(event):
        if event.kind == "log" and event.step == at_step:
            cancel.set()

    assert PruningRun(config, callbacks=[stop], cancel=cancel).run().cancelled
    return RunDirectory(config.output_dir)


def objective_calls(monkeypatch, act) -> None:
    """Runs `act(call, objective, losses)` inside every training step (call 0 is the first step)."""
    original = trainer.PruningObjective.forward
    calls = itertools.count()

    def forward(self, features, batch, teacher_out, ramp):
        call = next(calls)
        losses = original(self, features, batch, teacher_out, ramp)
        act(call, self, losses)
        return losses

    monkeypatch.setattr(trainer.PruningObjective, "forward", forward)


def steps_logged(run_dir: Path) -> tuple[list[int], list[int], list[int]]:
    """The steps of metrics.jsonl and mask_snapshots.jsonl as written, and as a reader gets them."""
    lines = [[json.loads(line)["step"] for line in (run_dir / name).read_text().splitlines()]
             for name in ("metrics.jsonl", "mask_snapshots.jsonl")]
    return lines[0], lines[1], [row["step"] for row in RunDirectory(run_dir).metrics()]


def run_script(script: str, *args, env: dict | None = None) -> tuple[dict, str]:
    """Runs Python in a fresh process with stdin closed (a prompt would show and fail, never wait):
    its last line's JSON and everything it printed."""
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script), *map(str, args)], cwd=ROOT, stdin=subprocess.DEVNULL,
        capture_output=True, text=True, timeout=300,
        env={**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", **(env or {})},
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1]), output


# --------------------------------------------------------------------------- 1. nothing lost


def test_export_destinations_that_are_not_exports_are_never_removed(minilm, tmp_path):
    workspace = tmp_path / "ws"
    run = workspace / "run-a"
    (run / "checkpoints" / "step_0000004").mkdir(parents=True)
    (run / "status.json").write_text('{"state": "done"}')
    (run / "checkpoints" / "step_0000004" / "tensors.safetensors").write_bytes(b"weights")
    (workspace / "my-folder").mkdir()
    (workspace / "my-folder" / "notes.txt").write_text("mine")
    before = snapshot(tmp_path)

    for text in (".", "./", "exports/..", "run-a/..", str(workspace), str(tmp_path), "run-a", str(run)):
        with pytest.raises(WorkbenchError, match="workspace|run directory"):
            exporting.resolve_destination(text, workspace)
    info = pruning_info(minilm, "minilm", minilm.config)
    for destination in (workspace, run, workspace / "my-folder", tmp_path):
        with pytest.raises(ExportError, match="not an export this tool wrote .* never replaced"):
            export_embedder(minilm, destination, info, overwrite=True)
    assert snapshot(tmp_path) == before


def test_a_fresh_run_over_a_folder_holding_export_is_refused_before_anything_is_written(tiny_model_dir, tmp_path):
    folder = tmp_path / "my-project"
    (folder / "export").mkdir(parents=True)
    (folder / "export" / "model.bin").write_bytes(b"my model")
    (folder / "notes.txt").write_text("mine")
    before = snapshot(folder)
    with pytest.raises(TrainingError, match=r"export already exists and was not written by a run here"):
        PruningRun(tiny_config(tiny_model_dir, folder)).run()
    assert snapshot(folder) == before  # no status.json, no lock, no config


def test_resuming_a_finished_run_is_refused_and_leaves_it_as_it_was(tiny_model_dir, tmp_path, capsys):
    config = tiny_config(tiny_model_dir, tmp_path / "run", "max_duration=4ba", "checkpoint_every=2")
    PruningRun(config).run()
    before = snapshot(tmp_path / "run")
    code, errors = cli(["prune", config_file(config, tmp_path / "run.yaml"), "--resume"], capsys)
    assert code == 2 and len(errors) == 1
    assert "holds a finished run" in errors[0] and "choose another output_dir" in errors[0]
    assert snapshot(tmp_path / "run") == before  # still "done", its export untouched


def test_resuming_with_changed_settings_is_refused_naming_them_unless_allowed(tiny_model_dir, tmp_path, capsys):
    config = tiny_config(tiny_model_dir, tmp_path / "run")
    run = cancelled_run(config, at_step=3)
    settings = config_file(config, tmp_path / "run.yaml")
    changed = ["optimizer.lr=5e-4", "batch_size=4", "log_every=2"]  # log_every does not change the result

    code, errors = cli(["prune", settings, "--resume", *changed], capsys)
    assert code == 2 and len(errors) == 1
    assert "optimizer.lr: 0.001 -> 0.0005" in errors[0] and "batch_size: 8 -> 4" in errors[0]
    assert "log_every" not in errors[0] and "--allow-config-change" in errors[0]
    assert run.status()["state"] == "cancelled" and run.config().optimizer.lr == 1e-3

    code, errors = cli(["prune", settings, "--resume", "--allow-config-change", *changed], capsys)
    assert code == 0 and errors == []
    assert run.status()["state"] == "done" and run.config().optimizer.lr == 5e-4


def test_resume_refuses_an_export_folder_the_run_did_not_write(tiny_model_dir, tmp_path):
    config = tiny_config(tiny_model_dir, tmp_path / "run")
    run = cancelled_run(config, at_step=3)
    (run.path / "export").mkdir()
    (run.path / "export" / "keep.txt").write_text("mine")
    before = snapshot(run.path)
    with pytest.raises(TrainingError, match=r"export.* was not written by a run here"):
        PruningRun(config).run(resume=True)
    assert snapshot(run.path) == before


# --------------------------------------------------------------------------- 2. killed writers, full disks


def test_staging_left_by_killed_processes_is_removed_when_a_run_starts(tiny_model_dir, tmp_path):
    config = tiny_config(tiny_model_dir, tmp_path / "run")
    run = cancelled_run(config, at_step=3)
    dead, live = dead_pid(), os.getpid()
    stale = [run.checkpoints / f".step_0000004.partial-{dead}-abc", run.path / f".export.partial-{dead}-abc"]
    kept = [run.checkpoints / f".step_0000004.partial-{live}-def", run.path / f".export.partial-{live}-def"]
    for folder in stale + kept:
        folder.mkdir()
        (folder / "tensors.safetensors").write_bytes(b"\0" * 5_000_000)
    stale_file = run.path / f".status.json.partial-{dead}-abc"  # an atomic write cut short
    stale_file.write_text("{")
    at_start = {}

    def look(event):
        if event.kind == "start":
            at_start.update({path: path.exists() for path in stale + kept + [stale_file]})

    PruningRun(config, callbacks=[look]).run(resume=True)
    assert not any(at_start[path] for path in stale + [stale_file])
    assert all(at_start[path] for path in kept) and all(path.exists() for path in kept)


def test_a_full_disk_while_saving_a_checkpoint_ends_the_run_with_one_clear_line(tiny_model_dir, tmp_path, capsys,
                                                                                 monkeypatch):
    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint_module, "save_file", full_disk)
    run_dir = tmp_path / "run"
    code, errors = cli(["prune", config_file(tiny_config(tiny_model_dir, run_dir), tmp_path / "run.yaml")], capsys)
    assert code == 2 and len(errors) == 1
    line = errors[0].removeprefix("error: ")
    assert line.startswith(f"could not write the checkpoint {run_dir / 'checkpoints' / 'step_0000004'}: "
                           "No space left on device. Free disk space")
    assert line.endswith("then resume the run (--resume)")
    assert [p.name for p in (run_dir / "checkpoints").iterdir()] == []  # no partial folder
    status = RunDirectory(run_dir).status()
    assert (status["state"], status["message"], status["step"]) == ("failed", line, 4)


def unwritable_folder(tmp_path: Path) -> Path:
    """A read-only folder, or, where chmod does not stop this user (root), a path under a file."""
    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        (folder / "probe").mkdir()
    except PermissionError:
        return folder
    (folder / "probe").rmdir()
    (tmp_path / "a-file").write_text("x")
    return tmp_path / "a-file" / "run"


def test_an_output_dir_that_cannot_be_written_gives_one_clear_line(tiny_model_dir, tmp_path, capsys):
    run_dir = unwritable_folder(tmp_path)
    code, errors = cli(["prune", config_file(tiny_config(tiny_model_dir, run_dir), tmp_path / "run.yaml")], capsys)
    assert code == 2 and len(errors) == 1
    assert errors[0].startswith(f"error: cannot use {run_dir} as the run directory (")
    assert errors[0].endswith("choose an output_dir you can write to")


# --------------------------------------------------------------------------- 3. nothing runs unasked


def planted_pickle(marker: Path) -> bytes:
    """A pickle that, once unpickled, writes `marker`: what a planted checkpoint could run."""

    class Planted:
        def __reduce__(self):
            return exec, (f"open({str(marker)!r}, 'w').write('ran')",)

    return pickle.dumps(Planted())


def test_a_planted_pickle_in_a_checkpoint_folder_is_never_loaded(tiny_model_dir, tmp_path, monkeypatch):
    pickle.loads(planted_pickle(tmp_path / "works.ran"))
    assert (tmp_path / "works.ran").is_file()  # the plant is real: unpickling it runs code

    config = tiny_config(tiny_model_dir, tmp_path / "run")
    run = cancelled_run(config, at_step=3)
    marker = tmp_path / "planted.ran"
    newer = run.checkpoints / "step_0000006"  # named like an old-style checkpoint (state.pt only)
    newer.mkdir()
    for folder in (newer, run.checkpoints / "step_0000003"):
        (folder / "state.pt").write_bytes(planted_pickle(marker))
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("torch.load called on resume"))
    notes, starts = [], []
    callbacks = [lambda e: notes.append(e.message) if e.kind == "warning" else None,
                 lambda e: starts.append(e.step) if e.kind == "start" else None]
    assert PruningRun(config, callbacks=callbacks).run(resume=True).export_dir is not None
    assert not marker.exists() and starts == [3]
    assert any("step_0000006 is not a readable checkpoint" in note for note in notes)


TOKENIZER_CODE = {
    # A stock class under a custom name: what some hub models' auto_map points to.
    "stock": "from transformers import BertTokenizer as CustomTokenizer\n",
    "custom": "from transformers import BertTokenizer\n\n\nclass CustomTokenizer(BertTokenizer):\n    pass\n",
}


def model_with_code(tiny_model_dir: Path, folder: Path, tokenizer: str, markers: Path) -> Path:
    """The tiny BERT with a config module and a tokenizer module of its own, each leaving a marker
    file when it runs."""
    import shutil

    shutil.copytree(tiny_model_dir, folder)
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {"AutoConfig": "config_code.CustomConfig"}
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "config_code.py").write_text(
        f"open({str(markers / (folder.name + '-config.ran'))!r}, 'w').close()\n"
        "from transformers import BertConfig\n\n\nclass CustomConfig(BertConfig):\n    pass\n")
    tokenizer_config = json.loads((folder / "tokenizer_config.json").read_text())
    tokenizer_config["auto_map"] = {"AutoTokenizer": ["tokenizer_code.CustomTokenizer", None]}
    (folder / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    (folder / "tokenizer_code.py").write_text(
        f"open({str(markers / (folder.name + '-tokenizer.ran'))!r}, 'w').close()\n" + TOKENIZER_CODE[tokenizer])
    return folder


LOAD_AND_EXPORT = """
    import json, sys
    from pathlib import Path
    from transformers import AutoTokenizer
    from prune_engine.export import export_embedder, pruning_info
    from prune_engine.sources import ModelSourceError, load_embedder

    markers, results = Path(sys.argv[1]), {}
    ran = lambda: sorted(p.name for p in markers.glob("*.ran"))
    for model in map(Path, sys.argv[2:]):
        result = results[model.name] = {}
        try:
            load_embedder(str(model))
            result["without_flag"] = "loaded"
        except ModelSourceError as error:
            result["without_flag"] = str(error)
        result["ran_without_flag"] = ran()
        embedder = load_embedder(str(model), trust_remote_code=True)
        result["ran_with_flag"] = ran()
        result["class"] = type(embedder.tokenizer).__name__
        export = model.parent / (model.name + "-export")
        export_embedder(embedder, export, pruning_info(embedder, str(model), embedder.config))
        result["files"] = sorted(p.name for p in export.iterdir())
        result["auto_map"] = json.loads((export / "tokenizer_config.json").read_text()).get("auto_map")
        result["needs_flag"] = json.loads((export / "pruning_info.json").read_text())["needs_trust_remote_code"]
        flag = {"trust_remote_code": True} if result["needs_flag"] else {}
        result["export_class"] = type(AutoTokenizer.from_pretrained(export, **flag)).__name__
    print(json.dumps(results))
"""


@pytest.fixture(scope="module")
def models_with_code(tiny_model_dir, tmp_path_factory):
    """Two models whose folders hold code, loaded and exported in a fresh process (transformers
    imports remote code into its module cache and registers its classes process-wide)."""
    folder = tmp_path_factory.mktemp("remote_code")
    markers = folder / "markers"
    markers.mkdir()
    models = [model_with_code(tiny_model_dir, folder / kind, kind, markers) for kind in ("stock", "custom")]
    results, output = run_script(LOAD_AND_EXPORT, markers, *models, env={"HF_MODULES_CACHE": str(folder / "modules")})
    return results, output


def test_trust_remote_code_runs_the_tokenizer_code_and_nothing_else(models_with_code):
    results, output = models_with_code
    for kind in ("stock", "custom"):
        result = results[kind]
        assert f"{kind}: its tokenizer is code shipped with the model (tokenizer_code.py)" in result["without_flag"]
        assert "trust_remote_code" in result["without_flag"]
        assert f"{kind}-tokenizer.ran" not in result["ran_without_flag"]
        assert f"{kind}-tokenizer.ran" in result["ran_with_flag"]
    assert not [name for name in results["custom"]["ran_with_flag"] if name.endswith("config.ran")]  # never the config's
    assert "Do you wish to run the custom code" not in output


def test_an_export_ships_the_tokenizer_it_needs(models_with_code):
    results, _ = models_with_code
    stock, custom = results["stock"], results["custom"]
    # A stock class named through auto_map: a plain tokenizer, no code, loads without the flag.
    assert stock["class"] == "BertTokenizer" and stock["export_class"] == "BertTokenizer"
    assert stock["auto_map"] is None and not [f for f in stock["files"] if f.endswith(".py")]
    assert stock["needs_flag"] is False
    # Code of its own: shipped beside it, and the export says it needs the flag.
    assert custom["class"] == custom["export_class"] == "CustomTokenizer"
    assert "tokenizer_code.py" in custom["files"] and custom["auto_map"]["AutoTokenizer"][0] == "tokenizer_code.CustomTokenizer"
    assert custom["needs_flag"] is True and "config_code.py" not in custom["files"]


# --------------------------------------------------------------------------- 4. checkpoints worth going back to


def test_a_corrupt_latest_checkpoint_falls_back_to_the_one_before_with_a_note(tiny_model_dir, tmp_path):
    from safetensors.torch import load_file

    uninterrupted = PruningRun(tiny_config(tiny_model_dir, tmp_path / "a", "checkpoint_every=2")).run().export_dir
    config = tiny_config(tiny_model_dir, tmp_path / "b", "checkpoint_every=2")
    run = cancelled_run(config, at_step=5)
    tensors = run.checkpoints / "step_0000005" / "tensors.safetensors"
    tensors.write_bytes(tensors.read_bytes()[: tensors.stat().st_size // 2])
    notes, starts = [], []
    callbacks = [lambda e: notes.append(e.message) if e.kind == "warning" else None,
                 lambda e: starts.append(e.step) if e.kind == "start" else None]
    resumed = PruningRun(config, callbacks=callbacks).run(resume=True).export_dir
    assert starts == [4]
    assert any("passed over" in note and "step_0000005 is not a readable checkpoint" in note for note in notes)
    a, b = load_file(uninterrupted / "model.safetensors"), load_file(resumed / "model.safetensors")
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=1e-6, msg=name)


def test_the_nan_guard_names_only_a_checkpoint_with_healthy_weights(tiny_model_dir, tmp_path, monkeypatch):
    def diverge_then_nan(call, objective, losses):
        if call == 2:  # weights at 1e29 (still finite, and the loss too) before the checkpoint of step 4
            with torch.no_grad():
                objective.student.encoder.embeddings.word_embeddings.weight[-1] = 1e29
        if call == 4:
            losses["total"] = losses["total"] * float("nan")

    objective_calls(monkeypatch, diverge_then_nan)
    config = tiny_config(tiny_model_dir, tmp_path / "run", "checkpoint_every=2", "keep_checkpoints=1")
    with pytest.raises(TrainingError) as error:
        PruningRun(config).run()
    assert "the loss became nan at step 4" in str(error.value)
    assert "its last good checkpoint is step 2 (resume to continue from it)" in str(error.value)
    monkeypatch.undo()

    notes, starts = [], []
    callbacks = [lambda e: notes.append(e.message) if e.kind == "warning" else None,
                 lambda e: starts.append(e.step) if e.kind == "start" else None]
    PruningRun(config, callbacks=callbacks).run(resume=True)
    assert starts == [2]  # as the message said, not the diverged step 4
    assert any("step_0000004" in note and "diverged" in note for note in notes)


# --------------------------------------------------------------------------- 5. one row per step


class Killed(BaseException):
    """What kill -9 leaves: no handler runs, the status still says the run trains."""


def test_metrics_keep_one_row_per_step_after_a_kill_and_a_resume(tiny_model_dir, tmp_path, monkeypatch):
    def kill(call, objective, losses):
        if call == 5:
            raise Killed

    objective_calls(monkeypatch, kill)
    config = tiny_config(tiny_model_dir, tmp_path / "run")  # a checkpoint at step 4
    with pytest.raises(Killed):
        PruningRun(config).run()
    run = RunDirectory(config.output_dir)
    assert run.state() == "interrupted" and steps_logged(run.path)[0] == [1, 2, 3, 4, 5]
    monkeypatch.undo()
    PruningRun(config).run(resume=True)
    assert steps_logged(run.path) == ([1, 2, 3, 4, 5, 6, 7, 8],) * 3


def test_metrics_keep_one_row_per_step_after_an_earlier_failed_run(tiny_model_dir, tmp_path, monkeypatch):
    def nan(call, objective, losses):
        if call == 2:
            losses["total"] = losses["total"] * float("nan")

    objective_calls(monkeypatch, nan)
    config = tiny_config(tiny_model_dir, tmp_path / "run", "checkpoint_every=100")
    with pytest.raises(TrainingError, match="no checkpoint with finite weights was saved"):
        PruningRun(config).run()
    assert steps_logged(tmp_path / "run")[0] == [1, 2]
    monkeypatch.undo()
    PruningRun(config).run()  # a fresh run in the failed run's directory
    assert steps_logged(tmp_path / "run") == ([1, 2, 3, 4, 5, 6, 7, 8],) * 3


# --------------------------------------------------------------------------- 6. exports load quietly


LOAD_EXPORTS = """
    import json, sys
    from sentence_transformers import SentenceTransformer
    from transformers import AutoModel, AutoTokenizer

    counts = {}
    for export, flag in zip(sys.argv[1::2], sys.argv[2::2]):
        trust = {"trust_remote_code": True} if flag == "remote" else {}
        AutoTokenizer.from_pretrained(export)  # never needs the flag
        counts[export] = AutoModel.from_pretrained(export, **trust).num_parameters()
        SentenceTransformer(export, device="cpu", **trust).encode(["a sentence"])
    print(json.dumps(counts))
"""


@pytest.mark.slow  # about 30 s: two fresh processes importing transformers and sentence-transformers
def test_exports_load_without_prompts_or_warnings_and_count_what_loads(minilm, tmp_path):
    uneven = random_uneven_masks(minilm.config, seed=5, drop_layer=3)
    layers_dropped = StructureMasks(
        layers=torch.tensor([i not in (0, 4) for i in range(6)]),
        heads=[torch.ones(h, dtype=torch.bool) for h in minilm.config.heads_per_layer],
        ffn=[torch.ones(f, dtype=torch.bool) for f in minilm.config.intermediate_sizes],
    )
    exports = {}
    for name, masks in (("stock", layers_dropped), ("remote", uneven)):
        pruned = prune_embedder(minilm, masks)
        exports[name] = export_embedder(pruned, tmp_path / name,
                                        pruning_info(pruned, "minilm", minilm.config, kept_indices(masks)))
    counts, output = run_script(LOAD_EXPORTS, exports["stock"], "stock", exports["remote"], "remote")
    for noise in ("Do you wish to run the custom code", "model of type", "MISSING", "newly initialized", "UNEXPECTED"):
        assert noise not in output, output[-3000:]
    for name, export in exports.items():
        info = json.loads((export / "pruning_info.json").read_text())
        after = info["parameters_after"]
        assert info["pooler_parameters"] == (384 * 384 + 384 if name == "stock" else 0)
        assert counts[str(export)] == after["embeddings"] + after["encoder"] + info["pooler_parameters"]
        assert after["total"] == after["embeddings"] + after["encoder"]  # the README's figures: no pooler
        assert "pooler" in info["parameters_counted"]
    # Without the flag an uneven export is refused by transformers, never loaded as a wrong stock model.
    refused = subprocess.run([sys.executable, "-c", "import sys; from transformers import AutoModel; "
                              "AutoModel.from_pretrained(sys.argv[1])", str(exports["remote"])],
                             capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=300,
                             env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert refused.returncode != 0 and "ignore_mismatched_sizes" in refused.stderr


# --------------------------------------------------------------------------- 7. bad data before the model


@pytest.mark.parametrize(("arguments", "name", "content", "expected"), [
    (("--dataset", "{}"), "data.csv", "a,b\n1,2\n", "missing column(s)"),
    (("--dataset", "{}"), "data.csv", "sentence1,sentence2,score\n", "no data rows"),
    (("--documents", "{}"), "documents.txt", None, "documents file not found"),
    (("--documents", "{}"), "documents.txt", "".join(f"document {i}\n" for i in range(10)), "10 distinct documents is too few"),
    (("vocab={{corpus: {}}}",), "corpus.txt", None, "file not found"),  # read at export, after training: checked first
    (("eval_dataset={}",), "eval.csv", None, "eval_dataset: file not found"),  # read for the report, after training
])
def test_bad_data_fails_before_the_model_loads_and_leaves_no_run_directory(tiny_model_dir, tmp_path, capsys,
                                                                           monkeypatch, arguments, name, content,
                                                                           expected):
    monkeypatch.setattr(run_inputs, "load_embedder", lambda *a, **k: pytest.fail("the model was loaded"))
    data = tmp_path / name
    if content is not None:
        data.write_text(content)
    run_dir = tmp_path / "runs" / "run"
    settings = config_file(tiny_config(tiny_model_dir, run_dir), tmp_path / "run.yaml")
    given = [argument.format(data) for argument in arguments]
    code, errors = cli(["prune", settings, *given], capsys)
    assert code == 2 and len(errors) == 1 and expected in errors[0]
    assert not (tmp_path / "runs").exists()  # nor the folder made to hold it
