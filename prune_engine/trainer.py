"""The pruning run: learn masks and weights together, fix the masks, fine-tune, prune, export.

Phase "mask" trains the student's weights, the L0 gate logits and the Lagrangian multipliers
(by gradient ascent) against distillation + task losses + the size term, with the target ramped
from the full size. At the end of it the final masks are fixed by top-k, the student is sliced,
and phase "finetune" trains the smaller model with the same losses; then `finish.py` exports it
and writes the report. A fixed structure skips the mask phase.

The run reports through `TrainingEvent`s at every logging step (the CLI's progress bar and the
workbench's live charts are both just callbacks) and writes everything to its run directory
(`run_dir.py`). Multi-GPU / multi-node goes through Hugging Face Accelerate.
"""

from __future__ import annotations

import copy
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .accounting import count_parameters
from .batches import BatchSchedule, make_batch
from .checkpoint import Checkpoint, CheckpointError, latest_usable, restore_rng, rng_state, save_checkpoint
from .config import RunConfig
from .embedder import Embedder
from .finish import export_run, report_text, run_report
from .importance import gate_start
from .l0 import L0Masks, StructureMasks
from .lagrangian import Lagrangian
from .modeling_prunable_encoder import PrunableEncoderConfig, PrunableEncoderModel
from .objective import PruningObjective, scheduler_at, weights_and_gates_optimizer
from .prune import prune_embedder
from .run_dir import RunDirectory, TrainingError
from .run_inputs import check_resumable, load_inputs
from .teacher import Teacher


def _missing_folders(folder: Path) -> list[Path]:
    """`folder` and those of its parents that do not exist yet, innermost first."""
    missing = []
    while not folder.exists() and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    return missing


def _remove_if_empty(folders: list[Path]) -> None:
    """Folders a refused run created and left empty go again, innermost first."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:
            return  # not empty: the run wrote in it


@dataclass
class TrainingEvent:
    kind: str  # start | log | phase | checkpoint | done | cancelled | error | warning
    step: int
    total_steps: int
    phase: str
    metrics: dict = field(default_factory=dict)
    gates: dict | None = None  # heatmap data: `L0Masks.snapshot` / `StructureMasks.snapshot`
    message: str = ""


@dataclass
class RunResult:
    run_dir: Path
    export_dir: Path | None
    student: Embedder | None
    cancelled: bool = False


def size_metrics(inputs, student: Embedder, masks: L0Masks | None, lagrangian: Lagrangian | None,
                 ramp: float) -> dict[str, float]:
    """Where the size stands: the expected sizes and structure under the gates (the student's own
    size once masks are fixed), the ramped target, the gaps and the multipliers."""
    target = inputs.target
    if masks is None:
        counts = count_parameters(student.config, None, inputs.output_heads)
        return {"expected_encoder_params": counts.encoder, "expected_total_params": counts.total,
                "decided_fraction": 1.0, "target_params": target.encoder_parameters(inputs.source_config)}
    with torch.no_grad():
        expected = masks.expected_parameters(inputs.output_heads)
        structure = masks.expected_structure()
        gaps = target.gaps(masks, ramp)
    metrics = {
        "expected_encoder_params": float(expected["encoder"]), "expected_total_params": float(expected["total"]),
        "expected_layers": float(structure["layers"]), "expected_heads_per_layer": float(structure["heads"].mean()),
        "expected_ffn_per_layer": float(structure["ffn"].mean()), "target_ramp": ramp,
        "decided_fraction": masks.decided_fraction(), "target_params": target.encoder_parameters(inputs.source_config, ramp),
    }
    metrics.update({f"gap/{name}": gap for name, gap in zip(target.constraint_names(), gaps.tolist(), strict=True)})
    metrics.update(lagrangian.multipliers())
    return metrics


def stop_if_not_finite(total: torch.Tensor, step: int, checkpoints: Path) -> None:
    """The NaN guard: names the last checkpoint worth going back to (finite, not diverged weights)."""
    if torch.isfinite(total):
        return
    good, _ = latest_usable(checkpoints, require_healthy=True)
    kept = f"its last good checkpoint is step {good.step} (resume to continue from it)" if good else \
        "no checkpoint with finite weights was saved before it"
    raise TrainingError(f"the loss became {float(total.detach())} at step {step}; the run stopped, and "
                        f"{kept}. Lower optimizer.lr or optimizer.gate_lr, or use precision fp32")


def training_state(run: PruningRun) -> dict:
    """What a checkpoint holds to resume `run` exactly: weights, gates, multipliers, optimizers, RNGs."""
    state_of = lambda part: part.state_dict() if part is not None else None  # noqa: E731
    return {"student_config": run.student.config.to_dict(), "student": run.student.state_dict(),
            "masks": state_of(run.masks), "lagrangian": state_of(run.lagrangian),
            "final_masks": run.final_masks.as_dict() if run.final_masks is not None else None,
            "optimizer": run.optimizer.state_dict(), "lagrangian_optimizer": state_of(run.lagrangian_optimizer),
            "rng": rng_state(), "steps_seconds": run.steps_seconds}


def out_of_memory_message(batch_size: int, length: int) -> str:
    return (f"the GPU ran out of memory at batch_size={batch_size}, max_length={length}. Halve batch_size and raise "
            "gradient_accumulation to keep the effective batch, set gradient_checkpointing: true, use precision "
            "amp_bf16, or lower max_length")


def plan_steps(config: RunConfig, steps_per_epoch: int, learns_masks: bool) -> tuple[int, int, int]:
    """(total steps, steps learning masks, steps over which the target ramps from the full size)."""
    count, unit = config.duration()
    total = count if unit == "ba" else count * steps_per_epoch
    mask_steps = max(1, round(total * config.mask_fraction)) if learns_masks else 0
    return total, mask_steps, max(1, round(mask_steps * config.target_warmup_fraction))


def make_accelerator(config: RunConfig):
    """Accelerate for devices and processes. bf16 autocast is the run's own (`PruningRun.autocast`):
    Accelerate keeps one mixed precision per process, and the workbench trains runs of different
    precisions in one process. fp16 stays with Accelerate, which owns its loss scaler."""
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs

    if config.precision == "amp_fp16" and not torch.cuda.is_available():
        raise TrainingError("precision amp_fp16 needs a GPU; on CPU use fp32 or amp_bf16")
    try:
        return Accelerator(
            mixed_precision="fp16" if config.precision == "amp_fp16" else "no",
            gradient_accumulation_steps=config.gradient_accumulation,
            kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],
        )
    except ValueError as error:
        if "already been initialized" not in str(error):
            raise
        raise TrainingError(
            "an amp_fp16 run and an fp32 or amp_bf16 run cannot train in one process (Accelerate keeps "
            "one mixed precision per process): use amp_bf16, or start this run from the CLI") from None


class PruningRun:
    """One run in one directory. `cancel` (a threading.Event) is checked every step."""

    def __init__(self, config: RunConfig, run_dir: str | Path | None = None,
                 callbacks: Sequence[Callable[[TrainingEvent], None]] = (), cancel: threading.Event | None = None,
                 show_progress: bool = False, allow_config_change: bool = False):
        self.config = config
        self.directory = RunDirectory(run_dir or config.output_dir)
        self.run_dir = self.directory.path
        self.callbacks = list(callbacks)
        self.cancel = cancel or threading.Event()
        self.show_progress = show_progress
        self.allow_config_change = allow_config_change
        self.accelerator = make_accelerator(config)
        self.step, self.total_steps, self.phase, self.last_loss = 0, 0, "mask", float("nan")
        self.final_masks: StructureMasks | None = None
        self.masks: L0Masks | None = None
        self.timings: dict[str, float] = {}
        self.steps_seconds = 0.0  # in training steps over every sitting: a resumed run counts its whole time

    def autocast(self):
        """The context the student's and the teacher's forward passes run in."""
        if self.config.precision == "amp_bf16":
            return torch.autocast(self.accelerator.device.type, dtype=torch.bfloat16)
        return self.accelerator.autocast()

    # ----------------------------------------------------------------- events and status
    def _emit(self, kind: str, metrics: dict | None = None, gates: dict | None = None, message: str = "") -> None:
        if self.accelerator.is_main_process:
            event = TrainingEvent(kind, self.step, self.total_steps, self.phase, metrics or {}, gates, message)
            for callback in self.callbacks:
                callback(event)

    def _status(self, state: str, message: str = "") -> None:
        if self.accelerator.is_main_process:
            self.directory.write_status(state, self.step, self.total_steps, self.phase, message)

    def _gates(self) -> dict:
        fixed = self.final_masks
        return fixed.snapshot(self.inputs.source_config) if fixed is not None else self.masks.snapshot()

    # ----------------------------------------------------------------- the run
    def run(self, resume: bool = False) -> RunResult:
        """Trains (or resumes) in the run directory, which no other process may be training in. Bad
        input (all checked before training) raises and leaves the directory as it was (removed again
        if this call created it); status.json records only runs that started."""
        created = _missing_folders(self.run_dir.absolute())
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            if self.accelerator.is_main_process:
                self.directory.lock.acquire()  # before anything is written: a refused run leaves the other's files
        except OSError as error:
            raise TrainingError(f"cannot use {self.run_dir} as the run directory ({error.strerror}): choose an "
                                "output_dir you can write to") from None
        try:
            started = time.perf_counter()
            checkpoint, notes = check_resumable(self.directory, self.config, resume, self.allow_config_change)
            self.inputs = load_inputs(self.config, self.directory)
            self.timings["load"] = time.perf_counter() - started
            if self.accelerator.is_main_process:
                self.directory.remove_stale_staging()
            return self._run(checkpoint, notes)
        finally:
            self.directory.lock.release()
            _remove_if_empty(created)

    def _run(self, checkpoint: Checkpoint | None, notes: list[str]) -> RunResult:
        try:
            self.inputs.teacher.to(self.accelerator.device)
            self.schedule = BatchSchedule(
                len(self.inputs.data), self.inputs.training_documents, self.config.batch_size,
                self.config.documents_per_batch, self.config.seed, self.config.max_train_examples,
                self.accelerator.num_processes, self.accelerator.process_index)
            self.total_steps, self.mask_steps, self.ramp_steps = plan_steps(
                self.config, self.schedule.steps_per_epoch, self.inputs.target.learns_masks)
            self.teacher = Teacher(self.inputs.teacher, self.inputs.length, self.config.teacher_cache_mb,
                                   layer_states=self.config.loss.distill_layers > 0)
            if checkpoint is not None:
                self._restore(checkpoint)
            else:
                self._start()
            if self.accelerator.is_main_process:
                self.directory.write_config(self.config)
            self._status("running")
            self._emit("start", self._size_metrics(), self._gates())
            for note in notes + self.inputs.warnings:
                self._emit("warning", message=note)
            return self._loop()
        except CheckpointError as error:  # a checkpoint that could not be written (a full disk)
            self._fail(str(error))
            raise TrainingError(str(error)) from None
        except (TrainingError, ValueError) as error:  # ValueError: data, model, target, config
            self._fail(str(error))
            raise
        except torch.cuda.OutOfMemoryError:
            message = out_of_memory_message(self.config.batch_size, self.inputs.length)
            self._fail(message)
            raise TrainingError(message) from None
        except OSError as error:  # a full disk, a folder made read-only under the run
            message = (f"could not write {error.filename or self.run_dir}: {error.strerror or error}. Free disk space "
                       "or make it writable, then resume the run (--resume)")
            self._fail(message)
            raise TrainingError(message) from None

    def _fail(self, message: str) -> None:
        try:
            self._status("failed", message)
        except OSError:
            pass  # the disk that failed the run may not take the status either; the error still says why
        self._emit("error", message=message)

    def _start(self) -> None:
        self.directory.restart_logs(from_step=0)
        student = copy.deepcopy(self.inputs.teacher).requires_grad_(True).to(self.accelerator.device)
        if self.inputs.target.learns_masks:
            start = gate_start(student, self.inputs.data, self.config, self.inputs.length)
            masks = L0Masks(student.config, tuple(self.config.structures), init_per_gate=start)
            self._build_objective(student, masks, Lagrangian(self.inputs.target.constraint_names()))
        else:
            self.phase = "finetune"
            self._fix_masks(student, self.inputs.target.final_masks())

    def _fix_masks(self, student: Embedder, final_masks: StructureMasks) -> None:
        started = time.perf_counter()
        self.final_masks = final_masks
        if self.accelerator.is_main_process:
            self.directory.write_final_masks(final_masks)
        self._release_training_state()
        self._build_objective(prune_embedder(student, final_masks), None, None)
        self.timings["slicing"] = time.perf_counter() - started

    def _release_training_state(self) -> None:
        """The accelerator keeps what it prepared: the student and Adam states (GBs at BGE-M3's size) it
        trained must not outlive their phase, beside the pruned student, the export and the evaluation."""
        self.objective = self.optimizer = self.lagrangian_optimizer = self.scheduler = self.student = None
        self.accelerator.free_memory()

    def _build_objective(self, student: Embedder, masks: L0Masks | None, lagrangian: Lagrangian | None) -> None:
        config = self.config
        if config.freeze_embeddings:
            student.encoder.embeddings.word_embeddings.requires_grad_(False)
        if config.gradient_checkpointing:
            student.encoder.gradient_checkpointing_enable()
        student.train()
        # A sliced student's layers are the kept ones; while masks are learned, every layer is there.
        teacher_layers = (torch.nonzero(self.final_masks.layers).flatten().tolist()
                          if masks is None and self.final_masks is not None else None)
        objective = PruningObjective(student, config, self.inputs.data.kind, masks, lagrangian, self.inputs.target,
                                     teacher_layers)
        optimizer = weights_and_gates_optimizer(student, masks, config)
        scheduler = scheduler_at(optimizer, config, self.total_steps, self.step)
        prepared = [objective, optimizer] + ([lagrangian.optimizer(config.optimizer.lagrangian_lr)] if lagrangian else [])
        prepared = self.accelerator.prepare(*prepared)
        self.objective, self.optimizer = prepared[0], prepared[1]
        self.lagrangian_optimizer = prepared[2] if lagrangian is not None else None
        self.scheduler, self.student, self.masks, self.lagrangian = scheduler, student, masks, lagrangian

    # ----------------------------------------------------------------- checkpoints
    def _save_checkpoint(self) -> Path | None:
        path = None
        if self.accelerator.is_main_process:
            path = save_checkpoint(self.directory.checkpoints, Checkpoint(self.step, self.phase, training_state(self),
                                                                          self.last_loss), self.config.keep_checkpoints)
        self.accelerator.wait_for_everyone()
        return path

    def _restore(self, checkpoint: Checkpoint) -> None:
        self.step, self.phase, state = checkpoint.step, checkpoint.phase, checkpoint.state
        self.directory.restart_logs(from_step=self.step)
        encoder = PrunableEncoderModel(PrunableEncoderConfig.from_dict(state["student_config"]))
        student = self.inputs.teacher.with_parts(encoder).to(self.accelerator.device)
        student.load_state_dict(state["student"])
        if state["final_masks"] is not None:
            self.final_masks = StructureMasks.from_dict(state["final_masks"])
        if self.phase == "mask":
            masks = L0Masks(self.inputs.source_config, tuple(self.config.structures)).to(self.accelerator.device)
            masks.load_state_dict(state["masks"])
            lagrangian = Lagrangian(self.inputs.target.constraint_names()).to(self.accelerator.device)
            lagrangian.load_state_dict(state["lagrangian"])
            self._build_objective(student, masks, lagrangian)
            self.lagrangian_optimizer.load_state_dict(state["lagrangian_optimizer"])
        else:
            self._build_objective(student, None, None)
        self.optimizer.load_state_dict(state["optimizer"])
        restore_rng(state["rng"])
        self.steps_seconds = state.get("steps_seconds", 0.0)  # absent from checkpoints written before 2026-12-05

    # ----------------------------------------------------------------- training
    def _train_step(self) -> dict[str, float]:
        indices = self.schedule.indices(self.step)
        ramp = min(1.0, self.step / self.ramp_steps) if self.phase == "mask" else 1.0
        sums: dict[str, float] = {}
        micro_batches = self.schedule.micro_batches(indices, self.config.gradient_accumulation)
        documents = self.schedule.documents_of(self.step)
        for part, micro in enumerate(micro_batches):
            batch = make_batch(self.inputs.data, micro, documents[part :: len(micro_batches)])
            with self.accelerator.accumulate(self.objective):
                groups = [self.student.tokenize(texts, self.inputs.length) for texts in batch.padding_groups]
                teacher_outs = [self.teacher.outputs(texts, features, self.autocast)
                                for texts, features in zip(batch.padding_groups, groups, strict=True)]
                with self.autocast():
                    losses = self.objective(groups, batch, teacher_outs, ramp)
                stop_if_not_finite(losses["total"], self.step, self.directory.checkpoints)
                self.accelerator.backward(losses["total"])
                if self.accelerator.sync_gradients and self.config.optimizer.max_grad_norm > 0:
                    self.accelerator.clip_grad_norm_([p for p in self.student.parameters() if p.requires_grad],
                                                     self.config.optimizer.max_grad_norm)
                self.optimizer.step()
                if self.lagrangian_optimizer is not None:
                    self.lagrangian_optimizer.step()
                    self.lagrangian_optimizer.zero_grad()
                self.optimizer.zero_grad()
            for name, value in losses.items():
                sums[name] = sums.get(name, 0.0) + float(value.detach()) / len(micro_batches)
        self.scheduler.step()
        self.last_loss = sums["total"]
        sums["examples"] = float(len(indices) * self.accelerator.num_processes)
        return sums

    def _size_metrics(self) -> dict[str, float]:
        ramp = min(1.0, self.step / self.ramp_steps) if self.masks is not None else 1.0
        return size_metrics(self.inputs, self.student, self.masks, self.lagrangian, ramp)

    def _loop(self) -> RunResult:
        from tqdm.auto import tqdm

        # The bar is closed before an error propagates, so the CLI's error line starts a line of its own.
        with tqdm(total=self.total_steps, initial=self.step, desc="pruning", unit="step",
                  disable=not (self.show_progress and self.accelerator.is_main_process)) as progress:
            if not self._train_steps(progress):
                return RunResult(self.run_dir, None, None, cancelled=True)
        if self.phase == "mask":
            self._end_mask_phase()
        return self._finish()

    def _train_steps(self, progress) -> bool:
        """Trains to the last step (True), or until cancelled (False) with a checkpoint to resume from."""
        window, window_steps, window_start = {}, 0, time.perf_counter()
        started = window_start - self.steps_seconds  # as if the earlier sittings ran just before this one
        while self.step < self.total_steps:
            if self.cancel.is_set():
                self._save_checkpoint()
                self._status("cancelled", f"cancelled at step {self.step}; resume to continue")
                self._emit("cancelled", message="cancelled; resume to continue")
                return False
            if self.phase == "mask" and self.step >= self.mask_steps:
                self._end_mask_phase()
            for name, value in self._train_step().items():
                window[name] = window.get(name, 0.0) + value
            self.step += 1
            self.steps_seconds = time.perf_counter() - started
            window_steps += 1
            progress.update(1)
            if self.step % self.config.log_every == 0 or self.step == self.total_steps:
                record = {"step": self.step, "phase": self.phase, "elapsed_s": self.steps_seconds}
                record.update({f"loss/{k}": v / window_steps for k, v in window.items() if k != "examples"})
                record["examples_per_s"] = window.get("examples", 0.0) / max(time.perf_counter() - window_start, 1e-9)
                self._log_step(record, progress)
                window, window_steps, window_start = {}, 0, time.perf_counter()
            if self.step % self.config.checkpoint_every == 0 and self.step < self.total_steps:
                self._emit("checkpoint", message=str(self._save_checkpoint()))
        self.timings["steps"] = self.steps_seconds
        self.timings["teacher"] = self.teacher.seconds  # within the steps: the teacher's outputs of new texts
        return True

    def _log_step(self, record: dict, progress) -> None:
        """Completes a logging step's record (learning rates, sizes) and writes and reports it."""
        record["lr/weights"] = self.optimizer.param_groups[0]["lr"]
        if self.masks is not None:
            record["lr/gates"] = self.optimizer.param_groups[1]["lr"]
        record.update(self._size_metrics())
        gates = self._gates()
        if self.accelerator.is_main_process:
            self.directory.append_log(record, {"step": self.step, "phase": self.phase, **gates})
        progress.set_postfix(loss=f"{record['loss/total']:.3f}", size=f"{record['expected_encoder_params'] / 1e6:.1f}M")
        self._emit("log", record, gates)

    def _end_mask_phase(self) -> None:
        student = self.accelerator.unwrap_model(self.objective).student
        self.phase = "finetune"
        alignment = self.config.alignment(on_gpu=self.accelerator.device.type == "cuda")
        self._fix_masks(student, self.inputs.target.final_masks(self.masks, alignment))
        self._emit("phase", self._size_metrics(), self._gates(), "masks fixed; fine-tuning the pruned structure")

    def _finish(self) -> RunResult:
        student = self.accelerator.unwrap_model(self.objective).student.eval()
        self._release_training_state()
        export_dir = None
        if self.accelerator.is_main_process:
            started = time.perf_counter()
            student, export_dir = export_run(
                student, self.config, self.directory, self.inputs.source_config, self.final_masks,
                self.inputs.target.describe(), self.step, self.inputs.vocabulary_texts)
            self.timings["export"] = time.perf_counter() - started
            report = run_report(self.config, self.inputs, student, export_dir, self.timings)
            self.directory.write_report(report, report_text(report))
        self._status("done")
        self._emit("done", gates=self._gates(), message=str(export_dir))
        self.accelerator.wait_for_everyone()
        return RunResult(self.run_dir, export_dir, student)
