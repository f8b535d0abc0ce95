"""Any MTEB task on an Embedder, run by the `mteb` package (v2) itself.

Our own evaluator reproduces MTEB's STS and retrieval figures; this adapter is for everything
else (classification, clustering, reranking, ...) and for results in MTEB's own format, which
are comparable with the leaderboard. Only this module imports `mteb`, and only the `eval --mteb`
route imports this module, so the rest of the engine works without the package.

A task downloads its data from the hub at a pinned revision (`load_own_data`); `use_local_data`
gives an STS or retrieval task our loaded data instead, so the task's own evaluator runs offline.
Either way the data is loaded once and both the original and the pruned model are scored on it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import mteb
import numpy as np
from datasets import Dataset, DatasetDict
from mteb.abstasks import AbsTaskRetrieval, AbsTaskSTS
from mteb.models.abs_encoder import AbsEncoder
from mteb.models.model_meta import ModelMeta, ScoringFunction

from .data import DataError, RetrievalTask, ScoredPairs
from .embedder import Embedder
from .sources import MINILM_ALIAS

MINILM_HUB_ID = "sentence-transformers/all-MiniLM-L6-v2"
# Besides the task's main score: the figures our own evaluator reports, for side-by-side reading.
REPORTED = ("cosine_spearman", "ndcg_at_10", "mrr_at_10", "recall_at_100")


def model_name(source: str) -> str:
    """MTEB wants 'organisation/model': hub ids stay, the bundled alias becomes its hub id, a
    local directory becomes 'local/<directory name>'."""
    if source == MINILM_ALIAS:
        return MINILM_HUB_ID
    path = Path(source).expanduser()
    if path.is_dir():
        name = path.name if path.name != "export" else f"{path.parent.name}-export"
        return f"local/{name}"
    return source if "/" in source else f"local/{source}"


class MtebEncoder(AbsEncoder):
    """An Embedder behind MTEB's encoder protocol: dense vectors, scored by cosine (AbsEncoder
    picks the similarity from the metadata)."""

    def __init__(self, embedder: Embedder, name: str | None = None, adapted_from: str | None = None):
        self.embedder = embedder
        source = embedder.source or "model"
        self.mteb_model_meta = ModelMeta.create_empty(
            overwrites=dict(
                name=name or model_name(source),
                n_parameters=sum(p.numel() for p in embedder.parameters()),
                max_tokens=embedder.max_length,
                embed_dim=embedder.config.hidden_size,
                similarity_fn_name=ScoringFunction.COSINE,
                framework=["PyTorch"],
                adapted_from=model_name(adapted_from) if adapted_from else None,
                use_instructions=False,
            )
        )

    def encode(self, inputs, *, task_metadata, hf_split, hf_subset, prompt_type=None, **kwargs) -> np.ndarray:
        texts = [text for batch in inputs for text in batch["text"]]
        return self.embedder.encode(
            texts,
            batch_size=kwargs.get("batch_size", 32),
            show_progress=kwargs.get("show_progress_bar", False),
            description=f"{task_metadata.name} {prompt_type.value if prompt_type else 'texts'}",
        )


def get_task(name: str, splits: Sequence[str] = ("test",)):
    """An MTEB task by its MTEB name (STSBenchmark, SciFact, Banking77Classification, ...)."""
    try:
        return mteb.get_task(name, eval_splits=list(splits))
    except KeyError as error:
        raise DataError(f"{name!r} is not an MTEB task name (e.g. STSBenchmark, SciFact): {error}") from None


def load_own_data(task):
    """The task's own data: from the hub at the task's pinned revision, or the datasets cache."""
    try:
        task.load_data()
    except Exception as error:  # offline, gated or moved data sets raise many unrelated types
        reason = str(error).strip().splitlines()[0] if str(error).strip() else ""
        raise DataError(
            f"MTEB task {task.metadata.name}: could not load its data ({type(error).__name__}: {reason}). "
            "Offline, give --dataset with a local copy (STS and retrieval tasks)"
        ) from error
    return task


def _local_split(task, data: ScoredPairs | RetrievalTask):
    if isinstance(task, AbsTaskSTS) and isinstance(data, ScoredPairs):
        # ScoredPairs hold scores in [0, 1]; the task maps its own range back to [0, 1].
        span = task.max_score - task.min_score
        scores = [task.min_score + span * score for score in data.scores]
        return Dataset.from_dict({"sentence1": data.sentences1, "sentence2": data.sentences2, "score": scores})
    if isinstance(task, AbsTaskRetrieval) and isinstance(data, RetrievalTask):
        return {
            "corpus": Dataset.from_dict({"id": list(data.corpus), "text": list(data.corpus.values())}),
            "queries": Dataset.from_dict({"id": list(data.queries), "text": list(data.queries.values())}),
            "relevant_docs": data.qrels,
            "top_ranked": None,
        }
    raise ValueError(
        f"local data ({type(data).__name__}) can stand in only for an STS task's scored pairs or a retrieval "
        f"task's corpus; {task.metadata.name} is a {task.metadata.type} task: let it load its own data"
    )


def use_local_data(task, data_by_split: Mapping[str, ScoredPairs | RetrievalTask]):
    """Give an STS or retrieval task our loaded data (split name -> data) instead of the hub's.
    Retrieval corpus text arrives already joined as title + " " + text, which is what MTEB embeds."""
    splits = {split: _local_split(task, data) for split, data in data_by_split.items()}
    task.dataset = {"default": splits} if isinstance(task, AbsTaskRetrieval) else DatasetDict(splits)
    task.data_loaded = True
    return task


def task_scores(embedder: Embedder, task, batch_size: int = 64, show_progress: bool = False,
                adapted_from: str | None = None) -> dict[str, dict[str, float]]:
    """Per split, the task's main score and the figures our own evaluator reports, x100 as on the
    leaderboard (MTEB itself stores fractions); prefixed by the subset (language) where there are several."""
    result = mteb.evaluate(
        MtebEncoder(embedder, adapted_from=adapted_from),
        task,
        cache=None,
        co2_tracker=False,
        encode_kwargs={"batch_size": batch_size, "show_progress_bar": show_progress},
        show_progress_bar=show_progress,
    )
    (task_result,) = result.task_results
    names = dict.fromkeys([task.metadata.main_score, *REPORTED])
    report = {}
    for split, subsets in task_result.scores.items():
        report[split] = {}
        for scores in subsets:
            prefix = f"{scores['hf_subset']}/" if len(subsets) > 1 else ""
            report[split].update({prefix + name: 100 * scores[name] for name in names if name in scores})
    return report


def prepared_task(name: str, splits: Sequence[str], dataset: str | None) -> tuple[object, str]:
    """The MTEB task with its data loaded (before any model, so a bad name or no network fails
    fast), and where that data came from; `dataset` gives local data for an STS or retrieval task."""
    from .data import load_eval_data

    task = get_task(name, splits)
    if dataset:
        use_local_data(task, {split: load_eval_data(dataset, split) for split in splits})
        return task, f"MTEB {name}, data from {dataset}"
    return load_own_data(task), f"MTEB {name}, its own data (hub, pinned revision)"


def comparison_report(task, source: str, model: Embedder, original: Embedder | None, batch_size: int) -> dict:
    """The task's scores for the model (and the original, with the share retained), as the
    evaluator's reports are shaped."""
    from .evaluate import comparison_rows

    after = task_scores(model, task, batch_size, True, original.source if original else None)
    before = task_scores(original, task, batch_size, True) if original else None
    report = {"dataset": f"mteb:{task.metadata.name}", "splits": {}}
    for split, scores in after.items():
        rows = comparison_rows(before[split], scores) if before else {k: {"score": v} for k, v in scores.items()}
        report["splits"][split] = {"source": source, "metrics": rows}
    return report
