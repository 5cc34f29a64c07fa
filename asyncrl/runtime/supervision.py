"""When to restart a local worker that died, and when to give up on its slot.

A pure policy (no processes, no clock of its own) that the coordinator asks each time a local
worker dies. Two kinds of death are told apart:

* a *productive* worker delivered at least one batch since it (re)started, or had been up for
  ``healthy_s``: it is restarted at once and its slot's record is cleared (back-off and
  failures). A fault drill that kills a worker every two seconds therefore never ends a run,
  even when some kills land before a replacement's first batch: each incarnation that samples
  forgives the ones before it.
* an *unproductive* one died without doing any work (crashed at start, failed its first
  batch, could not build its envs): it is restarted after a delay that doubles each time in a
  row (``backoff_s``, 2x, 4x, ... at most ``max_backoff_s``), and once a slot has failed that
  way more than ``max_failures`` times within ``window_s`` seconds (with no productive worker
  in between) the policy gives up: the run cannot sample and ends with one error line (the
  caller's business).

The cap is a rate (failures within a sliding window), not a count per run: a long run that
loses a worker now and then, even unproductively, never runs out of restarts. The back-off is
bounded, so a slot that recovers is not kept waiting long, and a slot that never recovers is
given up after about ``backoff_s * 2**max_failures`` seconds (capped per step), well before a
round's own timeout.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field


@dataclass
class RestartPolicy:
    max_failures: int = 5  # unproductive deaths of one slot within window_s that are restarted
    window_s: float = 60.0
    backoff_s: float = 0.5  # delay before the first restart after an unproductive death
    max_backoff_s: float = 8.0
    healthy_s: float = 30.0  # a worker up this long counts as productive
    _failures: dict[int, deque] = field(default_factory=dict, init=False, repr=False)
    _streak: dict[int, int] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.max_failures < 0:
            raise ValueError(f"max_failures must be >= 0, got {self.max_failures}")
        if self.window_s <= 0:
            raise ValueError(f"window_s must be > 0, got {self.window_s}")
        if self.backoff_s < 0 or self.max_backoff_s < self.backoff_s:
            raise ValueError(
                f"need 0 <= backoff_s <= max_backoff_s, got {self.backoff_s}, {self.max_backoff_s}"
            )

    def productive(self, batches: int, uptime_s: float) -> bool:
        return batches > 0 or uptime_s >= self.healthy_s

    def on_death(self, slot: int, now: float, productive: bool) -> float | None:
        """A worker of ``slot`` died at time ``now`` (seconds, any monotonic clock): how long
        to wait before starting its replacement, or None to give up on the slot."""
        failures = self._failures.setdefault(slot, deque())
        while failures and failures[0] <= now - self.window_s:
            failures.popleft()
        if productive:  # the slot works: its earlier failures are forgiven
            failures.clear()
            self._streak[slot] = 0
            return 0.0
        failures.append(now)
        if len(failures) > self.max_failures:
            return None
        streak = self._streak.get(slot, 0)
        self._streak[slot] = streak + 1
        return min(self.backoff_s * 2.0**streak, self.max_backoff_s)

    def failures(self, slot: int, now: float) -> int:
        """Unproductive deaths of ``slot`` within the window ending at ``now``."""
        return sum(t > now - self.window_s for t in self._failures.get(slot, ()))
