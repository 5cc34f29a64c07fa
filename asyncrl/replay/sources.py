"""Replay over a changing set of sources: the run's own envs, and remote workers that join and
leave (asynchronous off-policy runs).

A replay buffer is a ring of fixed width: B envs whose steps arrive together, so that n-step
windows follow each env through time. A remote worker has its own env count, starts and stops
whenever it likes, and its steps arrive on their own clock. ``SourcedReplay`` therefore keeps
one ring per source: the primary (the local workers' columns, the buffer the run was built
with) and one sibling per remote source, of the same kind and settings and as many rows per env
(``buffer_size / local envs`` steps of history for every env, wherever it runs). n-step windows
never cross sources.

Sampling draws each minibatch's share per source from a multinomial over the sources' sizes
(uniform replay: i.i.d. uniform over all sampleable transitions together) or over their total
priority mass (prioritized: P(i) = p_i / sum of all p, with the importance weights
(N P(i))^-beta normalised over the minibatch, as for one buffer; new transitions enter at the
largest priority seen in any source). A minibatch is grouped by source. Indices carry the
source in their high bits (``index >> SOURCE_SHIFT``), so priority updates find their ring;
updates for a source that was evicted since are skipped.

A source that stops appending keeps its ring (its experience stays useful) until the rings of
the non-primary sources would exceed ``max_envs`` envs; then the least recently appended one
is evicted. ``state_dict`` holds the primary's state under its usual keys and every other
source under ``source<id>/``, so a checkpoint with one source only is a plain buffer's.

Owns the per-source rings and the mixing; the buffers own storage, n-step targets and
priorities. Knows nothing of workers or sockets: the learner (or the replay store process)
names the source of each append.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from asyncrl.replay.state import from_json_array, json_array

SOURCE_SHIFT = 40  # bits of a ring index; the source id sits above them
_META = "sources_meta"


def holds_sources(state: dict) -> bool:
    """Was ``state`` saved from a :class:`SourcedReplay` with more than its primary?"""
    return _META in state


class SourcedReplay:
    """Replay buffers by source over one primary buffer (see the module docstring).

    ``append(samples, final_observation, source="")``: ``""`` is the primary; any other name
    gets its own ring on first use, as wide as that first batch (a source's width is fixed).
    The rest of the interface is the buffers': ``sample``, ``update_priorities``,
    ``anneal_beta``, ``batch_buffer``, ``len``, ``state_dict``/``load_state_dict``.
    """

    takes_sources = True

    def __init__(self, primary, max_envs: int = 1024):
        if max_envs < 1:
            raise ValueError(f"max_envs must be >= 1, got {max_envs}")
        self.primary = primary
        self.max_envs = int(max_envs)
        self.rng = primary.rng
        self.sources: dict[str, Any] = {"": primary}
        self.ids: dict[str, int] = {"": 0}
        self.last_append: dict[str, int] = {"": 0}
        self.clock = 0
        self.next_id = 1
        self.evicted = 0  # sources dropped to make room
        self.prioritized = hasattr(primary, "tree")

    # ------------------------------------------------------------------ writing
    def append(self, samples: Any, final_observation: Any = None, source: str = "") -> None:
        buf = self.sources.get(source)
        if buf is None:
            buf = self._add(source, _width(samples))
        if self.prioritized:  # enter at the largest priority of any source
            buf.max_priority = self.max_priority
        buf.append(samples, final_observation)
        self.clock += 1
        self.last_append[source] = self.clock

    def _add(self, source: str, width: int):
        if width > self.max_envs:
            raise ValueError(f"source {source!r} has {width} envs; at most {self.max_envs}")
        while self.other_envs + width > self.max_envs:
            oldest = min((n for n in self.sources if n), key=self.last_append.__getitem__)
            self._drop(oldest)
        sid = self.next_id
        self.next_id += 1
        buf = self.primary.sibling(width, seed=sid)
        if self.prioritized:
            buf.beta = self.primary.beta
        self.sources[source], self.ids[source], self.last_append[source] = buf, sid, self.clock
        return buf

    def _drop(self, source: str) -> None:
        del self.sources[source], self.ids[source], self.last_append[source]
        self.evicted += 1

    @property
    def other_envs(self) -> int:
        """Envs of the non-primary sources' rings."""
        return sum(b.n_envs for n, b in self.sources.items() if n)

    # ------------------------------------------------------------------ reading
    def __len__(self) -> int:
        return sum(len(b) for b in self.sources.values())

    @property
    def max_priority(self) -> float:
        return max(b.max_priority for b in self.sources.values())

    @property
    def beta(self) -> float:
        return self.primary.beta

    def anneal_beta(self, progress: float) -> float:
        for b in self.sources.values():
            b.anneal_beta(progress)
        return self.primary.beta

    def batch_buffer(self, batch_size: int) -> Any:
        return self.primary.batch_buffer(batch_size)

    def sample(
        self, batch_size: int, rng: np.random.Generator | None = None, out: Any = None
    ) -> Any:
        """``batch_size`` transitions over all sources (see the module docstring); ``rng`` and
        ``out`` as for one buffer."""
        rng = self.rng if rng is None else rng
        live = [(n, b) for n, b in self.sources.items() if len(b) > 0]
        if len(live) <= 1:  # one ring has data: exactly its own draw
            name, buf = live[0] if live else ("", self.primary)
            out = buf.sample(batch_size, rng, out)
            out.indices[...] += self.ids[name] << SOURCE_SHIFT
            return out
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if out is None:
            out = self.primary._empty_batch(batch_size)
        elif len(out.indices) != batch_size:
            raise ValueError(f"out holds {len(out.indices)} transitions, asked for {batch_size}")
        mass = np.array([b.tree.total if self.prioritized else len(b) for _, b in live], float)
        counts = rng.multinomial(batch_size, mass / mass.sum())
        total_mass, n_total = mass.sum(), len(self)
        start = 0
        for (name, buf), k in zip(live, counts):
            if k == 0:
                continue
            part = out[start : start + k]
            if self.prioritized:
                indices, priorities = buf.tree.sample(int(k), rng)
                weights = (n_total * priorities / total_mass) ** -self.primary.beta
                time, env = buf._time_env(indices)
                buf._batch(time, env, weights.astype(np.float32), part)
            else:
                buf.sample(int(k), rng, out=part)
            part.indices[...] += self.ids[name] << SOURCE_SHIFT
            start += k
        if self.prioritized:
            out.weights[...] /= out.weights.max()
        return out

    def update_priorities(self, indices: Any, td_errors: Any) -> None:
        from asyncrl.data import to_numpy

        indices = np.asarray(to_numpy(indices), np.int64).ravel()
        td_errors = np.asarray(to_numpy(td_errors), np.float64).ravel()
        if indices.shape != td_errors.shape:
            raise ValueError(
                f"update_priorities: {len(indices)} indices but {len(td_errors)} td_errors"
            )
        sids = indices >> SOURCE_SHIFT
        local = indices & ((1 << SOURCE_SHIFT) - 1)
        by_id = {sid: self.sources[n] for n, sid in self.ids.items()}
        for sid in np.unique(sids):
            buf = by_id.get(int(sid))
            if buf is not None:  # else: evicted since the draw
                m = sids == sid
                buf.update_priorities(local[m], td_errors[m])
        top = self.max_priority
        for b in self.sources.values():
            b.max_priority = top

    # ------------------------------------------------------------------ memory, state
    @property
    def nbytes(self) -> int:
        return sum(b.nbytes for b in self.sources.values())

    def state_dict(self) -> dict[str, np.ndarray]:
        state = dict(self.primary.state_dict())
        widths = {}
        for name, buf in self.sources.items():
            if name:
                sid = self.ids[name]
                widths[name] = buf.n_envs
                state.update({f"source{sid}/{k}": v for k, v in buf.state_dict().items()})
        state[_META] = json_array(
            {
                "ids": self.ids,
                "widths": widths,
                "last_append": self.last_append,
                "clock": self.clock,
                "next_id": self.next_id,
                "evicted": self.evicted,
            }
        )
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        own = {k: v for k, v in state.items() if not k.startswith("source")}
        self.primary.load_state_dict(own)
        for name in [n for n in self.sources if n]:
            del self.sources[name]
        self.ids, self.last_append = {"": 0}, {"": 0}
        if _META not in state:
            return
        meta = from_json_array(state[_META])
        for name, sid in meta["ids"].items():
            if not name:
                continue
            buf = self.primary.sibling(int(meta["widths"][name]), seed=int(sid))
            prefix = f"source{sid}/"
            buf.load_state_dict(
                {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
            )
            self.sources[name], self.ids[name] = buf, int(sid)
        self.last_append = {n: int(c) for n, c in meta["last_append"].items()}
        self.clock, self.next_id = int(meta["clock"]), int(meta["next_id"])
        self.evicted = int(meta["evicted"])


def _width(samples: Any) -> int:
    from asyncrl.replay.uniform import as_transition

    terminated = np.asarray(as_transition(samples).terminated)
    if terminated.ndim != 2 or terminated.shape[1] < 1:
        raise ValueError(
            f"append takes [t, B] samples; got terminated of shape {list(terminated.shape)}"
        )
    return int(terminated.shape[1])
