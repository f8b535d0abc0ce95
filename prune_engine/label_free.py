"""Label-free retention: how much retrieval a pruned model kept on the user's own documents.

A user serving an encoder over their own documents has no relevance labels, so the queries are
made from a held-out slice of those documents, and each query's relevant passage is known by
construction: the one it was cut from. A document with a title gives (title, body): titles are
short descriptions of what their body says, and title–body pairs are the standard weak supervision
for retrieval (E5's CCPairs, Wang et al. 2022, "Text Embeddings by Weakly-Supervised Contrastive
Pre-training", arXiv:2212.03533). A document without one gives an inverse cloze pair (ICT; Lee,
Chang and Toutanova 2019, "Latent Retrieval for Weakly Supervised Open Domain Question Answering",
ACL, ORQA): one of its sentences is the query and the document without that sentence the passage,
so the query is never found by matching itself verbatim and the retriever has to relate a
statement to its context. Both pseudo-queries are more document-like than users' questions, which
is why the figure reported is the share the pruned model retains of the original's score on the
same pseudo-queries, not the score itself; `benchmarks/label_free.py` measures how closely that
share tracks the share retained on real labelled queries. The rest of the corpus (capped by a
seeded sample) serves as distractors, so the task has the user's own vocabulary and topics.
"""

from __future__ import annotations

import random
import re
from collections.abc import Mapping, Sequence

import numpy as np

from . import metrics
from .data import DataError, RetrievalTask
from .documents import Document, DocumentSplit
from .embedder import Embedder, Encoded
from .encoding_cache import EncodingCache
from .evaluate import AGREEMENT, MIXED_PREFIX, comparison_rows, encode_data, retrieval_figures

MIN_SENTENCE_WORDS = 4  # shorter sentences ("Methods.", "See Fig. 2.") say too little to be a query
FALLBACK_QUERY_WORDS = 15  # a document with fewer than two usable sentences: its first words are the query
TOP_K_AGREEMENT = 10
# Distractors sampled into a label-free task by default. Both models encode every one of them, which
# for BGE-M3 on a CPU is most of a run's evaluation time: a run can ask for fewer (documents_distractors).
MAX_DISTRACTORS = 5000
AGREEMENT_AT_10 = "top10_agreement"
DATASET = "label-free"
SPLIT = "held_out"

# Scripts written without spaces count one word per character, so a Chinese or Japanese sentence
# is not a single "word".
_UNSPACED = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
_WORD = re.compile(rf"[{_UNSPACED}]|[^\W_{_UNSPACED}]+")
_SENTENCE_BOUNDARY = re.compile(r"(?<=[.!?])\s+|(?<=[。！？])\s*|\s*\n\s*")


def _sentence_spans(text: str) -> list[tuple[int, int]]:
    """(start, end) of each sentence: split after . ! ? and a space, after 。！？, and at line breaks."""
    spans, start = [], 0
    for boundary in _SENTENCE_BOUNDARY.finditer(text):
        if boundary.start() > start:
            spans.append((start, boundary.start()))
        start = max(start, boundary.end())
    if start < len(text):
        spans.append((start, len(text)))
    return spans


def _cut(text: str, start: int, end: int) -> tuple[str, str] | None:
    """(text[start:end], the text without it), or None when the cut text recurs in the rest
    (scraped pages repeat sentences; the query would then match itself verbatim)."""
    before, after = text[:start].rstrip(), text[end:].lstrip()
    spaced = len(before) < start or len(after) < len(text) - end  # unspaced scripts join without a space
    query, passage = text[start:end].strip(), f"{before}{' ' if spaced and before else ''}{after}".strip()
    return (query, passage) if query and passage and query not in passage else None


def _inverse_cloze(text: str, rng: random.Random) -> tuple[str, str] | None:
    """(query, passage): a random sentence of at least MIN_SENTENCE_WORDS words and the document
    without it; with fewer than two such sentences, the first words and the rest. None when the
    text has fewer than two words, or repeats itself so that no query can be cut out of it."""
    spans = [(s, e) for s, e in _sentence_spans(text) if len(_WORD.findall(text[s:e])) >= MIN_SENTENCE_WORDS]
    cuts = [cut for cut in (_cut(text, s, e) for s, e in spans) if cut] if len(spans) >= 2 else []
    if cuts:
        return rng.choice(cuts)
    words = list(_WORD.finditer(text))
    if len(words) < 2:
        return None
    return _cut(text, 0, words[min(FALLBACK_QUERY_WORDS, len(words) // 2) - 1].end())


def _pseudo_query(title: str | None, text: str, seed: int) -> tuple[str, str, str] | None:
    """(rule, query, passage) for one held-out document, or None when it cannot be split. A title-only
    document is split like an untitled one. The sentence is drawn from a generator seeded by the seed and the text, so a document keeps its
    pseudo-query whichever other documents are held out with it."""
    title = (title or "").strip()
    body = text.strip().removeprefix(title).strip() if title else ""  # a body that opens with its title: cut it
    if body:
        return "title", title, body
    pair = _inverse_cloze(Document(title, text).formatted, random.Random(f"{seed}\0{title}\0{text}"))
    return ("inverse cloze", *pair) if pair else None


def pseudo_query_task(held_out: Sequence[Document], distractors: Sequence[str], seed: int = 0,
                      max_distractors: int = MAX_DISTRACTORS, source: str = "") -> RetrievalTask:
    """A retrieval task without labels: one pseudo-query per held-out document (its title, else an
    inverse cloze sentence) whose one relevant passage is the rest of that document, among the
    held-out passages and up to `max_distractors` of `distractors` (a seeded sample). Distractors
    identical to a held-out document or passage are left out: they would be unjudged copies of the
    answer. Query ids are `q<i>` and passage ids `p<i>` for held-out document i, `d<j>` for distractor j."""
    if max_distractors < 0:
        raise ValueError(f"max_distractors must be 0 or more, not {max_distractors}")
    queries, passages, qrels, rules = {}, {}, {}, {"title": 0, "inverse cloze": 0}
    for index, document in enumerate(held_out):
        made = _pseudo_query(document.title, document.text, seed)
        if made is not None:
            rule, queries[f"q{index}"], passages[f"p{index}"] = made
            qrels[f"q{index}"] = {f"p{index}": 1}
            rules[rule] += 1
    if not queries:
        raise DataError(f"none of the {len(held_out)} held-out documents can be split into a pseudo-query and "
                        "a passage (each needs two words, not all repeated); hold out documents with text")
    answers = set(passages.values()) | {document.formatted for document in held_out}
    usable = [index for index, text in enumerate(distractors) if text not in answers]
    chosen = sorted(random.Random(seed).sample(usable, min(max_distractors, len(usable))))
    notes = [f"{rules['title']} titles", f"{rules['inverse cloze']} inverse cloze"]
    if len(queries) < len(held_out):
        notes.append(f"{len(held_out) - len(queries)} documents too short or repetitive to split")
    if len(usable) < len(distractors):
        notes.append(f"{len(distractors) - len(usable)} distractors copying held-out text left out")
    return RetrievalTask(
        queries=queries,
        corpus=passages | {f"d{index}": distractors[index] for index in chosen},
        qrels=qrels,
        source=(f"{source or 'held-out documents'}: {len(queries)} pseudo-queries over {len(passages)} held-out "
                f"passages + {len(chosen)} of {len(distractors)} distractors ({', '.join(notes)})"),
    )


def held_out_task(documents: DocumentSplit, seed: int = 0, max_distractors: int = MAX_DISTRACTORS) -> RetrievalTask:
    """The pseudo-query task of a run's held-out documents, with (a sample of) its training documents as distractors."""
    return pseudo_query_task(documents.held_out.documents, documents.training.texts(), seed, max_distractors,
                             source=documents.held_out.source)


def top_k_agreement(task: RetrievalTask, original: Mapping[str, Encoded], pruned: Mapping[str, Encoded],
                    k: int = TOP_K_AGREEMENT) -> float:
    """Mean over queries of |top-k of the original ∩ top-k of the pruned model| / k (dense vectors):
    1.0 when the pruned model returns the same k documents, in any order."""
    query_ids, doc_ids = list(task.queries), list(task.corpus)
    k = min(k, len(doc_ids))
    ranked = [metrics.rank_corpus(query_ids, encoded["queries"].dense, doc_ids, encoded["documents"].dense, k=k)
              for encoded in (original, pruned)]
    overlaps = [len({doc for doc, _ in ranked[0][q]} & {doc for doc, _ in ranked[1][q]}) / k for q in query_ids]
    return float(np.mean(overlaps))


def _held_out_cosine(task: RetrievalTask, original: Mapping[str, Encoded], pruned: Mapping[str, Encoded]) -> float:
    """Mean cosine between the two models' vectors of the judged (held-out) passages."""
    judged = {doc_id for judgements in task.qrels.values() for doc_id in judgements}
    rows = [index for index, doc_id in enumerate(task.corpus) if doc_id in judged]
    return metrics.embedding_agreement(original["documents"].dense[rows], pruned["documents"].dense[rows])


def label_free_rows(task: RetrievalTask, original: Mapping[str, Encoded], pruned: Mapping[str, Encoded]) -> dict[str, dict]:
    """The report's rows from both models' encodings of `task` (evaluate.encode_data's parts):
    each model's retrieval figures and the share retained; top-10 agreement; the mean cosine on
    held-out passages; and pruned-model queries against the original's index, against the original's
    own figures."""
    before = retrieval_figures(task, original["queries"], original["documents"])
    rows = comparison_rows(before, retrieval_figures(task, pruned["queries"], pruned["documents"]))
    rows[AGREEMENT_AT_10] = {"pruned": top_k_agreement(task, original, pruned)}
    rows[AGREEMENT] = {"pruned": _held_out_cosine(task, original, pruned)}
    mixed = retrieval_figures(task, pruned["queries"], original["documents"])
    rows.update({MIXED_PREFIX + name: row for name, row in comparison_rows(before, mixed).items()})
    return rows


def label_free_report(original: Embedder, pruned: Embedder, task: RetrievalTask, batch_size: int = 64,
                      original_cache: EncodingCache | None = None, show_progress: bool = False) -> dict:
    """The pruned model against the original on a pseudo-query task, in `evaluate.compare`'s report
    shape (one split, "held_out"), so `format_report` and the workbench tables show it as they are."""
    if original.config.hidden_size != pruned.config.hidden_size:
        raise ValueError(f"the original's vectors have {original.config.hidden_size} dimensions and the pruned "
                         f"model's {pruned.config.hidden_size}: compare a model with the one it was pruned from")
    if not task.qrels or any(doc_id not in task.corpus for judged in task.qrels.values() for doc_id in judged):
        raise DataError(f"{task.source}: needs judged queries whose passages are all in the corpus; "
                        "build the task with pseudo_query_task")
    before = encode_data(original, task, batch_size, show_progress, "original", original_cache)
    after = encode_data(pruned, task, batch_size, show_progress, "pruned")
    return {"dataset": DATASET, "splits": {SPLIT: {"source": task.source, "metrics": label_free_rows(task, before, after)}}}
