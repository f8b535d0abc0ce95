"""What a run hands over when training ends: the trimmed vocabulary, the export, the report.

The report compares the original with the pruned model on the evaluation data (STS correlation or
retrieval, per split) and, when the run had documents, on the held-out ones without labels
(`label_free.py`): retrieval with pseudo-queries made from them, agreement with the original,
and retrieval against the original's own index. Without documents it says, once, that retrieval
on the user's data was not protected.
"""

from __future__ import annotations

from pathlib import Path

from .config import RunConfig
from .data import DataError
from .documents import DocumentSplit
from .embedder import Embedder
from .encoding_cache import EncodingCache
from .evaluate import compare, format_report
from .export import export_embedder, pruning_info
from .l0 import StructureMasks
from .latency import measured_against_prediction
from .prune import kept_indices
from .run_dir import RunDirectory
from .sources import resolve_model_dir
from .targets import LatencyTarget, SizeTarget

NO_DOCUMENTS_WARNING = (
    "No documents were given, so retrieval on your own data is not protected and not measured: the model "
    "was distilled on its training data alone. Give the texts the model will serve (no labels needed) with "
    "--documents PATH, `documents:` in the config, or the workbench's 'Your documents' field."
)


def export_run(student: Embedder, config: RunConfig, run_dir: RunDirectory, source_config, final_masks: StructureMasks,
               target_description: str, steps: int, vocabulary_texts: list[str]) -> tuple[Embedder, Path]:
    """Trims the vocabulary if asked, then writes `export/` (replacing only an export this run wrote)."""
    vocabulary = None
    if config.vocab is not None:
        from .vocab import plan_for_run, trim_embedder

        plan = plan_for_run(student.tokenizer, config.vocab, vocabulary_texts)
        student = trim_embedder(student, plan)
        vocabulary = plan.summary()
    info = pruning_info(
        student, config.model, source_config, kept_indices(final_masks), vocabulary=vocabulary,
        extra={"target": target_description, "dataset": config.dataset, "documents": config.documents, "steps": steps},
    )
    return student, export_embedder(student, run_dir.path / "export", info, overwrite=True)


def run_report(config: RunConfig, teacher: Embedder, student: Embedder, documents: DocumentSplit | None,
               target: SizeTarget, timings: dict[str, float]) -> dict:
    """report.json: the evaluation data's figures per split, the documents' label-free figures, and
    for a latency target the export's latency measured against the prediction."""
    report: dict = {"dataset": config.eval_dataset or config.dataset, "splits": {}, "unavailable": {},
                    "warnings": [], "timings_s": timings}
    # The original's encodings are the same for every run pruned from it: read them from the cache.
    cache = EncodingCache(resolve_model_dir(config.model), teacher)
    if report["dataset"] is not None:
        for split in config.eval_splits:
            try:
                part = compare(teacher, student, report["dataset"], (split,), config.eval_batch_size,
                               original_cache=cache)
            except DataError as error:  # a split the data set does not have (offline, say)
                report["unavailable"][split] = str(error)
                continue
            report["splits"].update(part["splits"])
    if isinstance(target, LatencyTarget):
        vocab = min(teacher.config.vocab_size, student.config.vocab_size)
        report["latency"] = {"target_s": target.seconds, "target_speedup": target.speedup, **measured_against_prediction(
            target.model, teacher.encoder, student.encoder, vocab, student.config.pad_token_id)}
    if documents is None:
        report["warnings"].append(NO_DOCUMENTS_WARNING)
    else:
        from .label_free import label_free_report, pseudo_query_task

        task = pseudo_query_task(documents.held_out.documents, documents.training.texts(),
                                 source=documents.held_out.source)
        report["documents"] = label_free_report(teacher, student, task, config.eval_batch_size, original_cache=cache)
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
    parts += [f"warning: {warning}" for warning in report["warnings"]]
    return "\n".join(parts)
