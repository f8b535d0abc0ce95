"""The pruning run: learn masks and weights together, fix the masks, fine-tune, prune, export.

Phase "mask" trains the student's weights, the L0 gate logits and the Lagrangian multipliers
(by gradient ascent) against distillation + task losses + the size term, with the target ramped
from the full size. At the end of it the final masks are fixed by top-k, the student is sliced,
and phase "finetune" trains the smaller model with the same losses. Then it is exported.

The run reports through `TrainingEvent`s at every logging step (the CLI's progress bar and the
workbench's live charts are both just callbacks) and writes everything to one directory:
config.yaml, metrics.jsonl, mask_snapshots.jsonl, checkpoints/, final_masks.json, export/,
report.json, status.json. Multi-GPU / multi-node goes through Hugging Face Accelerate.
"""

from __future__ import annotations

import copy
import json
import math
import os
import random
import shutil
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .config import RunConfig, save_config
from .data import QueryPassagePairs, ScoredPairs, TextCorpus, load_training_data, texts_of
from .embedder import Embedder, EmbeddingOutput
from .export import export_embedder, pruning_info
from .l0 import GATE_ADAM_BETAS, L0Masks, StructureMasks
from .losses import CoSENTLoss, DistillationLoss, InfoNCELoss, TokenDistillationLoss
from .modeling_prunable_encoder import PrunableEncoderConfig, PrunableEncoderModel
from .prune import kept_indices, prune_embedder
from .sources import load_embedder
from .targets import Lagrangian, SizeTarget

STATE_FILE = "state.pt"


class TrainingError(RuntimeError):
    """A run that had to stop; the message says why and what to change."""


@dataclass
class TrainingEvent:
    kind: str  # start | log | phase | checkpoint | done | cancelled | error
    step: int
    total_steps: int
    phase: str
    metrics: dict = field(default_factory=dict)
    gates: dict | None = None  # heatmap data, see `gate_snapshot`
    message: str = ""


@dataclass
class Batch:
    """Texts encoded in one forward pass. Scored pairs: texts[:n] pair with texts[n:2n].
    Query-passage: texts[:n] are queries, texts[n:task_end] their passages (then hard negatives).
    The last `distill_only` texts (from `distill_dataset`) feed the distillation losses alone."""

    kind: str
    texts: list[str]
    n: int
    scores: torch.Tensor | None = None
    distill_only: int = 0

    @property
    def task_end(self) -> int:
        return len(self.texts) - self.distill_only

    @property
    def padding_groups(self) -> list[list[str]]:
        """Task texts and distillation-only texts are tokenised apart, so short sentences are not
        padded to the length of the passages mixed in with them."""
        return [group for group in (self.texts[: self.task_end], self.texts[self.task_end :]) if group]


def merge_outputs(outputs: list[EmbeddingOutput]) -> EmbeddingOutput:
    """Padding groups -> one output: (batch_i, length_i, ...) tensors zero-padded to the longest
    length and concatenated along the batch."""
    if len(outputs) == 1:
        return outputs[0]
    length = max(o.attention_mask.shape[1] for o in outputs)

    def cat(name: str, trim: int = 0) -> torch.Tensor | None:
        parts = [getattr(o, name) for o in outputs]
        if parts[0] is None:
            return None
        # Pad dimension 1 (tokens) at its end: F.pad counts dimensions from the last one.
        padded = [F.pad(p, [0, 0] * (p.dim() - 2) + [0, length - trim - p.shape[1]]) for p in parts]
        return torch.cat(padded)

    return EmbeddingOutput(
        dense=torch.cat([o.dense for o in outputs]), token_states=cat("token_states"),
        attention_mask=cat("attention_mask"), sparse_weights=cat("sparse_weights"),
        colbert_vectors=cat("colbert_vectors", trim=1),
    )


def make_batch(data, indices: Sequence[int], distill_texts: Sequence[str] = ()) -> Batch:
    scores = None
    if isinstance(data, ScoredPairs):
        kind, texts = "scored_pairs", [data.sentences1[i] for i in indices] + [data.sentences2[i] for i in indices]
        scores = torch.tensor([data.scores[i] for i in indices])
    elif isinstance(data, QueryPassagePairs):
        kind, texts = "query_passage", [data.queries[i] for i in indices] + [data.passages[i] for i in indices]
        if data.negatives:
            texts += [data.negatives[i][0] for i in indices if data.negatives[i]]
    elif isinstance(data, TextCorpus):
        kind, texts = "text", [data.texts[i] for i in indices]
    else:
        raise TypeError(f"cannot train on {type(data).__name__}")
    return Batch(kind, texts + list(distill_texts), len(indices), scores, len(distill_texts))


def dataset_size(data) -> int:
    if isinstance(data, ScoredPairs):
        return len(data.sentences1)
    if isinstance(data, QueryPassagePairs):
        return len(data.queries)
    return len(data.texts)


def gate_snapshot(masks: L0Masks | None, final: StructureMasks | None, config: PrunableEncoderConfig) -> dict:
    """Per layer: layer gate, head gates, and FFN neurons kept, as plain lists for JSON and plots."""
    if final is not None:
        return {
            "layers": [float(v) for v in final.layers],
            "heads": [[float(v) for v in h] for h in final.heads],
            "ffn_kept": [int(f.sum()) for f in final.ffn],
            "ffn_size": list(config.intermediate_sizes),
        }
    values = masks.deterministic_values()
    ones = lambda sizes: [[1.0] * s for s in sizes]  # noqa: E731
    layers = values.get("layers", [torch.ones(1)] * config.num_hidden_layers)
    heads = values.get("heads")
    ffn = values.get("ffn")
    return {
        "layers": [float(v) for v in layers],
        "heads": [h.tolist() for h in heads] if heads is not None else ones(config.heads_per_layer),
        "ffn_kept": [int((f > 0.5).sum()) for f in ffn] if ffn is not None else list(config.intermediate_sizes),
        "ffn_size": list(config.intermediate_sizes),
    }


class PruningObjective(nn.Module):
    """Everything trained, in one module (so DDP wraps one thing): the student, and during the
    mask phase its gates and the Lagrangian."""

    def __init__(self, student: Embedder, config: RunConfig, masks: L0Masks | None = None,
                 lagrangian: Lagrangian | None = None, target: SizeTarget | None = None):
        super().__init__()
        self.student = student
        self.masks = masks
        self.lagrangian = lagrangian
        self.target = target
        self.weights = config.loss
        self.distill = DistillationLoss()
        self.token_distill = TokenDistillationLoss()
        self.cosent = CoSENTLoss(config.loss.cosent_scale)
        self.infonce = InfoNCELoss(config.loss.temperature)

    def forward(self, groups: list[dict], batch: Batch, teacher_outs: list[EmbeddingOutput], ramp: float) -> dict[str, torch.Tensor]:
        """`groups`: the batch's features in padding groups (`Batch.padding_groups`), with the
        teacher's output for each; one gate sample serves them all."""
        gates = self.masks.gates() if self.masks is not None else None
        out = merge_outputs([self.student(features, gates=gates) for features in groups])
        teacher_out = merge_outputs(teacher_outs)
        losses = self.distill(out.dense, teacher_out.dense)
        tokens = self.weights.distill_tokens > 0  # an unweighted token loss is neither computed nor logged
        losses.update(
            self.token_distill(
                out.sparse_weights, teacher_out.sparse_weights,
                out.colbert_vectors, teacher_out.colbert_vectors, out.attention_mask,
                student_tokens=out.token_states if tokens else None,
                teacher_tokens=teacher_out.token_states if tokens else None,
            )
        )
        if batch.kind == "scored_pairs":
            n = batch.n
            cosines = F.cosine_similarity(out.dense[:n], out.dense[n : 2 * n], dim=-1)
            losses["task"] = self.cosent(cosines.float(), batch.scores.to(cosines.device))
        elif batch.kind == "query_passage":
            losses["task"] = self.infonce(out.dense[: batch.n].float(), out.dense[batch.n : batch.task_end].float())
        # Each loss is weighted by the LossConfig field of its name.
        total = sum(getattr(self.weights, name) * value.float() for name, value in losses.items())
        if self.masks is not None:
            gaps = self.target.gaps(self.masks, ramp)
            losses["lagrangian"] = self.lagrangian(gaps)
            total = total + losses["lagrangian"]
        losses["total"] = total
        return losses


def weights_and_gates_optimizer(student: Embedder, masks: L0Masks | None, config: RunConfig) -> torch.optim.AdamW:
    """Group 0: the trainable weights (lr, weight decay). Group 1, in the mask phase: the gate
    logits (gate_lr, no decay, short momentum so they follow the moving target)."""
    weights = [p for p in student.parameters() if p.requires_grad]
    groups = [{"params": weights, "lr": config.optimizer.lr, "weight_decay": config.optimizer.weight_decay}]
    if masks is not None:
        groups.append({"params": list(masks.parameters()), "lr": config.optimizer.gate_lr, "weight_decay": 0.0,
                       "betas": GATE_ADAM_BETAS})
    return torch.optim.AdamW(groups)


def _weight_schedule(warmup: int, total: int) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total - step) / max(1, total - warmup))

    return factor


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


class RunDirectoryBusy(TrainingError):
    """Another live process is training in this run directory; its files are left alone."""


class RunDirectoryLock:
    """`run.lock` in a run directory, holding its owner's pid, so two processes never train into
    one directory. It appears complete or not at all (a hard link of a finished file); a lock whose
    process has died is taken over."""

    def __init__(self, run_dir: Path):
        self.path = run_dir / "run.lock"
        self.held = False

    def owner(self) -> int | None:
        try:
            return int(self.path.read_text())
        except (FileNotFoundError, ValueError):
            return None

    def acquire(self) -> None:
        mine = self.path.with_name(f"run.lock.{os.getpid()}.{threading.get_ident()}")
        mine.write_text(str(os.getpid()))
        try:
            for _ in range(2):
                try:
                    os.link(mine, self.path)
                    self.held = True
                    return
                except FileExistsError:
                    owner = self.owner()
                    if pid_alive(owner):
                        raise RunDirectoryBusy(
                            f"{self.path.parent} is being trained by process {owner}: wait for it or stop it, "
                            f"or choose another output_dir (if no such run exists, delete {self.path})"
                        ) from None
                    self.path.unlink(missing_ok=True)  # stale: its process is gone
            raise TrainingError(f"could not take {self.path}: another process keeps creating it")
        finally:
            mine.unlink(missing_ok=True)

    def release(self) -> None:
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False


class PruningRun:
    """One run in one directory. `cancel` (a threading.Event) is checked every step."""

    def __init__(
        self,
        config: RunConfig,
        run_dir: str | Path | None = None,
        callbacks: Sequence[Callable[[TrainingEvent], None]] = (),
        cancel: threading.Event | None = None,
        show_progress: bool = False,
    ):
        from accelerate import Accelerator
        from accelerate.utils import DistributedDataParallelKwargs

        self.config = config
        self.run_dir = Path(run_dir or config.output_dir)
        self.callbacks = list(callbacks)
        self.cancel = cancel or threading.Event()
        self.show_progress = show_progress
        mixed = {"fp32": "no", "amp_bf16": "bf16", "amp_fp16": "fp16"}[config.precision]
        if mixed == "fp16" and not torch.cuda.is_available():
            raise TrainingError("precision amp_fp16 needs a GPU; on CPU use fp32 or amp_bf16")
        self.accelerator = Accelerator(
            mixed_precision=mixed,
            gradient_accumulation_steps=config.gradient_accumulation,
            kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],
        )
        self.step = 0
        self.phase = "mask"
        self.final_masks: StructureMasks | None = None

    # ----------------------------------------------------------------- set-up
    def _emit(self, event: TrainingEvent) -> None:
        if not self.accelerator.is_main_process:
            return
        for callback in self.callbacks:
            callback(event)

    def _write_status(self, state: str, message: str = "") -> None:
        if self.accelerator.is_main_process:
            status = {"state": state, "step": self.step, "total_steps": self.total_steps, "phase": self.phase,
                      "message": message, "updated": time.time(), "pid": os.getpid()}
            _write_json_atomic(self.run_dir / "status.json", status)

    def _setup(self) -> None:
        config = self.config
        torch.manual_seed(config.seed)
        random.seed(config.seed)
        np.random.seed(config.seed)
        self.teacher = load_embedder(config.model, trust_remote_code=config.trust_remote_code)
        self.teacher.requires_grad_(False).eval()
        self.train_length = min(config.max_length, self.teacher.max_length)
        self.data = load_training_data(config.dataset, "train")
        n = dataset_size(self.data)
        if n < 2:
            raise TrainingError(f"{config.dataset}: {n} training example(s); a run needs at least 2")
        self.examples = list(range(n))
        self.distill_texts: list[str] = []
        if config.distill_dataset:
            self.distill_texts = texts_of(load_training_data(config.distill_dataset, "train"))
            if len(self.distill_texts) < 2:
                raise TrainingError(f"distill_dataset {config.distill_dataset}: {len(self.distill_texts)} text(s); "
                                    "give a file or data set with at least 2 texts, or leave distill_dataset out")
        if config.max_train_examples and config.max_train_examples < n:
            self.examples = sorted(random.Random(config.seed).sample(self.examples, config.max_train_examples))
        world = self.accelerator.num_processes
        self.global_batch = config.batch_size * world
        if config.batch_size < 2:
            raise TrainingError("batch_size must be at least 2: the losses compare examples within a batch")
        count, unit = config.duration()
        steps_per_epoch = max(1, len(self.examples) // self.global_batch)
        self.total_steps = count if unit == "ba" else count * steps_per_epoch
        self.steps_per_epoch = steps_per_epoch
        self.mask_steps = max(1, round(self.total_steps * config.mask_fraction))
        self.ramp_steps = max(1, round(self.mask_steps * config.target_warmup_fraction))
        self.source_config = copy.deepcopy(self.teacher.config)
        self.output_heads = self.teacher.output_head_parameters()
        self.target = config.size_target(self.source_config, self.output_heads)
        if self.target is None:
            self.fixed_masks = self._read_fixed_masks(Path(config.fixed_masks))
            self.mask_steps = 0
        else:
            self.target.validate(self.source_config, tuple(config.structures))

    def _read_fixed_masks(self, path: Path) -> StructureMasks:
        try:
            masks = StructureMasks.from_dict(json.loads(path.read_text()))
        except (OSError, ValueError, KeyError) as error:
            raise TrainingError(f"fixed_masks {path}: cannot read it as a final_masks.json ({error})") from None
        config = self.source_config
        shapes_match = (
            len(masks.layers) == config.num_hidden_layers
            and [len(h) for h in masks.heads] == list(config.heads_per_layer)
            and [len(f) for f in masks.ffn] == list(config.intermediate_sizes)
        )
        if not shapes_match:
            raise TrainingError(f"fixed_masks {path} was made for another structure than {config.source_model_type} "
                                f"with {config.num_hidden_layers} layers of {config.heads_per_layer[0]} heads")
        return masks

    def _build_mask_phase(self, student: Embedder) -> None:
        masks = L0Masks(student.config, tuple(self.config.structures))
        lagrangian = Lagrangian(self.target.constraint_names())
        self._build_objective(student, masks, lagrangian)

    def _build_objective(self, student: Embedder, masks: L0Masks | None, lagrangian: Lagrangian | None) -> None:
        config = self.config
        if config.freeze_embeddings:
            student.encoder.embeddings.word_embeddings.requires_grad_(False)
        if config.gradient_checkpointing:
            student.encoder.gradient_checkpointing_enable()
        student.train()
        objective = PruningObjective(student, config, masks, lagrangian, self.target)
        optimizer = weights_and_gates_optimizer(student, masks, config)
        warmup = max(1, round(self.total_steps * config.optimizer.warmup_fraction))
        schedules = [_weight_schedule(warmup, self.total_steps)] + [lambda step: 1.0] * (len(optimizer.param_groups) - 1)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedules, last_epoch=-1)
        # LambdaLR steps once at construction; move it to the run's current step.
        for group, schedule, base in zip(optimizer.param_groups, schedules, scheduler.base_lrs, strict=True):
            group["lr"] = base * schedule(self.step)
        scheduler.last_epoch = self.step
        prepared = [objective, optimizer]
        lagrangian_optimizer = None
        if lagrangian is not None:
            lagrangian_optimizer = lagrangian.optimizer(config.optimizer.lagrangian_lr)
            prepared.append(lagrangian_optimizer)
        prepared = self.accelerator.prepare(*prepared)
        self.objective, self.optimizer = prepared[0], prepared[1]
        self.lagrangian_optimizer = prepared[2] if lagrangian is not None else None
        self.scheduler = scheduler
        self.student = student
        self.masks = masks
        self.lagrangian = lagrangian

    # ------------------------------------------------------------ checkpoints
    def _checkpoint_dir(self) -> Path:
        return self.run_dir / "checkpoints"

    def latest_checkpoint(self) -> Path | None:
        found = sorted(self._checkpoint_dir().glob("step_*/" + STATE_FILE))
        return found[-1].parent if found else None

    def _save_checkpoint(self) -> Path:
        target = self._checkpoint_dir() / f"step_{self.step:07d}"
        if self.accelerator.is_main_process:
            state = {
                "step": self.step,
                "phase": self.phase,
                "student_config": self.student.config.to_dict(),
                "student": self.student.state_dict(),
                "masks": self.masks.state_dict() if self.masks is not None else None,
                "lagrangian": self.lagrangian.state_dict() if self.lagrangian is not None else None,
                "final_masks": self.final_masks.as_dict() if self.final_masks is not None else None,
                "optimizer": self.optimizer.state_dict(),
                "lagrangian_optimizer": self.lagrangian_optimizer.state_dict() if self.lagrangian_optimizer else None,
                "rng": {
                    "torch": torch.get_rng_state(),
                    "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
                    "python": random.getstate(),
                    "numpy": np.random.get_state(),
                },
            }
            staging = target.with_name(target.name + ".partial")
            shutil.rmtree(staging, ignore_errors=True)
            staging.mkdir(parents=True)
            torch.save(state, staging / STATE_FILE)
            shutil.rmtree(target, ignore_errors=True)
            staging.rename(target)
            for old in sorted(self._checkpoint_dir().glob("step_*"))[: -self.config.keep_checkpoints]:
                shutil.rmtree(old, ignore_errors=True)
        self.accelerator.wait_for_everyone()
        return target

    def _restore(self, checkpoint: Path) -> None:
        state = torch.load(checkpoint / STATE_FILE, map_location="cpu", weights_only=False)
        self.step, self.phase = state["step"], state["phase"]
        encoder = PrunableEncoderModel(PrunableEncoderConfig.from_dict(state["student_config"]))
        student = self.teacher.with_parts(encoder).to(self.accelerator.device)
        student.load_state_dict(state["student"])
        if state["final_masks"] is not None:
            self.final_masks = StructureMasks.from_dict(state["final_masks"])
        if self.phase == "mask":
            masks = L0Masks(self.source_config, tuple(self.config.structures)).to(self.accelerator.device)
            masks.load_state_dict(state["masks"])
            lagrangian = Lagrangian(self.target.constraint_names()).to(self.accelerator.device)
            lagrangian.load_state_dict(state["lagrangian"])
            self._build_objective(student, masks, lagrangian)
            self.lagrangian_optimizer.load_state_dict(state["lagrangian_optimizer"])
        else:
            self._build_objective(student, None, None)
        self.optimizer.load_state_dict(state["optimizer"])
        rng = state["rng"]
        torch.set_rng_state(rng["torch"])
        if rng["cuda"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])
        random.setstate(rng["python"])
        np.random.set_state(rng["numpy"])

    # ------------------------------------------------------------------- loop
    def _batch_indices(self, step: int) -> list[int]:
        """The examples of `step` for this process: a seeded permutation per epoch, so a resumed
        run sees exactly the data an uninterrupted one would."""
        epoch, position = divmod(step, self.steps_per_epoch)
        order = torch.randperm(len(self.examples), generator=torch.Generator().manual_seed(self.config.seed + epoch))
        chunk = order[position * self.global_batch : (position + 1) * self.global_batch].tolist()
        mine = chunk[self.accelerator.process_index :: self.accelerator.num_processes]
        return [self.examples[i] for i in mine]

    def _distill_batch(self, step: int) -> list[str]:
        """This process's `distill_batch_size` distillation texts of `step`: the texts are read in a
        seeded permutation per pass, continuing across steps, so resuming sees the same texts."""
        if not self.distill_texts:
            return []
        count, world = len(self.distill_texts), self.accelerator.num_processes
        per_step = self.config.distill_batch_size * world
        positions = range(step * per_step, (step + 1) * per_step)
        orders = {}
        chosen = []
        for position in positions:
            epoch, offset = divmod(position, count)
            if epoch not in orders:
                generator = torch.Generator().manual_seed(self.config.seed + 1_000_003 + epoch)
                orders[epoch] = torch.randperm(count, generator=generator).tolist()
            chosen.append(self.distill_texts[orders[epoch][offset]])
        return chosen[self.accelerator.process_index :: world]

    def _micro_batches(self, indices: list[int]) -> list[list[int]]:
        parts = self.config.gradient_accumulation
        size = math.ceil(len(indices) / parts)
        return [indices[i : i + size] for i in range(0, len(indices), size) if len(indices[i : i + size]) >= 2]

    def _train_step(self) -> dict[str, float]:
        indices = self._batch_indices(self.step)
        ramp = min(1.0, self.step / self.ramp_steps) if self.phase == "mask" else 1.0
        sums: dict[str, float] = {}
        micro_batches = self._micro_batches(indices)
        distill_texts = self._distill_batch(self.step)
        for part, micro in enumerate(micro_batches):
            batch = make_batch(self.data, micro, distill_texts[part :: len(micro_batches)])
            with self.accelerator.accumulate(self.objective):
                groups = [self.student.tokenize(texts, self.train_length) for texts in batch.padding_groups]
                with torch.no_grad(), self.accelerator.autocast():
                    teacher_outs = [self.teacher(features) for features in groups]
                losses = self.objective(groups, batch, teacher_outs, ramp)
                if not torch.isfinite(losses["total"]):
                    raise TrainingError(
                        f"the loss became {float(losses['total'].detach())} at step {self.step}; the run stopped and kept its "
                        f"last good checkpoint ({self.latest_checkpoint() or 'none yet'}). Lower optimizer.lr or "
                        "optimizer.gate_lr, or use precision fp32"
                    )
                self.accelerator.backward(losses["total"])
                if self.accelerator.sync_gradients and self.config.optimizer.max_grad_norm > 0:
                    self.accelerator.clip_grad_norm_(
                        [p for p in self.student.parameters() if p.requires_grad], self.config.optimizer.max_grad_norm
                    )
                self.optimizer.step()
                if self.lagrangian_optimizer is not None:
                    self.lagrangian_optimizer.step()
                    self.lagrangian_optimizer.zero_grad()
                self.optimizer.zero_grad()
            for name, value in losses.items():
                sums[name] = sums.get(name, 0.0) + float(value.detach()) / len(micro_batches)
        self.scheduler.step()
        sums["examples"] = float(len(indices) * self.accelerator.num_processes)
        return sums

    def _size_metrics(self) -> dict[str, float]:
        if self.masks is None:
            from .accounting import count_parameters

            counts = count_parameters(self.student.config, None, self.output_heads)
            return {"expected_encoder_params": counts.encoder, "expected_total_params": counts.total,
                    "decided_fraction": 1.0}
        with torch.no_grad():
            expected = self.masks.expected_parameters(self.output_heads)
            structure = self.masks.expected_structure()
            ramp = min(1.0, self.step / self.ramp_steps)
            gaps = self.target.gaps(self.masks, ramp)
        metrics = {
            "expected_encoder_params": float(expected["encoder"]),
            "expected_total_params": float(expected["total"]),
            "expected_layers": float(structure["layers"]),
            "expected_heads_per_layer": float(structure["heads"].mean()),
            "expected_ffn_per_layer": float(structure["ffn"].mean()),
            "target_ramp": ramp,
            "decided_fraction": self.masks.decided_fraction(),
        }
        for name, gap in zip(self.target.constraint_names(), gaps.tolist(), strict=True):
            metrics[f"gap/{name}"] = gap
        metrics.update(self.lagrangian.multipliers())
        return metrics

    def _finish_mask_phase(self) -> None:
        self.final_masks = self.target.final_masks(self.masks)
        if self.accelerator.is_main_process:
            _write_json_atomic(self.run_dir / "final_masks.json", self.final_masks.as_dict())
        student = prune_embedder(self.accelerator.unwrap_model(self.objective).student, self.final_masks)
        self.phase = "finetune"
        self._build_objective(student, None, None)

    def run(self, resume: bool = False) -> RunResult:
        """Trains (or resumes) in `run_dir`, which no other process may be training in."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        lock = RunDirectoryLock(self.run_dir)
        if self.accelerator.is_main_process:
            lock.acquire()  # before anything is written, so a refused run leaves the other's files alone
        try:
            return self._run(resume)
        finally:
            lock.release()

    def _run(self, resume: bool) -> RunResult:
        self.total_steps = 0
        try:
            self._setup()
            checkpoint = self.latest_checkpoint() if resume else None
            if resume and checkpoint is None:
                raise TrainingError(f"nothing to resume: {self._checkpoint_dir()} holds no checkpoint")
            if not resume and self.latest_checkpoint() is not None:
                raise TrainingError(
                    f"{self.run_dir} already holds a run; resume it (--resume) or choose another output_dir"
                )
            if checkpoint is not None:
                self._restore(checkpoint)
            else:
                student = copy.deepcopy(self.teacher).requires_grad_(True).to(self.accelerator.device)
                if self.target is None:
                    self.final_masks, self.phase = self.fixed_masks, "finetune"
                    if self.accelerator.is_main_process:
                        _write_json_atomic(self.run_dir / "final_masks.json", self.final_masks.as_dict())
                    self._build_objective(prune_embedder(student, self.final_masks), None, None)
                else:
                    self._build_mask_phase(student)
            self.teacher.to(self.accelerator.device)
            if self.accelerator.is_main_process:
                save_config(self.config, self.run_dir / "config.yaml")
            self._write_status("running")
            self._emit(TrainingEvent("start", self.step, self.total_steps, self.phase, self._size_metrics(),
                                     self._gates()))
            return self._loop()
        except (TrainingError, ValueError) as error:  # ValueError: bad data, model source, target or config
            self._write_status("failed", str(error))
            self._emit(TrainingEvent("error", self.step, self.total_steps, self.phase, message=str(error)))
            raise
        except torch.cuda.OutOfMemoryError:
            message = (
                f"the GPU ran out of memory at batch_size={self.config.batch_size}, max_length={self.config.max_length}. "
                "Halve batch_size and raise gradient_accumulation to keep the effective batch, set "
                "gradient_checkpointing: true, use precision amp_bf16, or lower max_length"
            )
            self._write_status("failed", message)
            self._emit(TrainingEvent("error", self.step, self.total_steps, self.phase, message=message))
            raise TrainingError(message) from None

    def _gates(self) -> dict:
        return gate_snapshot(self.masks, self.final_masks, self.source_config)

    def _loop(self) -> RunResult:
        from tqdm.auto import tqdm

        metrics_file = self.run_dir / "metrics.jsonl"
        snapshots_file = self.run_dir / "mask_snapshots.jsonl"
        progress = tqdm(total=self.total_steps, initial=self.step, desc="pruning", unit="step",
                        disable=not (self.show_progress and self.accelerator.is_main_process))
        window: dict[str, float] = {}
        window_steps, window_start = 0, time.perf_counter()
        started = time.perf_counter()
        while self.step < self.total_steps:
            if self.cancel.is_set():
                self._save_checkpoint()
                self._write_status("cancelled", f"cancelled at step {self.step}; resume to continue")
                self._emit(TrainingEvent("cancelled", self.step, self.total_steps, self.phase,
                                         message="cancelled; resume to continue"))
                progress.close()
                return RunResult(self.run_dir, None, None, cancelled=True)
            if self.phase == "mask" and self.step >= self.mask_steps:
                self._finish_mask_phase()
                self._emit(TrainingEvent("phase", self.step, self.total_steps, self.phase, self._size_metrics(),
                                         self._gates(), message="masks fixed; fine-tuning the pruned structure"))
            step_losses = self._train_step()
            self.step += 1
            window_steps += 1
            for name, value in step_losses.items():
                window[name] = window.get(name, 0.0) + value
            progress.update(1)
            if self.step % self.config.log_every == 0 or self.step == self.total_steps:
                elapsed = time.perf_counter() - window_start
                record = {"step": self.step, "phase": self.phase, "elapsed_s": time.perf_counter() - started}
                record.update({f"loss/{k}": v / window_steps for k, v in window.items() if k != "examples"})
                record["examples_per_s"] = window.get("examples", 0.0) / max(elapsed, 1e-9)
                record["lr/weights"] = self.optimizer.param_groups[0]["lr"]
                if self.masks is not None:
                    record["lr/gates"] = self.optimizer.param_groups[1]["lr"]
                record.update(self._size_metrics())
                record["target_params"] = self._target_params(record.get("target_ramp", 1.0))
                gates = self._gates()
                if self.accelerator.is_main_process:
                    _append_jsonl(metrics_file, record)
                    _append_jsonl(snapshots_file, {"step": self.step, "phase": self.phase, **gates})
                progress.set_postfix(loss=f"{record['loss/total']:.3f}",
                                     size=f"{record['expected_encoder_params'] / 1e6:.1f}M")
                self._emit(TrainingEvent("log", self.step, self.total_steps, self.phase, record, gates))
                window, window_steps, window_start = {}, 0, time.perf_counter()
            if self.step % self.config.checkpoint_every == 0 and self.step < self.total_steps:
                path = self._save_checkpoint()
                self._emit(TrainingEvent("checkpoint", self.step, self.total_steps, self.phase, message=str(path)))
        progress.close()
        if self.phase == "mask":
            self._finish_mask_phase()
        return self._finish()

    def _target_params(self, ramp: float) -> float:
        """The (ramped) target as an encoder parameter count, for plotting beside the expected size."""
        from .accounting import count_parameters
        from .targets import ArchitectureTarget

        full = count_parameters(self.source_config).encoder
        if self.target is None:
            return float(count_parameters(self.student.config).encoder)
        if isinstance(self.target, ArchitectureTarget):
            final = count_parameters(self.source_config, self.target.structure(self.source_config)).encoder
        else:
            final = self.target.parameters - (
                count_parameters(self.source_config, None, self.output_heads).total - full
                if self.target.scope == "total" else 0
            )
        return full + (final - full) * ramp

    def _finish(self) -> RunResult:
        student = self.accelerator.unwrap_model(self.objective).student.eval()
        export_dir = None
        if self.accelerator.is_main_process:
            vocabulary = None
            if self.config.vocab is not None:
                from .vocab import plan_for_run, trim_embedder

                plan = plan_for_run(student.tokenizer, self.config.vocab, texts_of(self.data) + self.distill_texts)
                student = trim_embedder(student, plan)
                vocabulary = plan.summary()
            info = pruning_info(
                student, self.config.model, self.source_config, kept_indices(self.final_masks),
                vocabulary=vocabulary,
                extra={
                    "target": self.target.describe() if self.target else f"fixed masks {self.config.fixed_masks}",
                    "dataset": self.config.dataset,
                    "steps": self.step,
                },
            )
            export_dir = export_embedder(student, self.run_dir / "export", info, overwrite=True)
            self._write_report(student)
        self._write_status("done")
        self._emit(TrainingEvent("done", self.step, self.total_steps, self.phase, gates=self._gates(),
                                 message=str(export_dir)))
        self.accelerator.wait_for_everyone()
        return RunResult(self.run_dir, export_dir, student)


    def _write_report(self, student: Embedder) -> None:
        """report.json / report.txt: the original against the pruned model on the evaluation data.
        A split the data set does not have (offline, say) is recorded as such, not fatal."""
        from .data import DataError
        from .evaluate import compare, format_report

        dataset = self.config.eval_dataset or self.config.dataset
        report = {"dataset": dataset, "splits": {}, "unavailable": {}}
        for split in self.config.eval_splits:
            try:
                part = compare(self.teacher, student, dataset, (split,), self.config.eval_batch_size)
            except DataError as error:
                report["unavailable"][split] = str(error)
                continue
            report["splits"].update(part["splits"])
        _write_json_atomic(self.run_dir / "report.json", report)
        (self.run_dir / "report.txt").write_text(format_report(report) + "\n")


@dataclass
class RunResult:
    run_dir: Path
    export_dir: Path | None
    student: Embedder | None
    cancelled: bool = False


def _write_json_atomic(path: Path, data) -> None:
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(data, indent=2))
    os.replace(temporary, path)


def _append_jsonl(path: Path, record: dict) -> None:
    with path.open("a") as handle:
        handle.write(json.dumps(record) + "\n")
