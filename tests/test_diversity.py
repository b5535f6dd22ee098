"""cluster_shares against the nltk + sklearn reference: random batches, ties, thresholds, bad inputs.

In-memory, no network; nltk and scikit-learn are the test-only reference dependencies.
Run: ``pytest -q tests/test_diversity.py`` (a few seconds).
"""

from __future__ import annotations

import time

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy.cluster.hierarchy import linkage

from visplay.rewards.diversity import bleu_distance_matrix, cluster_shares
from reference import reference_bleu_distance_matrix, reference_cluster_shares

# Two or three words and short questions: n-gram overlaps, duplicates and exact ties are common.
WORDS = st.sampled_from(["a", "b", "c"])
QUESTION = st.builds(
    lambda words, sep: sep.join(words),
    st.lists(WORDS, min_size=0, max_size=7),
    st.sampled_from([" ", "  ", "\t", " \n "]),
)
BATCH = st.lists(QUESTION, min_size=2, max_size=14)
THRESHOLD = st.one_of(st.sampled_from([0.0, 0.25, 0.5, 0.75, 1.0, 1.5]), st.floats(0.0, 1.2))
FAST = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _upper(matrix: np.ndarray) -> np.ndarray:
    return matrix[np.triu_indices(len(matrix), k=1)]


@FAST
@given(BATCH)
def test_distances_are_bitwise_the_reference(questions: list[str]) -> None:
    ours = _upper(bleu_distance_matrix(questions))
    reference = _upper(reference_bleu_distance_matrix(questions))
    assert ours.tobytes() == reference.tobytes()


@FAST
@given(BATCH, THRESHOLD)
def test_shares_match_reference(questions: list[str], threshold: float) -> None:
    ours = cluster_shares(questions, threshold)
    reference = reference_cluster_shares(questions, threshold)
    assert ours.shape == (len(questions),)
    assert np.max(np.abs(ours - reference)) <= 1e-9


@settings(max_examples=60, deadline=None)
@given(BATCH, st.data())
def test_threshold_exactly_at_a_merge_distance(questions: list[str], data: st.DataObject) -> None:
    """sklearn cuts merges with distance >= threshold; a threshold equal to a merge height must agree."""
    merges = linkage(_upper(reference_bleu_distance_matrix(questions)), method="average")
    threshold = float(data.draw(st.sampled_from(merges[:, 2].tolist())))
    assert np.array_equal(cluster_shares(questions, threshold), reference_cluster_shares(questions, threshold))


@settings(max_examples=25, deadline=None)
@given(st.lists(st.sampled_from(["how many red circles are there", "how many red squares are there",
                                 "what is the area of the blue circle", "is the red circle left of it",
                                 "count them", "why", ""]), min_size=2, max_size=30))
def test_realistic_duplicates_match_reference(questions: list[str]) -> None:
    assert np.max(np.abs(cluster_shares(questions) - reference_cluster_shares(questions))) <= 1e-9


def test_hand_built_cases() -> None:
    long_q = "how many red circles are there"
    # Identical >= 4-token questions are at distance 0; identical 2-token ones are not (BLEU-4 with
    # method1 smoothing gives 0.316, distance 0.68 > 0.5); empty strings are at distance 1.
    questions = [long_q, long_q, "red circle", "red circle", "", "", "why"]
    shares = cluster_shares(questions)
    assert shares.tolist() == pytest.approx([2 / 7, 2 / 7, 1 / 7, 1 / 7, 1 / 7, 1 / 7, 1 / 7])
    assert np.array_equal(shares, reference_cluster_shares(questions))
    assert cluster_shares(questions, threshold=0.7).tolist()[2:4] == [2 / 7, 2 / 7]


def test_threshold_zero_keeps_everyone_apart_even_duplicates() -> None:
    """Every distance is >= 0, so sklearn cuts every merge at threshold 0."""
    q = "how many red circles are there"
    assert cluster_shares([q, q, q], threshold=0.0).tolist() == [1 / 3] * 3


def test_sizes_zero_and_one() -> None:
    assert cluster_shares([]).shape == (0,)
    assert cluster_shares(["only one"]).tolist() == [1.0]
    assert cluster_shares([""]).tolist() == [1.0]


def test_non_strings_are_str_and_none_is_empty() -> None:
    odd = [None, 12, 3.5, b"bytes", ("a", "b"), "12"]
    as_text = ["", "12", "3.5", "b'bytes'", "('a', 'b')", "12"]
    assert np.array_equal(cluster_shares(odd), reference_cluster_shares(as_text))


def test_very_long_strings_are_fine() -> None:
    rng = np.random.default_rng(0)
    long_text = " ".join(rng.choice(["red", "blue", "circle", "square", "how", "many"], size=20_000))
    questions = [long_text, long_text[:50_000], "how many red circles", long_text, "x" * 100_000]
    start = time.perf_counter()
    shares = cluster_shares(questions)
    assert time.perf_counter() - start < 20
    assert shares.shape == (5,)
    assert shares[0] == shares[3] and np.all(shares > 0)


@pytest.mark.parametrize("threshold", [-0.1, float("nan"), float("inf")])
def test_bad_threshold_is_rejected(threshold: float) -> None:
    with pytest.raises(ValueError, match="threshold"):
        cluster_shares(["a b", "a c"], threshold)


def test_reference_itself_clusters_near_duplicates() -> None:
    """Guards the reference: near-duplicate questions share a cluster, unrelated ones do not."""
    questions = ["how many red circles are there in the image", "how many red circles are there in the picture",
                 "what is the colour of the largest square"]
    shares = reference_cluster_shares(questions)
    assert shares.tolist() == pytest.approx([2 / 3, 2 / 3, 1 / 3])
