"""Pruning runs end to end on a tiny random BERT with the real MiniLM tokenizer and the demo data."""

from __future__ import annotations

import contextlib
import copy
import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch
from conftest import tiny_config

from prune_engine.accounting import Structure, count_parameters
from prune_engine.config import load_config
from prune_engine.data import load_training_data
from prune_engine.export import ORIGINAL_IDS_FILE
from prune_engine.l0 import StructureMasks
from prune_engine.run_dir import TrainingError
from prune_engine.sources import load_embedder
from prune_engine.targets import TargetError
from prune_engine.trainer import PruningRun

ROOT = Path(__file__).resolve().parents[1]


def weights_of(run_dir: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(run_dir / "export" / "model.safetensors")


def test_run_writes_everything_and_hits_the_budget(tiny_model_dir, tmp_path):
    events = []
    config = tiny_config(tiny_model_dir, tmp_path / "run")
    result = PruningRun(config, callbacks=[events.append]).run()

    kinds = [e.kind for e in events]
    assert kinds[0] == "start" and kinds[-1] == "done" and "phase" in kinds and kinds.count("log") == 8
    records = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(1, 9))
    for key in ("loss/total", "loss/distill_cosine", "loss/task", "expected_encoder_params", "target_params",
                "examples_per_s", "lr/weights", "decided_fraction"):
        assert key in records[-1]
    assert "loss/lagrangian" in records[0] and "lambda_1/encoder_parameters" in records[0]
    snapshot = json.loads((result.run_dir / "mask_snapshots.jsonl").read_text().splitlines()[0])
    assert len(snapshot["heads"]) == 3 and len(snapshot["heads"][0]) == 4
    assert json.loads((result.run_dir / "status.json").read_text())["state"] == "done"
    assert (result.run_dir / "config.yaml").is_file()

    # The export weighs exactly what the engine predicted for the final masks, within the budget.
    source = load_embedder(str(tiny_model_dir)).config
    masks = StructureMasks.from_dict(json.loads((result.run_dir / "final_masks.json").read_text()))
    predicted = count_parameters(source, masks.kept_structure(source.vocab_size))
    exported = sum(t.numel() for t in weights_of(result.run_dir).values())
    assert exported == predicted.embeddings + predicted.encoder
    budget = config.size_target(source)
    assert budget.parameters - (2 * 32 + 1) < predicted.encoder <= budget.parameters
    info = json.loads((result.export_dir / "pruning_info.json").read_text())
    assert info["parameters_after"]["encoder"] == predicted.encoder

    # The evaluation report compares the original and the pruned model on the demo dev/test pairs.
    report = json.loads((result.run_dir / "report.json").read_text())
    assert set(report["splits"]) == {"dev", "test"}
    spearman = report["splits"]["test"]["metrics"]["spearman"]
    assert -100 <= spearman["pruned"] <= 100 and spearman["retained"] == pytest.approx(spearman["pruned"] / spearman["original"])
    assert 0 < report["splits"]["test"]["metrics"]["mean_cosine_to_original"]["pruned"] <= 1
    assert "spearman" in (result.run_dir / "report.txt").read_text()


def test_resume_gives_the_same_result_as_an_uninterrupted_run(tiny_model_dir, tmp_path):
    uninterrupted = PruningRun(tiny_config(tiny_model_dir, tmp_path / "a")).run().run_dir

    cancel = threading.Event()
    stop_at = {3, 6}  # once in the mask phase, once while fine-tuning

    def cancel_at(event):
        if event.kind == "log" and event.step in stop_at:
            stop_at.discard(event.step)
            cancel.set()

    interrupted = tmp_path / "b"
    config = tiny_config(tiny_model_dir, interrupted)
    assert PruningRun(config, callbacks=[cancel_at], cancel=cancel).run().cancelled
    assert json.loads((interrupted / "status.json").read_text())["state"] == "cancelled"
    cancel.clear()
    assert PruningRun(config, callbacks=[cancel_at], cancel=cancel).run(resume=True).cancelled
    cancel.clear()
    assert PruningRun(config, cancel=cancel).run(resume=True).export_dir is not None

    a, b = weights_of(uninterrupted), weights_of(interrupted)
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=1e-6, msg=name)
    assert json.loads((uninterrupted / "final_masks.json").read_text()) == json.loads(
        (interrupted / "final_masks.json").read_text()
    )
    # Time in steps counts every sitting: elapsed_s grows across the resumes and the report's figure is its last.
    elapsed = [json.loads(line)["elapsed_s"] for line in (interrupted / "metrics.jsonl").read_text().splitlines()]
    assert len(elapsed) == 8 and all(later > earlier for earlier, later in zip(elapsed, elapsed[1:], strict=False))
    report = json.loads((interrupted / "report.json").read_text())
    assert report["timings_s"]["steps"] == pytest.approx(elapsed[-1], abs=1e-6)


def test_the_mask_phase_student_and_optimizer_are_freed_when_masks_are_fixed(tiny_model_dir, tmp_path):
    """The accelerator keeps everything it prepared: the mask phase's student and Adam states (GBs at
    BGE-M3's size) must not live on beside the pruned student, the export and the evaluation."""
    import gc
    import weakref

    alive: dict[str, list[bool]] = {}
    mask_phase: list[weakref.ref] = []

    def watch(event):
        if event.kind == "start":
            mask_phase.extend(weakref.ref(obj) for obj in (run.student, run.optimizer.optimizer, run.lagrangian_optimizer))
        if event.kind in ("log", "done") and event.phase == "finetune" and event.kind not in alive:
            gc.collect()
            alive[event.kind] = [ref() is not None for ref in mask_phase]

    run = PruningRun(tiny_config(tiny_model_dir, tmp_path / "run", "eval_splits=[]"), callbacks=[watch])
    run.run()
    assert len(mask_phase) == 3 and alive == {"log": [False] * 3, "done": [False] * 3}
    assert run.optimizer is None and run.objective is None  # training's are released before the export too


def first_loss(run_dir: Path) -> float:
    return json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[0])["loss/total"]


def test_runs_of_different_precisions_train_one_after_another_in_one_process(tiny_model_dir, tmp_path):
    """The workbench trains its runs in one process, and Accelerate keeps one mixed precision per
    process: an amp_bf16 run after an fp32 one used to fail before its first step."""
    fp32 = PruningRun(tiny_config(tiny_model_dir, tmp_path / "fp32", "eval_splits=[]")).run()
    bf16 = PruningRun(tiny_config(tiny_model_dir, tmp_path / "bf16", "eval_splits=[]", "precision=amp_bf16")).run()
    again = PruningRun(tiny_config(tiny_model_dir, tmp_path / "again", "eval_splits=[]")).run()
    # The same first step, computed in bfloat16: close to fp32's, not equal (autocast is on).
    assert first_loss(again.run_dir) == first_loss(fp32.run_dir)
    difference = abs(first_loss(bf16.run_dir) - first_loss(fp32.run_dir))
    assert 0 < difference < 0.05 * first_loss(fp32.run_dir)


def test_a_finished_run_directory_is_not_overwritten(tiny_model_dir, tmp_path):
    config = tiny_config(tiny_model_dir, tmp_path / "run", "max_duration=4ba", "checkpoint_every=2")
    PruningRun(config).run()
    with pytest.raises(TrainingError, match="already holds a run"):
        PruningRun(config).run()
    with pytest.raises(TrainingError, match="nothing to resume"):
        PruningRun(tiny_config(tiny_model_dir, tmp_path / "fresh")).run(resume=True)


def test_a_nan_loss_stops_with_a_clear_message_and_keeps_the_last_checkpoint(tiny_model_dir, tmp_path, monkeypatch):
    from prune_engine import trainer

    original = trainer.PruningObjective.forward

    def poisoned(self, features, batch, teacher_out, ramp):
        losses = original(self, features, batch, teacher_out, ramp)
        if self.masks is None:  # the fine-tuning phase, after the first checkpoint
            losses["total"] = losses["total"] * float("nan")
        return losses

    monkeypatch.setattr(trainer.PruningObjective, "forward", poisoned)
    run_dir = tmp_path / "run"
    with pytest.raises(TrainingError, match=r"the loss became nan at step 4.*last good checkpoint is step 4.*Lower optimizer.lr"):
        PruningRun(tiny_config(tiny_model_dir, run_dir)).run()
    assert json.loads((run_dir / "status.json").read_text())["state"] == "failed"
    assert (run_dir / "checkpoints" / "step_0000004" / "tensors.safetensors").is_file()


def test_fixed_masks_skip_mask_learning_and_fine_tune_that_structure(tiny_model_dir, tmp_path):
    """The baselines' path: a given structure (layer drop, importance pruning) with the same training."""
    keep_first_two = {"layers": [True, True, False], "heads": [[True] * 4] * 3, "ffn": [[True] * 64, [False] * 64, [True] * 64]}
    masks_file = tmp_path / "masks.json"
    masks_file.write_text(json.dumps(keep_first_two))
    config = load_config(None, [
        f"model={tiny_model_dir}", "dataset=demo", f"output_dir={tmp_path / 'run'}", f"fixed_masks={masks_file}",
        "batch_size=8", "max_length=32", "max_duration=3ba", "eval_splits=[]",
    ])
    result = PruningRun(config).run()
    info = json.loads((result.export_dir / "pruning_info.json").read_text())
    assert info["heads_per_layer"] == [4, 4] and info["intermediate_sizes"] == [64, 0]
    phases = {json.loads(line)["phase"] for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()}
    assert phases == {"finetune"}
    assert info["needs_trust_remote_code"] is True  # uneven FFN widths need the modeling file

    keep_first_two["layers"] = [True, False]
    masks_file.write_text(json.dumps(keep_first_two))
    with pytest.raises(TargetError, match="made for another model"):
        PruningRun(config.__class__(**{**config.__dict__, "output_dir": str(tmp_path / "other")})).run()


def test_a_vocab_section_ships_a_trimmed_tokenizer_and_embeddings(tiny_model_dir, tmp_path):
    config = tiny_config(tiny_model_dir, tmp_path / "run", "max_duration=2ba", "eval_splits=[test]",
                         "vocab={min_freq: 1}")
    result = PruningRun(config).run()
    info = json.loads((result.export_dir / "pruning_info.json").read_text())
    kept = info["vocabulary"]["vocab_size_after"]
    assert 100 < kept < 30522 and info["parameters_after"]["embeddings"] == (kept + 64 + 2) * 32 + 2 * 32
    exported = load_embedder(str(result.export_dir), trust_remote_code=True)
    assert exported.config.vocab_size == kept and len(exported.tokenizer) == kept
    original_ids = json.loads((result.export_dir / ORIGINAL_IDS_FILE).read_text())
    source = load_embedder(str(tiny_model_dir)).tokenizer
    for text in load_training_data("demo", "train").distinct_texts()[:8]:  # the vocabulary was counted on these
        assert [original_ids[i] for i in exported.tokenizer(text)["input_ids"]] == source(text)["input_ids"]
    # The demo's own sentences are covered: the trimmed export embeds them as the untrimmed student did.
    report = json.loads((result.run_dir / "report.json").read_text())
    assert report["splits"]["test"]["metrics"]["mean_cosine_to_original"]["pruned"] > 0
    timings = report["timings_s"]
    assert {"load", "teacher", "steps", "slicing", "export", "evaluation"} <= set(timings)
    assert 0 < timings["teacher"] < timings["steps"]


def test_documents_join_every_batch_for_distillation_only(tiny_model_dir, tmp_path, monkeypatch):
    """Documents mixed into STS batches: each training document is seen once per pass, the held-out
    ones never, none reaches the task loss, and a resumed run draws the same ones."""
    import prune_engine.trainer as trainer
    from prune_engine.batches import BatchSchedule
    from prune_engine.documents import load_documents, split_documents

    passages = [f"passage number {i} about zebrafish topic {i % 5}" for i in range(60)]
    (tmp_path / "passages.txt").write_text("\n".join(passages) + "\n")
    seen: list[tuple[str, list[str], list[str]]] = []
    real_make_batch = trainer.make_batch

    def recording_make_batch(data, indices, documents=()):
        batch = real_make_batch(data, indices, documents)
        seen.append((batch.kind, batch.texts[: batch.task_end], batch.texts[batch.task_end :]))
        return batch

    monkeypatch.setattr(trainer, "make_batch", recording_make_batch)
    config = tiny_config(tiny_model_dir, tmp_path / "run", "eval_splits=[]", "max_duration=6ba",
                         f"documents={tmp_path / 'passages.txt'}", "documents_per_batch=4", "vocab={min_freq: 1}",
                         "documents_distractors=7")
    result = PruningRun(config).run()
    # The trimmed vocabulary counts the documents too: a word only they hold is not unknown.
    tokenizer = load_embedder(str(result.export_dir), trust_remote_code=True).tokenizer
    assert tokenizer.unk_token_id not in tokenizer("zebrafish")["input_ids"]
    split = split_documents(load_documents(str(tmp_path / "passages.txt")))
    held_out = set(split.held_out.texts())
    drawn = [text for _, _, extra in seen for text in extra]
    assert len(seen) == 6 and all(len(extra) == 4 for _, _, extra in seen)
    assert len(set(drawn)) == 24 and not set(drawn) & held_out and set(drawn) <= set(split.training.texts())
    assert all(kind == "scored_pairs" and not set(task) & set(passages) for kind, task, _ in seen)
    # The held-out documents are scored without labels in the report.
    report = json.loads((result.run_dir / "report.json").read_text())
    assert report["documents"]["splits"] and not report["warnings"]
    assert "20 pseudo-queries over 20 held-out passages + 7 of 40 distractors" in \
        report["documents"]["splits"]["held_out"]["source"]

    schedule = BatchSchedule(240, split.training.texts(), 8, 4, config.seed)
    assert [t for step in range(6) for t in schedule.documents_of(step)] == drawn

    (tmp_path / "few.txt").write_text("\n".join(passages[:30]) + "\n")
    too_few = tiny_config(tiny_model_dir, tmp_path / "few", f"documents={tmp_path / 'few.txt'}")
    with pytest.raises(ValueError, match=r"30 distinct documents is too few.*give at least 40"):
        PruningRun(too_few).run()
    assert not (tmp_path / "few" / "status.json").exists() or json.loads(
        (tmp_path / "few" / "status.json").read_text())["state"] == "failed"


def test_distillation_texts_are_padded_apart_and_never_reach_the_task_loss(tiny_xlmr_embedder):
    """Passages mixed into a query-passage batch: tokenised in their own padding group, every loss
    (BGE-M3's lexical and multi-vector ones included) equals the one-group computation, and the
    InfoNCE sees only the batch's own passages as negatives."""
    from prune_engine.batches import make_batch
    from prune_engine.data import QueryPassagePairs
    from prune_engine.objective import PruningObjective

    pairs = QueryPassagePairs(["what is a cat", "how tall is everest"], ["a cat is a small feline", "everest is 8849 m"],
                              None, "test")
    extra = ["a long passage about whales, which are marine mammals that breathe air and sing " * 2, "rivers flow"]
    teacher, student = tiny_xlmr_embedder(seed=0), tiny_xlmr_embedder(seed=1)
    objective = PruningObjective(student, load_config(None, ["target_params.fraction=0.5", "loss.distill_tokens=1"]),
                                 pairs.kind)
    plain, mixed = make_batch(pairs, [0, 1]), make_batch(pairs, [0, 1], extra)
    assert (mixed.n, mixed.task_end, mixed.distill_only) == (2, 4, 2)
    assert mixed.padding_groups == [mixed.texts[:4], extra]

    def losses(batch, groups_of_texts):
        groups = [student.tokenize(texts, 64) for texts in groups_of_texts]
        with torch.no_grad():
            return objective(groups, batch, [teacher(features) for features in groups], 1.0)

    apart, together, alone = losses(mixed, mixed.padding_groups), losses(mixed, [mixed.texts]), losses(plain, [plain.texts])
    assert set(apart) >= {"distill_cosine", "distill_similarity", "distill_tokens", "distill_sparse", "distill_colbert",
                          "task"}
    for name in apart:
        assert float(apart[name]) == pytest.approx(float(together[name]), rel=1e-5, abs=1e-6), name
    assert float(apart["task"]) == pytest.approx(float(alone["task"]), abs=1e-6)
    assert float(apart["distill_cosine"]) != pytest.approx(float(alone["distill_cosine"]), abs=1e-4)


def test_token_distillation_is_weighted_into_the_total_and_on_by_default(tiny_xlmr_embedder):
    from prune_engine.batches import make_batch
    from prune_engine.data import ScoredPairs
    from prune_engine.objective import PruningObjective

    pairs = ScoredPairs(["a cat sits", "rivers flow"], ["a cat is sitting", "stocks fell"], [1.0, 0.1], "test")
    teacher, student = tiny_xlmr_embedder(seed=0), tiny_xlmr_embedder(seed=1)
    batch = make_batch(pairs, [0, 1])
    features = student.tokenize(batch.texts, 32)
    with torch.no_grad():
        teacher_out = teacher(features)

    def losses(*overrides):
        objective = PruningObjective(student, load_config(None, ["target_params.fraction=0.5", *overrides]), pairs.kind)
        with torch.no_grad():
            return objective([features], batch, [teacher_out], 1.0)

    default, off, half = losses(), losses("loss.distill_tokens=0"), losses("loss.distill_tokens=0.5")
    assert "distill_tokens" not in off and float(default["distill_tokens"]) > 0.01
    assert float(half["total"] - off["total"]) == pytest.approx(0.5 * float(half["distill_tokens"]), rel=1e-4)
    assert float(default["total"] - off["total"]) == pytest.approx(float(default["distill_tokens"]), rel=1e-4)


def test_a_directory_another_process_trains_in_is_refused_and_left_alone(tiny_model_dir, tmp_path):
    from prune_engine.run_dir import RunDirectoryBusy

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (run_dir / "run.lock").write_text(str(other.pid))
        with pytest.raises(RunDirectoryBusy, match=f"being trained by process {other.pid}"):
            PruningRun(tiny_config(tiny_model_dir, run_dir)).run()
        assert sorted(p.name for p in run_dir.iterdir()) == ["run.lock"]  # no status.json, nothing written
        assert (run_dir / "run.lock").read_text() == str(other.pid)
    finally:
        other.kill()
        other.wait()


def test_a_lock_left_by_a_dead_process_is_taken_over_and_released(tiny_model_dir, tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (run_dir / "run.lock").write_text(finished.stdout.strip())
    result = PruningRun(tiny_config(tiny_model_dir, run_dir)).run()
    assert result.export_dir is not None and not (run_dir / "run.lock").exists()
    assert not [p for p in run_dir.iterdir() if p.name.startswith("run.lock")]


def test_target_larger_than_the_model_is_refused(tiny_model_dir, tmp_path):
    config = tiny_config(tiny_model_dir, tmp_path / "run", "target_model={n_layers: 5, n_heads: 4, intermediate_size: 64}")
    with pytest.raises(TargetError, match="n_layers=5 but the model has 3"):
        PruningRun(config).run()


@pytest.mark.slow
def test_cli_prune_with_two_processes_through_accelerate(tiny_model_dir, tmp_path):
    """`accelerate launch -m prune_engine prune ...`: two CPU processes over gloo."""
    run_dir = tmp_path / "ddp"
    config = tmp_path / "config.yaml"
    config.write_text("target_params: {fraction: 0.5, of: encoder}\n")
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "2", "--cpu", "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "prune_engine", "prune", str(config),
        "--dataset", "demo", "--model", str(tiny_model_dir), "--output-dir", str(run_dir),
        "batch_size=4", "max_length=32", "max_duration=4ba", "log_every=1", "optimizer.lr=1e-3",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == 4  # written once, by the main process
    assert records[-1]["examples_per_s"] > 0 and all(r["loss/total"] == r["loss/total"] for r in records)
    assert (run_dir / "export" / "model.safetensors").is_file()


@pytest.mark.slow
def test_demo_config_end_to_end_on_the_real_minilm(tmp_path):
    """The README's demo: offline, on the bundled model and data, an export of the target's size."""
    run_dir = tmp_path / "demo"
    done = subprocess.run(
        [sys.executable, "-m", "prune_engine", "prune", "configs/demo_minilm.yaml", f"output_dir={run_dir}"],
        cwd=ROOT, capture_output=True, text=True, timeout=900, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    info = json.loads((run_dir / "export" / "pruning_info.json").read_text())
    minilm = load_embedder("minilm").config
    budget = load_config(ROOT / "configs" / "demo_minilm.yaml").size_target(minilm)
    assert budget.parameters - (2 * 384 + 1) < info["parameters_after"]["encoder"] <= budget.parameters
    structure = Structure(tuple(info["heads_per_layer"]), tuple(info["intermediate_sizes"]), minilm.vocab_size)
    assert info["parameters_after"] == count_parameters(minilm, structure).as_dict()
    shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)


def test_a_speedup_target_calibrates_this_machine_and_reports_the_measured_speedup(tiny_model_dir, tmp_path):
    config = tiny_config(tiny_model_dir, tmp_path / "run", "target_params=null", "target_speedup=1.4",
                         "structures=[layers, heads, ffn]",
                         "latency_batch_size=8", "latency_length=32", "eval_splits=[]")
    result = PruningRun(config).run()
    model = json.loads((result.run_dir / "latency_model.json").read_text())
    assert model["conditions"]["batch_size"] == 8 and model["per_neuron"] >= 0
    latency = json.loads((result.run_dir / "report.json").read_text())["latency"]
    # The structure is cut to at least the predicted target (a tiny model's time is mostly per layer,
    # so the steps are coarse); what the export measures is beside it.
    assert latency["predicted_speedup"] >= 1.4 * (1 - 1e-9) and latency["predicted_s"] <= latency["target_s"] * (1 + 1e-9)
    assert latency["measured_speedup"] > 1.0 and latency["measured_s"] > 0
    assert "measured" in (result.run_dir / "report.txt").read_text()


def test_onnx_variants_are_written_and_the_quality_gate_decides_in_pruning_info(tiny_model_dir, tmp_path):
    from prune_engine.serving import OnnxEmbedder

    documents = tmp_path / "documents.txt"
    documents.write_text("\n".join(f"document {i} tells of topic {i % 7} and of nothing else at all" for i in range(60)))
    config = tiny_config(tiny_model_dir, tmp_path / "run", "max_duration=4ba", "eval_splits=[test]",
                         f"documents={documents}", "serving.onnx=true")
    result = PruningRun(config).run()
    serving = json.loads((result.export_dir / "pruning_info.json").read_text())["serving"]
    gate = serving["quality_gate"]
    assert set(serving["onnx"]["files"]) == {"fp32", "int8"} and gate["recommended"] in ("fp32", "int8")
    assert gate["figures"] and all(name.startswith(("test/", "documents/")) for name in gate["figures"])
    assert gate["int8_recommended"] == all(row["kept"] >= 0.99 for row in gate["figures"].values())
    report = json.loads((result.run_dir / "report.json").read_text())
    assert set(report["serving"]["evaluations"]) == {"fp32", "int8"}
    assert gate["decision"] in (result.run_dir / "report.txt").read_text()
    vectors = OnnxEmbedder(result.export_dir, "int8").encode(["a sentence to embed", "another one"])
    assert vectors.shape == (2, 32)


def test_layer_distillation_matches_each_kept_layer_to_the_teacher_layer_it_was_cut_from(tiny_xlmr_embedder):
    """Off by default; weighted into the total when on; the teacher's cached outputs give the same
    loss as its batch outputs; each student layer meets the teacher layer `teacher_layers` names."""
    from prune_engine.batches import make_batch
    from prune_engine.data import ScoredPairs
    from prune_engine.objective import PruningObjective
    from prune_engine.teacher import Teacher

    pairs = ScoredPairs(["a cat sits on the mat", "rivers flow"], ["a cat is sitting", "stocks fell"], [1.0, 0.1], "t")
    teacher = tiny_xlmr_embedder(seed=0)
    layers = teacher.config.num_hidden_layers
    batch = make_batch(pairs, [0, 1])
    features = teacher.tokenize(batch.texts, 32)
    with torch.no_grad():
        teacher_out = teacher(features, layer_states=True)
    assert teacher_out.layer_states.shape == (4, features["input_ids"].shape[1], layers, teacher.config.hidden_size)
    assert torch.equal(teacher_out.layer_states[:, :, -1], teacher_out.token_states)

    def losses(student, teacher_outs, *overrides, teacher_layers=None):
        config = load_config(None, ["target_params.fraction=0.5", *overrides])
        objective = PruningObjective(student, config, pairs.kind, teacher_layers=teacher_layers)
        with torch.no_grad():
            return objective([features], batch, teacher_outs, 1.0)

    student = tiny_xlmr_embedder(seed=1)
    off, on = losses(student, [teacher_out]), losses(student, [teacher_out], "loss.distill_layers=0.5")
    assert "distill_layers" not in off and float(on["distill_layers"]) > 0.01
    assert float(on["total"] - off["total"]) == pytest.approx(0.5 * float(on["distill_layers"]), rel=1e-4)
    cached = Teacher(teacher, 32, cache_mb=64, layer_states=True).outputs(batch.texts, features, contextlib.nullcontext)
    assert float(losses(student, [cached], "loss.distill_layers=1")["distill_layers"]) == pytest.approx(
        float(on["distill_layers"]), rel=1e-4)

    # A student equal to the teacher: nothing to learn when each layer meets its own, something when not.
    twin = copy.deepcopy(teacher)
    same = losses(twin, [teacher_out], "loss.distill_layers=1", teacher_layers=list(range(layers)))
    shifted = losses(twin, [teacher_out], "loss.distill_layers=1", teacher_layers=[0] * layers)
    assert float(same["distill_layers"]) == pytest.approx(0.0, abs=1e-5) and float(shifted["distill_layers"]) > 0.01


def test_a_layer_drop_run_distils_each_kept_layer_against_its_source_layer(tiny_model_dir, tmp_path, monkeypatch):
    from prune_engine import trainer

    built = []

    class Recording(trainer.PruningObjective):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            built.append(self.teacher_layers)

    monkeypatch.setattr(trainer, "PruningObjective", Recording)
    keep_outer = {"layers": [True, False, True], "heads": [[True] * 4] * 3, "ffn": [[True] * 64] * 3}
    masks_file = tmp_path / "masks.json"
    masks_file.write_text(json.dumps(keep_outer))
    config = tiny_config(tiny_model_dir, tmp_path / "run", "target_params=null", f"fixed_masks={masks_file}",
                         "max_duration=2ba", "eval_splits=[]", "loss.distill_layers=1")
    result = PruningRun(config).run()
    assert built == [[0, 2]]
    logged = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert all(record["loss/distill_layers"] > 0 for record in logged)
