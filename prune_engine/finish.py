"""What a run hands over when training ends: the trimmed vocabulary, the export, the report.

The report compares the original with the pruned model on the evaluation data (STS correlation or
retrieval, per split) and, when the run had documents, on the held-out ones without labels
(`label_free.py`): retrieval with pseudo-queries made from them, agreement with the original,
and retrieval against the original's own index. Without documents it says, once, that retrieval
on the user's data was not protected.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from .atomic import write_json_atomic
from .config import RunConfig
from .data import DataError, RetrievalTask
from .documents import NO_DOCUMENTS_WARNING, DocumentSplit
from .embedder import Embedder
from .encoding_cache import EncodingCache
from .evaluate import compare, format_report
from .export import export_embedder, pruning_info
from .l0 import StructureMasks
from .label_free import held_out_task, label_free_report
from .latency import measured_against_prediction
from .prune import kept_indices
from .run_dir import RunDirectory
from .serving import OnnxEmbedder, export_onnx, quality_gate
from .sources import resolve_model_dir
from .targets import LatencyTarget


def export_run(student: Embedder, config: RunConfig, run_dir: RunDirectory, source_config, final_masks: StructureMasks,
               target_description: str, steps: int, vocabulary_texts: list[str]) -> tuple[Embedder, Path]:
    """Trims the vocabulary if asked, then writes `export/` (replacing only an export this run wrote)."""
    vocabulary = original_ids = None
    if config.vocab is not None:
        from .vocab import plan_for_run, trim_embedder

        plan = plan_for_run(student.tokenizer, config.vocab, vocabulary_texts)
        student = trim_embedder(student, plan)
        vocabulary, original_ids = plan.summary(), plan.kept_ids
    info = pruning_info(
        student, config.model, source_config, kept_indices(final_masks), vocabulary=vocabulary,
        extra={"target": target_description, "dataset": config.dataset, "documents": config.documents, "steps": steps},
    )
    return student, export_embedder(student, run_dir.path / "export", info, overwrite=True, original_ids=original_ids)


@dataclass
class Evaluation:
    """What every model of a run is scored on: the evaluation data's splits and, with documents,
    a label-free task on the held-out ones (built once, so every variant answers the same queries)."""

    original: Embedder
    dataset: str | None
    splits: tuple[str, ...]
    task: RetrievalTask | None
    batch_size: int = 64

    @classmethod
    def for_run(cls, config: RunConfig, teacher: Embedder, documents: DocumentSplit | None) -> Evaluation:
        task = held_out_task(documents, max_distractors=config.documents_distractors) if documents is not None else None
        return cls(teacher, config.eval_dataset or config.dataset, tuple(config.eval_splits), task, config.eval_batch_size)

    def __call__(self, model) -> dict:
        """The model against the original: {"splits", "unavailable", "documents"?} in the evaluator's shape."""
        # The original's encodings are the same for every model pruned from it: read them from the cache.
        cache = EncodingCache(resolve_model_dir(self.original.source), self.original)
        result: dict = {"dataset": self.dataset, "splits": {}, "unavailable": {}}
        for split in self.splits if self.dataset is not None else ():
            try:
                part = compare(self.original, model, self.dataset, (split,), self.batch_size, original_cache=cache)
            except DataError as error:  # a split the data set does not have (offline, say)
                result["unavailable"][split] = str(error)
                continue
            result["splits"].update(part["splits"])
        if self.task is not None:
            result["documents"] = label_free_report(self.original, model, self.task, self.batch_size, original_cache=cache)
        return result


def gate_figures(evaluation: dict) -> dict[str, float]:
    """The figures a serving variant is judged on: every score the original also has (not shares or
    agreements), in the splits and on the documents; a share of a score at or below zero says nothing."""
    blocks = [(split, block) for split, block in evaluation["splits"].items()]
    blocks += [("documents", block) for block in evaluation.get("documents", {}).get("splits", {}).values()]
    return {f"{where}/{name}": row["pruned"] for where, block in blocks for name, row in block["metrics"].items()
            if "original" in row and row["original"] > 0 and row["pruned"] > 0}


def serving_variants(export_dir: Path, evaluation: Evaluation, threshold: float) -> dict:
    """ONNX fp32 and int8 beside the export, both scored by the run's evaluation; int8 is recommended
    only when it keeps `threshold` of every fp32 figure. The decision goes into pruning_info.json."""
    files = export_onnx(export_dir, quantize=True, overwrite=True)
    scored = {variant: evaluation(OnnxEmbedder(export_dir, variant)) for variant in ("fp32", "int8")}
    fp32, int8 = gate_figures(scored["fp32"]), gate_figures(scored["int8"])
    if fp32 and set(fp32) == set(int8):
        gate = quality_gate(fp32, int8, threshold)
    else:
        gate = {"recommended": "fp32", "int8_recommended": False, "threshold": threshold, "fallen": [], "figures": {},
                "decision": "serve fp32: there were no figures to check int8 against (give documents or eval data)"}
    serving = {"onnx": files.as_dict(), "quality_gate": gate}
    info_path = export_dir / "pruning_info.json"
    write_json_atomic(info_path, {**json.loads(info_path.read_text()), "serving": serving})
    return {**serving, "evaluations": scored}


def run_report(config: RunConfig, inputs, student: Embedder, export_dir: Path, timings: dict[str, float]) -> dict:
    """report.json: the run's evaluation of the pruned model; for a latency target, the export's
    latency measured against the prediction; with serving.onnx, the ONNX variants and the gate."""
    started = time.perf_counter()
    evaluation = Evaluation.for_run(config, inputs.teacher, inputs.documents)
    report = {**evaluation(student), "warnings": [], "timings_s": timings}
    timings["evaluation"] = time.perf_counter() - started
    teacher, target = inputs.teacher, inputs.target
    if isinstance(target, LatencyTarget):
        vocab = min(teacher.config.vocab_size, student.config.vocab_size)
        report["latency"] = {"target_s": target.seconds, "target_speedup": target.speedup, **measured_against_prediction(
            target.model, teacher.encoder, student.encoder, vocab, student.config.pad_token_id)}
    if config.serving.onnx:
        started = time.perf_counter()
        report["serving"] = serving_variants(export_dir, evaluation, config.serving.int8_threshold)
        timings["serving"] = time.perf_counter() - started
    if evaluation.task is None:
        report["warnings"].append(NO_DOCUMENTS_WARNING)
    return report


def report_text(report: dict) -> str:
    parts = [format_report(report)] if report["splits"] else []
    if "documents" in report:
        parts.append(format_report(report["documents"]))
    if "latency" in report:
        latency = report["latency"]
        parts.append(f"latency per batch of {latency['conditions']['batch_size']} x {latency['conditions']['sequence_length']}: "
                     f"predicted {latency['predicted_s'] * 1000:.1f} ms ({latency['predicted_speedup']:.2f}x), measured "
                     f"{latency['measured_s'] * 1000:.1f} ms ({latency['measured_speedup']:.2f}x faster than the original)")
    if "serving" in report:
        parts.append(f"serving (ONNX): {report['serving']['quality_gate']['decision']}")
    parts += [f"warning: {warning}" for warning in report["warnings"]]
    return "\n".join(parts)
