"""A sum tree in numpy with batched updates and batched stratified sampling.

Owns the priority arithmetic only (prefix-sum search over leaves); knows nothing of transitions.
Every operation is vectorized over the batch; the only Python loop is over the tree's levels.

Layout: a ``FANOUT``-ary tree (32 children per node, so a million leaves take 4 levels) kept as one
float64 array per level, root level first, each padded to a multiple of the fanout so that
``level.reshape(-1, FANOUT)[i]`` are the children of node ``i`` of the level above. A wide tree
suits numpy: a level costs a handful of array operations on [N, 32] blocks, whatever N, where a
binary tree would pay the per-call overhead of numpy 20 times. A parent is the (sequential)
cumulative sum of its children, recomputed on every update rather than adjusted by deltas, so
sums carry no drift however many updates are made, and the search uses the same cumulative sums,
so it agrees exactly with ``searchsorted(cumsum(priorities), v, side="right")`` whenever the sums
are exact, and never returns a leaf of priority zero (Schaul et al. 2016, appendix B.2.1).
"""

from __future__ import annotations

from typing import Any

import numpy as np

FANOUT = 32


class SumTree:
    """Leaves hold non-negative priorities; ``find`` maps a value in ``[0, total)`` to the leaf
    whose prefix-sum interval contains it."""

    def __init__(self, capacity: int):
        if capacity < 1:
            raise ValueError(f"SumTree capacity must be >= 1, got {capacity}")
        self.capacity = int(capacity)
        sizes, count = [], self.capacity
        while True:
            padded = -(-count // FANOUT) * FANOUT
            sizes.append(padded)
            count = padded // FANOUT
            if count == 1:
                break
        self.levels = [np.zeros(1)] + [np.zeros(size) for size in reversed(sizes)]
        self._children = [level.reshape(-1, FANOUT) for level in self.levels[1:]]

    @property
    def depth(self) -> int:
        return len(self.levels) - 1

    @property
    def total(self) -> float:
        return float(self.levels[0][0])

    @property
    def priorities(self) -> np.ndarray:
        """A view of the leaves, [capacity]."""
        return self.levels[-1][: self.capacity]

    @property
    def nbytes(self) -> int:
        return sum(level.nbytes for level in self.levels)

    def get(self, indices: np.ndarray) -> np.ndarray:
        return self.levels[-1][np.asarray(indices, np.int64)]

    def update(self, indices: np.ndarray, priorities: np.ndarray | float) -> None:
        """Set leaves ``indices`` to ``priorities`` (a repeated index keeps its last value)."""
        indices = np.asarray(indices, np.int64).ravel()
        if len(indices) == 0:
            return
        priorities = np.broadcast_to(np.asarray(priorities, np.float64), indices.shape)
        if indices.min() < 0 or indices.max() >= self.capacity:
            raise IndexError(f"SumTree indices must be in [0, {self.capacity})")
        if not (np.isfinite(priorities).all() and (priorities >= 0).all()):
            raise ValueError("SumTree priorities must be finite and >= 0")
        # Numpy leaves the winner of repeated fancy-index writes unspecified: keep the last.
        unique, first_in_reversed = np.unique(indices[::-1], return_index=True)
        self.assign(unique, priorities[len(indices) - 1 - first_in_reversed])

    def assign(self, indices: np.ndarray, priorities: np.ndarray | float) -> None:
        """Unchecked :meth:`update` for distinct, valid ``indices`` (the buffers' hot path)."""
        self.levels[-1][indices] = priorities
        nodes = indices
        for depth in range(self.depth - 1, -1, -1):
            # Repeated parents are harmless: each copy writes the same sum.
            nodes = nodes // FANOUT
            self.levels[depth][nodes] = self._children[depth][nodes].cumsum(axis=1)[:, -1]

    def find(self, values: np.ndarray) -> np.ndarray:
        """Leaf index ``j`` with ``prefix[j] <= v < prefix[j] + p[j]`` for each value.

        Equal to ``searchsorted(cumsum(p), v, side="right")`` for ``0 <= v < total`` (exactly,
        when the sums are exact); values are kept below the chosen child's sum so that rounding
        can never walk into a zero-priority subtree.
        """
        if not self.total > 0:
            raise ValueError("SumTree is empty (total priority 0): nothing to sample")
        values = np.minimum(np.asarray(values, np.float64).ravel(), np.nextafter(self.total, 0))
        values = np.maximum(values, 0.0)
        node = np.zeros(len(values), np.int64)
        rows = np.arange(len(values))
        for children in self._children:
            block = children[node]  # [N, FANOUT]
            cumulative = block.cumsum(axis=1)
            choice = (cumulative <= values[:, None]).sum(axis=1)  # children wholly below v
            before = np.where(choice > 0, cumulative[rows, choice - 1], 0.0)
            values = np.minimum(values - before, np.nextafter(block[rows, choice], 0))
            node = node * FANOUT + choice
        return node

    def sample(self, batch_size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Stratified sampling: one draw in each of ``batch_size`` equal slices of the total mass.

        Returns (leaf indices [N], their priorities [N]).
        """
        values = (np.arange(batch_size) + rng.random(batch_size)) * (self.total / batch_size)
        indices = self.find(values)
        return indices, self.get(indices)

    def state_dict(self, prefix: str = "tree") -> dict[str, np.ndarray]:
        return {f"{prefix}/leaves": self.priorities}

    def load_state_dict(self, state: dict[str, Any], prefix: str = "tree") -> None:
        leaves = np.asarray(state[f"{prefix}/leaves"], np.float64)
        if leaves.shape != (self.capacity,):
            raise ValueError(f"saved tree has {leaves.shape} leaves, this one {self.capacity}")
        if not (np.isfinite(leaves).all() and (leaves >= 0).all()):
            raise ValueError("saved SumTree priorities must be finite and >= 0")
        for level in self.levels:
            level[:] = 0.0
        self.levels[-1][: self.capacity] = leaves
        for depth in range(self.depth - 1, -1, -1):  # rebuild every parent, level by level
            sums = self._children[depth].cumsum(axis=1)[:, -1]
            self.levels[depth][: len(sums)] = sums
