"""Reference implementations: slow, obviously-correct versions that tests and benchmarks compare against.

These follow the VisPlay reference code (``cluster_share_per_problem`` with an nltk double loop and
sklearn; the vLLM server's greedy answer grouping with mathruler) with the documented fixes, and
are NOT used by the pipeline:

* ``reference_cluster_shares`` — the original BLEU distance matrix + AgglomerativeClustering. Inputs
  are coerced like ``visplay.rewards.diversity`` does (None -> "", other non-strings -> str());
  fewer than two questions short-circuit (sklearn rejects a single sample).
* ``reference_majority_vote`` — greedy grouping in order of first appearance; each new answer is
  compared with every group's representative by normalised equality or ``grade_answer`` in both
  directions (on the normalised strings, as ``visplay.answers.equivalent`` does). The original's
  "both contain 'no '" merge is a bug and is left out; empty answers are dropped and not counted.

nltk and scikit-learn are test-only dependencies and are imported inside the functions.
Used by ``tests/test_diversity.py``, ``tests/test_labeling.py`` and ``benchmarks/``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import numpy as np

from visplay.answers import normalize_answer


def _as_text(question: object) -> str:
    if question is None:
        return ""
    return question if isinstance(question, str) else str(question)


def reference_bleu_distance_matrix(questions: Sequence[object]) -> np.ndarray:
    """The reference's symmetric matrix: upper triangle 1 - BLEU(hyp=q_i, ref=q_j), mirrored, zero diagonal."""
    from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu

    texts = [_as_text(q) for q in questions]
    n = len(texts)
    dist = np.zeros((n, n))
    smoother = SmoothingFunction().method1
    for i in range(n):
        for j in range(i, n):
            if i == j:
                score = 1.0
            else:
                score = sentence_bleu([texts[j].split()], texts[i].split(), smoothing_function=smoother)
            dist[i, j] = dist[j, i] = 1 - score
    return dist


def reference_cluster_shares(questions: Sequence[object], threshold: float = 0.5) -> np.ndarray:
    """Cluster size / N per question, exactly as VisPlay's ``cluster_share_per_problem``."""
    from sklearn.cluster import AgglomerativeClustering

    n = len(questions)
    if n < 2:
        return np.ones(n, dtype=np.float64)
    dist = reference_bleu_distance_matrix(questions)
    labels = AgglomerativeClustering(
        n_clusters=None, distance_threshold=threshold, metric="precomputed", linkage="average"
    ).fit_predict(dist)
    sizes = Counter(labels)
    return np.array([sizes[label] / n for label in labels], dtype=np.float64)


def reference_equivalent(a: str, b: str) -> bool:
    """Normalised equality, else mathruler's grade_answer in both directions (no timeout, no cache)."""
    from mathruler.grader import grade_answer

    na, nb = normalize_answer(a), normalize_answer(b)
    return na == nb or bool(grade_answer(na, nb)) or bool(grade_answer(nb, na))


def reference_majority_vote(answers: Sequence[str | None]) -> tuple[str | None, int, int]:
    """(label, count, total): greedy grouping against group representatives, pair by pair."""
    groups: list[list[str]] = []
    total = 0
    for answer in answers:
        if answer is None:
            continue
        text = answer if isinstance(answer, str) else str(answer)
        if not text.strip():
            continue
        total += 1
        for group in groups:
            if reference_equivalent(text, group[0]):
                group.append(text)
                break
        else:
            groups.append([text])
    if not groups:
        return None, 0, 0
    best = max(groups, key=len)  # max keeps the first of equally large groups
    return best[0], len(best), total
