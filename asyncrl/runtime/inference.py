"""The inference server (central and alternating modes): batches the ACT_REQUESTs of all
workers and runs the agent on them in a thread of its own, never on the event loop, so that
heartbeats and the socket reader do not wait for forward passes.

Owns the inference thread and, in asynchronous runs, applying new parameters between batches
(``load_params``). Must not touch sockets: the loop hands requests in (``submit``) and gets
answers back through the ``reply`` callback, which it runs on the loop. Knows an agent only by
``step``, ``value``, ``on_episode_end``, ``load_state_tensors`` and ``policy_version``.

Batching is greedy: every request waiting when the thread is free goes into one forward pass
(one for actions, one for values).
"""

from __future__ import annotations

import logging
import queue
import sys
import threading
from collections.abc import Callable
from typing import Any

import numpy as np

from asyncrl.data import namedarraytuple, tree_map
from asyncrl.runtime.protocol import ProtocolError

log = logging.getLogger("asyncrl.coordinator")

ActReply = namedarraytuple("ActReply", ["action", "agent_info"])

_STOP = object()


class InferenceServer:
    """``submit(key, request, what)`` from the loop; ``reply(answers)`` is called on the loop
    with ``[(key, ActReply, policy_version)]`` for each served group, ``failed(n, error)`` when
    a group could not be served."""

    def __init__(
        self,
        agent: Any,
        call_soon: Callable[..., None],
        reply: Callable[[list], None],
        failed: Callable[[int, BaseException], None],
    ):
        self.agent = agent
        self._call_soon = call_soon
        self._reply = reply
        self._failed = failed
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._params: tuple | None = None  # newest (state, version, acting) not yet applied
        self._params_lock = threading.Lock()
        torch = sys.modules.get("torch")
        self._threads = torch.get_num_threads() if torch is not None else 0
        self._thread = threading.Thread(target=self._main, name="asyncrl-inference", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ called from the loop
    def submit(self, key: Any, request: Any, what: str) -> None:
        self._queue.put((key, request, what))

    def load_params(self, state: dict, version: int, acting: dict | None = None) -> None:
        """Newer parameters (asynchronous runs): applied before the next forward pass."""
        with self._params_lock:
            self._params = (state, version, acting)

    def close(self, timeout: float = 5.0) -> None:
        self._queue.put(_STOP)
        self._thread.join(timeout)

    # ------------------------------------------------------------------ the thread
    def _main(self) -> None:
        if self._threads:
            sys.modules["torch"].set_num_threads(self._threads)
        while True:
            first = self._queue.get()
            if first is _STOP:
                return
            batch = [first]
            while True:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is _STOP:
                    self._serve(batch)
                    return
                batch.append(item)
            self._serve(batch)

    def _apply_params(self) -> None:
        with self._params_lock:
            pending, self._params = self._params, None
        if pending is not None:
            state, version, acting = pending
            self.agent.load_state_tensors(state, version)
            if acting:
                self.agent.load_acting_state(acting)

    def _serve(self, batch: list) -> None:
        try:
            self._apply_params()
        except Exception as e:  # noqa: BLE001 - the thread must live on; the run sees the error
            self._call_soon(self._failed, [], e)
        for what in ("act", "value", "final_value"):
            group = [r for r in batch if r[2] == what]
            if not group:
                continue
            try:
                answers = self._answer(group, what)
            except Exception as e:  # noqa: BLE001 - one bad request must not stop inference
                self._call_soon(self._failed, [r[0] for r in group], e)
                continue
            self._call_soon(self._reply, answers)

    def _answer(self, group: list, what: str) -> list:
        agent = self.agent
        if agent is None:
            raise ProtocolError("ACT_REQUEST but no central agent is served")
        obs = [r[1].observation for r in group]
        ids = [np.asarray(r[1].env_ids) for r in group]
        sizes = [len(i) for i in ids]
        all_obs = tree_map(lambda *xs: np.concatenate(xs), *obs) if len(obs) > 1 else obs[0]
        all_ids = np.concatenate(ids)
        recurrent = getattr(agent, "recurrent", False)
        rewards = [getattr(r[1], "reward", None) for r in group]
        observe = getattr(agent, "observe", None)
        if observe is not None and any(x is not None for x in rewards):
            # recurrent agents: the previous step's rewards (the core's previous-reward input),
            # before any reset of the request
            reward = np.concatenate(
                [
                    np.zeros(n, np.float32) if x is None else np.asarray(x, np.float32)
                    for x, n in zip(rewards, sizes)
                ]
            )
            if len(reward) != len(all_ids):
                raise ProtocolError("ACT_REQUEST: rewards and env ids differ in length")
            observe(reward, all_ids)
        resets = [getattr(r[1], "reset", None) for r in group]
        on_episode_end = getattr(agent, "on_episode_end", None)
        if on_episode_end is not None and any(x is not None for x in resets):
            mask = np.concatenate(
                [
                    np.zeros(n, bool) if x is None else np.asarray(x, bool)
                    for x, n in zip(resets, sizes)
                ]
            )
            if len(mask) != len(all_ids):
                raise ProtocolError("ACT_REQUEST: reset mask and env ids differ in length")
            # per-env exploration (DDPG's OU noise) or recurrent state; a value request may
            # carry them too (a recurrent bootstrap value is a new episode's where one ended)
            on_episode_end(mask, all_ids)
        if what in ("value", "final_value"):
            if recurrent:  # from each env's state (final: the one its episode ended with)
                values = agent.value(all_obs, all_ids, final=what == "final_value")
            elif what == "final_value":
                raise ProtocolError("ACT_REQUEST what=final_value needs a recurrent agent")
            else:
                values = agent.value(all_obs)
            values = np.asarray(values, np.float32)
            parts = np.split(values, np.cumsum(sizes)[:-1])
            infos = [None] * len(group)
        else:
            action, info = agent.step(all_obs, all_ids)
            parts = np.split(action, np.cumsum(sizes)[:-1])
            if info is None:
                infos = [None] * len(group)
            else:
                bounds = np.cumsum([0, *sizes])
                infos = [info[bounds[i] : bounds[i + 1]] for i in range(len(group))]
        version = int(getattr(agent, "policy_version", 0))
        return [
            (r[0], ActReply(np.ascontiguousarray(a), inf), version)
            for r, a, inf in zip(group, parts, infos)
        ]
