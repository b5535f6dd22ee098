"""Diversity penalty for the questioner: the share of the batch that falls in each question's cluster.

VisPlay penalises a generated question by the size of its cluster among the batch's questions.
The reference (``tests/reference.py`` ``reference_cluster_shares``) builds the pairwise
distance ``1 - BLEU`` with nltk in a Python double loop (N^2/2 calls to ``sentence_bleu``) and
clusters it with ``sklearn.cluster.AgglomerativeClustering(linkage="average",
metric="precomputed", distance_threshold=threshold)``. ``cluster_shares`` returns the same numbers,
bit for bit, without the Python loop:

* **Clipped n-gram counts as sparse products.** For every order n = 1..4 each question becomes a
  0/1 row over features (n-gram g, layer k), set when the question holds g at least k times.
  ``B @ B.T`` then gives ``sum_g min(count_i(g), count_j(g))`` — nltk's clipped count — because
  ``min(a, b) = sum_k [a >= k][b >= k]``. Frequent features go through a dense float32 GEMM, the
  rest through a scipy sparse product. Identical token lists are computed once.
* **BLEU with nltk's exact floating-point steps.** nltk's score depends on the pair only through
  (hyp length, ref length, m1..m4). The factor ``exp(fsum(0.25 * log(p_n)))`` and the brevity
  penalty ``exp(1 - r / c)`` are evaluated with ``math`` (like nltk: ``math.log``, ``math.fsum``,
  ``math.exp``) once per distinct key and gathered with numpy, so every distance equals the
  reference's float. nltk details kept: ``p_n = m_n / max(1, len - n + 1)``; a zero numerator
  becomes ``0.1 / denominator`` (method1; this includes hypotheses shorter than n); no unigram
  match at all gives BLEU 0 (distance 1), which covers the empty hypothesis; the brevity penalty
  is 1 when the hypothesis is longer than the reference.
* **The same clustering.** sklearn, for a precomputed matrix without connectivity, hands the
  upper triangle to ``scipy.cluster.hierarchy.linkage(method="average")`` and then undoes the
  ``count(distances >= threshold)`` last merges. We call the same scipy routine on the same
  condensed vector and keep the merges sklearn keeps, so a merge at exactly the threshold is cut
  (sklearn's ``>=``), and ties are broken identically.

Inputs: ``None`` counts as the empty string, any other non-string is converted with ``str()``;
empty strings take part like any other question (distance 1 to everything). A single question
forms its own cluster (share 1.0; sklearn itself refuses fewer than two samples).

Test: ``pytest -q tests/test_diversity.py``; speed: ``python benchmarks/bench_diversity.py``.

>>> cluster_shares(["how many red circles", "how many red circles", "what is the area"]).tolist()
[0.6666666666666666, 0.6666666666666666, 0.3333333333333333]
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from scipy.cluster.hierarchy import linkage

MAX_ORDER = 4  # nltk's default BLEU-4 with uniform weights (0.25, 0.25, 0.25, 0.25)
_WEIGHT = 0.25
_EPSILON = 0.1  # SmoothingFunction().method1's epsilon
_BLOCK_ROWS = 512  # rows of the distance matrix computed at once (bounds peak memory)
_TABLE_LIMIT = 1 << 23  # largest key space looked up through a direct table instead of a sort


@dataclass(frozen=True)
class _Corpus:
    """Distinct token sequences as integer ids, and where each question's sequence lives."""

    flat: np.ndarray  # token ids of all distinct sequences, concatenated (int64)
    starts: np.ndarray  # start offset of each distinct sequence in ``flat``
    lengths: np.ndarray  # token count of each distinct sequence (int64)
    inverse: np.ndarray  # question index -> distinct sequence index
    vocab_size: int


def cluster_shares(questions: Sequence[object], threshold: float = 0.5) -> np.ndarray:
    """Per question, the size of its BLEU cluster divided by the number of questions.

    Identical (to <= 1e-9, in practice bit for bit) to ``reference_cluster_shares``. ``threshold``
    is sklearn's ``distance_threshold``: merges at distance >= threshold are not made.
    """
    threshold = _check_threshold(threshold)
    n = len(questions)
    if n == 0:
        return np.zeros(0, dtype=np.float64)
    if n == 1:
        return np.ones(1, dtype=np.float64)
    corpus = _build_corpus([_as_text(q) for q in questions])
    distinct = _distance_matrix(corpus)
    condensed = _condensed(distinct, corpus.inverse)
    del distinct
    return _shares(condensed, n, threshold)


def bleu_distance_matrix(questions: Sequence[object]) -> np.ndarray:
    """Full N x N matrix ``D[i, j] = 1 - BLEU(hyp=q_i, ref=q_j)`` (not symmetric; diagonal as computed).

    The reference mirrors the upper triangle and zeroes the diagonal; ``cluster_shares`` only
    uses the upper triangle. Exposed for tests and analysis.
    """
    corpus = _build_corpus([_as_text(q) for q in questions])
    if len(questions) == 0:
        return np.zeros((0, 0), dtype=np.float64)
    distinct = _distance_matrix(corpus)
    return distinct[np.ix_(corpus.inverse, corpus.inverse)]


def _check_threshold(threshold: float) -> float:
    value = float(threshold)
    if not value >= 0.0 or math.isinf(value):
        raise ValueError(f"threshold must be a finite number >= 0 (sklearn's distance_threshold), got {threshold!r}")
    return value


def _as_text(question: object) -> str:
    """None -> "", strings unchanged, anything else -> str(x)."""
    if question is None:
        return ""
    return question if isinstance(question, str) else str(question)


# ---------------------------------------------------------------- tokens and n-grams


def _build_corpus(texts: list[str]) -> _Corpus:
    """Tokenise with ``str.split()``, map tokens to ids and keep each distinct sequence once."""
    vocab: dict[str, int] = {}
    seen: dict[tuple[int, ...], int] = {}
    inverse = np.empty(len(texts), dtype=np.int64)
    sequences: list[tuple[int, ...]] = []
    for i, text in enumerate(texts):
        ids = tuple(vocab.setdefault(tok, len(vocab)) for tok in text.split())
        index = seen.get(ids)
        if index is None:
            index = seen[ids] = len(sequences)
            sequences.append(ids)
        inverse[i] = index
    lengths = np.fromiter((len(s) for s in sequences), dtype=np.int64, count=len(sequences))
    starts = np.zeros(len(sequences), dtype=np.int64)
    np.cumsum(lengths[:-1], out=starts[1:])
    flat = np.fromiter((t for s in sequences for t in s), dtype=np.int64, count=int(lengths.sum()))
    return _Corpus(flat, starts, lengths, inverse, max(1, len(vocab)))


def _ngram_ids(corpus: _Corpus) -> list[tuple[np.ndarray, np.ndarray]]:
    """For n = 1..4: (sequence index, n-gram id) of every n-gram occurrence."""
    rows = np.repeat(np.arange(len(corpus.lengths), dtype=np.int64), corpus.lengths)
    position = np.arange(len(corpus.flat), dtype=np.int64) - corpus.starts[rows]
    remaining = corpus.lengths[rows] - position  # tokens from this position to the end of its sequence
    ids = corpus.flat.copy()
    out = [(rows, ids)]
    for n in range(2, MAX_ORDER + 1):
        valid = np.flatnonzero(remaining >= n)
        key = ids[valid] * corpus.vocab_size + corpus.flat[valid + n - 1]
        _, new_ids = np.unique(key, return_inverse=True)
        full = np.full(len(corpus.flat), -1, dtype=np.int64)
        full[valid] = new_ids
        ids = full
        out.append((rows[valid], new_ids.astype(np.int64)))
    return out


def _layer_matrix(rows: np.ndarray, grams: np.ndarray, n_rows: int) -> sp.csr_matrix:
    """0/1 matrix over (n-gram, layer k) features: row i has feature (g, k) iff count_i(g) >= k."""
    if len(rows) == 0:
        return sp.csr_matrix((n_rows, 0), dtype=np.float32)
    n_grams = int(grams.max()) + 1
    key = rows * n_grams + grams
    order = np.argsort(key, kind="stable")
    sorted_key = key[order]
    run_start = np.r_[True, sorted_key[1:] != sorted_key[:-1]]
    start_index = np.maximum.accumulate(np.where(run_start, np.arange(len(key)), 0))
    layer = np.empty(len(key), dtype=np.int64)
    layer[order] = np.arange(len(key)) - start_index  # 0 for the first occurrence, 1 for the second ...
    _, features = np.unique(grams + n_grams * layer, return_inverse=True)
    data = np.ones(len(rows), dtype=np.float32)
    return sp.csr_matrix((data, (rows, features)), shape=(n_rows, int(features.max()) + 1))


@dataclass(frozen=True)
class _Overlap:
    """``B @ B.T`` split into a dense GEMM over frequent features and a sparse product over the rest."""

    dense: np.ndarray  # (U, F_dense) float32
    sparse: sp.csr_matrix  # (U, F_sparse)
    sparse_t: sp.csr_matrix  # its transpose, row-major

    @classmethod
    def from_layers(cls, layers: sp.csr_matrix) -> _Overlap:
        layers = layers.tocsc()
        freq = np.diff(layers.indptr)
        n_rows = layers.shape[0]
        # A dense column costs ~2*U^2 flops in the GEMM, a sparse one ~df^2 slower scalar steps.
        frequent = freq >= max(8, n_rows // 8)
        dense = np.ascontiguousarray(layers[:, np.flatnonzero(frequent)].toarray(), dtype=np.float32)
        rest = layers[:, np.flatnonzero(~frequent & (freq > 1))].tocsr()
        return cls(dense, rest, rest.T.tocsr())

    def block(self, start: int, stop: int, diagonal: np.ndarray) -> np.ndarray:
        """Rows ``start:stop`` of the clipped-count matrix as int64."""
        counts = (self.dense[start:stop] @ self.dense.T).astype(np.int64)
        part = (self.sparse[start:stop] @ self.sparse_t).tocoo()
        counts[part.row, part.col] += part.data.astype(np.int64)
        # Features held by one sequence only were dropped; they only reach the diagonal.
        rows = np.arange(start, stop)
        counts[rows - start, rows] = diagonal[start:stop]
        return counts


# ---------------------------------------------------------------- BLEU with nltk's float steps


def _distance_matrix(corpus: _Corpus) -> np.ndarray:
    """``D[a, b] = 1 - sentence_bleu([seq_b], seq_a, method1)`` for all distinct sequences a, b."""
    n_seq = len(corpus.lengths)
    lengths = corpus.lengths
    overlaps = []
    diagonals = []
    for n, (rows, grams) in enumerate(_ngram_ids(corpus), start=1):
        overlaps.append(_Overlap.from_layers(_layer_matrix(rows, grams, n_seq)))
        diagonals.append(np.maximum(lengths - n + 1, 0))
    if int(lengths.max(initial=0)) >= 1 << 24:
        raise ValueError("a question longer than 2**24 tokens cannot be counted exactly in float32")
    out = np.empty((n_seq, n_seq), dtype=np.float64)
    for start in range(0, n_seq, _BLOCK_ROWS):
        stop = min(n_seq, start + _BLOCK_ROWS)
        matches = [ov.block(start, stop, diag) for ov, diag in zip(overlaps, diagonals)]
        out[start:stop] = _bleu_distance_block(lengths[start:stop], lengths, matches)
    return out


def _bleu_distance_block(hyp_len: np.ndarray, ref_len: np.ndarray, matches: list[np.ndarray]) -> np.ndarray:
    """1 - BLEU for a block of hypotheses against all references, from clipped counts m1..m4."""
    shape = matches[0].shape
    hyp = np.broadcast_to(hyp_len[:, None], shape)
    ref = np.broadcast_to(ref_len[None, :], shape)
    precision = _lookup([hyp, *matches], _precision_factor)
    penalty = _lookup([hyp, ref], _brevity_penalty)
    score = penalty * precision
    score[matches[0] == 0] = 0.0  # nltk returns 0 when no unigram matches (empty hypothesis included)
    return 1.0 - score


def _precision_factor(hyp_len: int, *matched: int) -> float:
    """``exp(fsum(w * log(p_n)))`` exactly as nltk's corpus_bleu computes it with method1."""
    terms = []
    for n, m in enumerate(matched, start=1):
        denominator = max(1, hyp_len - n + 1)
        p = m / denominator if m else (0 + _EPSILON) / denominator
        terms.append(_WEIGHT * math.log(p))
    return math.exp(math.fsum(terms))


def _brevity_penalty(hyp_len: int, ref_len: int) -> float:
    """nltk's brevity_penalty for one reference (the closest reference length is its length)."""
    if hyp_len > ref_len:
        return 1.0
    if hyp_len == 0:
        return 0.0
    return math.exp(1 - ref_len / hyp_len)


def _lookup(columns: list[np.ndarray], fn: Callable[..., float]) -> np.ndarray:
    """``fn(*key)`` for every element, calling ``fn`` once per distinct key (a tuple of ints)."""
    shape = columns[0].shape
    flat = [np.ascontiguousarray(c).reshape(-1) for c in columns]
    bases = [int(c.max(initial=0)) + 1 for c in flat]
    space = math.prod(bases)
    if space >= 1 << 62:  # too wide for one int64 code: sort the rows instead
        keys, inverse = np.unique(np.stack(flat, axis=1), axis=0, return_inverse=True)
        values = np.fromiter((fn(*map(int, k)) for k in keys), dtype=np.float64, count=len(keys))
        return values[inverse.reshape(-1)].reshape(shape)
    code = np.zeros(len(flat[0]), dtype=np.int64)
    for column, base in zip(flat, bases):
        code *= base
        code += column
    if space <= min(_TABLE_LIMIT, 8 * len(code) + 65536):  # a table only when it pays for itself
        present = np.zeros(space, dtype=bool)
        present[code] = True
        keys = np.flatnonzero(present)
        table = np.empty(space, dtype=np.float64)
        table[keys] = _evaluate(keys, bases, fn)
        return table[code].reshape(shape)
    keys, inverse = np.unique(code, return_inverse=True)
    return _evaluate(keys, bases, fn)[inverse].reshape(shape)


def _evaluate(codes: np.ndarray, bases: list[int], fn: Callable[..., float]) -> np.ndarray:
    """Decode mixed-radix codes back into key tuples and evaluate ``fn`` on each."""
    parts = []
    rest = codes.copy()
    for base in reversed(bases):
        parts.append(rest % base)
        rest //= base
    parts.reverse()
    tuples = zip(*(p.tolist() for p in parts))
    return np.fromiter((fn(*t) for t in tuples), dtype=np.float64, count=len(codes))


# ---------------------------------------------------------------- clustering as sklearn does it


def _condensed(distinct: np.ndarray, inverse: np.ndarray) -> np.ndarray:
    """Upper triangle (row-major, i < j) of ``distinct[inverse][:, inverse]``: hyp i, ref j."""
    n = len(inverse)
    out = np.empty(n * (n - 1) // 2, dtype=np.float64)
    offset = 0
    for i in range(n - 1):
        width = n - 1 - i
        out[offset : offset + width] = distinct[inverse[i], inverse[i + 1 :]]
        offset += width
    return out


def _shares(condensed: np.ndarray, n: int, threshold: float) -> np.ndarray:
    """sklearn's cut of scipy's average-linkage tree, then cluster size / n per question."""
    merges = linkage(condensed, method="average")
    n_cut = int(np.count_nonzero(merges[:, 2] >= threshold))  # sklearn: n_clusters = this + 1
    parent = np.arange(2 * n - 1)
    for step in range(n - 1 - n_cut):  # keep the first merges, as sklearn's _hc_cut does
        left, right = int(merges[step, 0]), int(merges[step, 1])
        parent[left] = parent[right] = n + step
    root = parent.copy()
    for node in range(2 * n - 2, -1, -1):  # parents have larger ids: one backward sweep resolves roots
        root[node] = root[parent[node]] if parent[node] != node else node
    labels = root[:n]
    sizes = np.bincount(labels, minlength=2 * n - 1)
    return sizes[labels] / n
