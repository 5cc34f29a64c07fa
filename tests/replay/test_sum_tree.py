"""SumTree: sampling frequencies match priorities; search equals a brute-force cumsum reference."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from asyncrl.replay import SumTree


def brute_force_find(priorities: np.ndarray, values: np.ndarray) -> np.ndarray:
    return np.searchsorted(np.cumsum(priorities), values, side="right")


def test_sampling_frequencies_match_priorities_chi_square():
    rng = np.random.default_rng(0)
    priorities = np.array([0.0, 1.0, 2.0, 3.0, 0.5, 0.0, 4.0, 1.5, 8.0, 0.25])
    tree = SumTree(len(priorities))
    tree.update(np.arange(len(priorities)), priorities)
    draws = 200_000
    counts = np.zeros(len(priorities))
    for _ in range(draws // 1000):
        indices, sampled = tree.sample(1000, rng)
        np.testing.assert_array_equal(sampled, priorities[indices])
        counts += np.bincount(indices, minlength=len(priorities))
    assert counts[priorities == 0].sum() == 0
    nonzero = priorities > 0
    expected = draws * priorities[nonzero] / priorities.sum()
    chi_square = ((counts[nonzero] - expected) ** 2 / expected).sum()
    # 7 degrees of freedom: the 0.999 quantile is 24.3. Stratified sampling only lowers variance.
    assert chi_square < 24.3, (chi_square, counts)


def test_total_and_repeated_indices_keep_last():
    tree = SumTree(5)
    tree.update(np.array([0, 1, 1, 4]), np.array([1.0, 2.0, 7.0, 3.0]))
    assert tree.total == 11.0
    np.testing.assert_array_equal(tree.priorities, [1.0, 7.0, 0.0, 0.0, 3.0])
    tree.update(np.array([4]), 0.0)
    assert tree.total == 8.0


def test_bad_input_is_refused():
    tree = SumTree(4)
    with pytest.raises(IndexError):
        tree.update(np.array([4]), 1.0)
    with pytest.raises(ValueError):
        tree.update(np.array([0]), -1.0)
    with pytest.raises(ValueError, match="empty"):
        tree.find(np.array([0.0]))


@settings(max_examples=40, deadline=None)
@given(
    capacity=st.integers(1, 70),
    updates=st.lists(
        st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 64)), min_size=1, max_size=20),
        min_size=1,
        max_size=8,
    ),
    seed=st.integers(0, 2**32 - 1),
)
def test_find_and_sample_agree_with_cumsum_searchsorted(capacity, updates, seed):
    # Priorities are multiples of 1/4 so every partial sum is exact in float64 and the tree and
    # the reference must agree to the index, boundaries included.
    tree = SumTree(capacity)
    reference = np.zeros(capacity)
    rng = np.random.default_rng(seed)
    for batch in updates:
        indices = np.array([i % capacity for i, _ in batch])
        values = np.array([q / 4 for _, q in batch])
        tree.update(indices, values)
        for i, v in zip(indices, values):  # sequential semantics: the last write wins
            reference[i] = v
        np.testing.assert_array_equal(tree.priorities, reference)
        assert tree.total == reference.sum()
        if reference.sum() == 0:
            continue
        cumulative = np.cumsum(reference)
        queries = np.concatenate(
            [rng.random(64) * reference.sum(), cumulative[cumulative < reference.sum()], [0.0]]
        )
        np.testing.assert_array_equal(tree.find(queries), brute_force_find(reference, queries))
        draw = np.random.default_rng(seed)
        indices_sampled, _ = tree.sample(16, draw)
        draw = np.random.default_rng(seed)
        strata = (np.arange(16) + draw.random(16)) * (reference.sum() / 16)
        np.testing.assert_array_equal(indices_sampled, brute_force_find(reference, strata))
        assert (reference[indices_sampled] > 0).all()
