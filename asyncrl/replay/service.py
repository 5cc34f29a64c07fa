"""The learner's handle on a replay store running in its own process (workers/replay.py).

``ReplayService`` has the in-process buffers' interface (``append``, ``sample``,
``update_priorities``, ``anneal_beta``, ``state_dict``/``load_state_dict``, ``len``), so an
algorithm uses either without knowing. With ``prefetch`` the next minibatch is requested as soon
as one is handed out, so the store samples while the learner computes its gradient (the
minibatch then predates at most the latest append: a one-batch lag, off by default).

Pattern: DEALER (here) to the store's ROUTER over ipc; blocking sockets with timeouts (the
learner is synchronous). The store process is started as ``python -m workers.replay`` and
stopped (then killed if need be) by ``close()``; it also exits when this process dies.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
import uuid
import weakref
from pathlib import Path
from typing import Any

import numpy as np
import zmq

from asyncrl.data import namedarraytuple, to_numpy, tree_map
from asyncrl.replay.uniform import Transition, as_transition
from asyncrl.runtime.protocol import Header, MsgType, decode, encode

AppendMsg = namedarraytuple("ReplayAppend", ["samples", "final_observation"])
PriorityMsg = namedarraytuple("ReplayPriorities", ["indices", "priorities"])


class ReplayServiceError(RuntimeError):
    pass


class ReplayService:
    takes_sources = True  # appends may name a source (the store keeps a ring per source)

    def __init__(
        self,
        kind: str,
        example_transition: Any,
        size: int,
        n_envs: int,
        *,
        seed: int = 0,
        prefetch: bool = False,
        timeout_s: float = 60.0,
        **kwargs: Any,
    ):
        """``kind``: uniform | prioritized | frame | prioritized_frame; ``kwargs`` go to the
        buffer's constructor (discount, n_step, alpha, beta, ...)."""
        self.kind, self.size, self.n_envs = kind, size, n_envs
        self.prefetch = prefetch
        self.timeout_ms = int(timeout_s * 1000)
        self._dir = tempfile.mkdtemp(prefix="asyncrl-replay-")
        endpoint = f"ipc://{self._dir}/replay.sock" if os.name == "posix" else "tcp://127.0.0.1:0"
        from asyncrl.runtime.launcher import popen

        # Its own session, like the sampler workers (the launcher's rule): a terminal's Ctrl-C
        # (SIGINT to the foreground process group) must not stop the store before the learner
        # has saved its contents in the final checkpoint. close() stops it; it exits when we die.
        self.process = popen("replay", ["--bind", endpoint, "--parent-pid", str(os.getpid())])
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.identity = f"learner-{uuid.uuid4().hex[:8]}".encode()
        self.sock.linger = 0
        self.sock.sndtimeo = self.timeout_ms
        self.sock.connect(endpoint)
        self._finalizer = weakref.finalize(
            self, _shutdown, self.process, self.ctx, self.sock, self._dir
        )
        self._pending_sample = False
        self.source_envs_limit = 1024  # envs of all remote sources' rings (the store's cap)
        self.sources: set[str] = {""}  # sources appended to (the store may evict old ones)
        self._beta_progress: float | None = None
        self._len = 0
        self._steps_written = 0
        example = to_numpy(as_transition(example_transition))
        example = Transition(*(np.asarray(x) if not hasattr(x, "_fields") else x for x in example))
        self._example = example
        self._request(
            MsgType.REPLAY_CONFIG,
            example,
            {"kind": kind, "size": size, "n_envs": n_envs, "seed": seed, "kwargs": kwargs},
            expect=MsgType.REPLAY_OK,
        )

    # ------------------------------------------------------------------ messaging
    def _send(self, type_: MsgType, tree: Any = None, meta: dict | None = None) -> None:
        self.sock.send_multipart(encode(Header(type_, meta=meta or {}), tree), copy=False)

    def _recv(self, expect: MsgType):
        deadline = time.monotonic() + self.timeout_ms / 1000
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not self.sock.poll(int(min(remaining, 1.0) * 1000) + 1):
                if self.process.poll() is not None:
                    raise ReplayServiceError(f"replay store exited with {self.process.returncode}")
                if remaining <= 0:
                    raise ReplayServiceError(
                        f"replay store did not answer within {self.timeout_ms / 1000:.0f} s"
                    )
                continue
            header, tree = decode(self.sock.recv_multipart(copy=False))
            if header.type == MsgType.ERROR:
                raise ReplayServiceError(f"replay store: {header.meta.get('reason', '?')}")
            if header.type != expect:
                raise ReplayServiceError(
                    f"replay store answered {header.type.name}, expected {expect.name}"
                )
            return header, tree

    def _request(self, type_: MsgType, tree: Any, meta: dict, expect: MsgType):
        self._drain_prefetch()
        self._send(type_, tree, meta)
        return self._recv(expect)

    def _drain_prefetch(self) -> None:
        if self._pending_sample:
            self._pending_sample = False
            self._recv(MsgType.REPLAY_BATCH)

    # ------------------------------------------------------------------ buffer interface
    def append(self, samples: Any, final_observation: Any = None, source: str = "") -> None:
        """``source``: "" for the primary ring, else a remote source's name (see
        ``asyncrl.replay.sources``; the store makes its ring on first use)."""
        steps = to_numpy(as_transition(samples))
        steps = Transition(
            *(
                np.ascontiguousarray(x)
                if not hasattr(x, "_fields")
                else tree_map(np.ascontiguousarray, x)
                for x in steps
            )
        )
        finals = list(final_observation or [])
        final_obs = None
        if finals:
            final_obs = tree_map(lambda *xs: np.stack(xs), *[o for _, _, o in finals])
        meta = {"final": [[int(t), int(b)] for t, b, _ in finals]}
        if source:
            meta["source"] = source
            meta["max_envs"] = self.source_envs_limit
            self.sources.add(source)
        self._send(MsgType.REPLAY_APPEND, AppendMsg(steps, final_obs), meta)
        if source:
            return  # len() below counts the primary ring only
        t = np.shape(steps.reward)[0]
        self._steps_written += t
        self._len = min(self._steps_written, self.size // self.n_envs) * self.n_envs

    def anneal_beta(self, progress: float) -> float:
        self._beta_progress = float(progress)
        return float(progress)

    def _sample_meta(self, batch_size: int) -> dict:
        meta = {"batch_size": int(batch_size)}
        if self._beta_progress is not None:
            meta["beta_progress"] = self._beta_progress
        return meta

    def batch_buffer(self, batch_size: int) -> Any:
        """A preallocated ReplaySample to pass as ``sample(..., out=)``."""
        from asyncrl.data import buffer_from_example
        from asyncrl.replay.uniform import ReplaySample

        ex = self._example
        return ReplaySample(
            observation=buffer_from_example(ex.observation, batch_size),
            action=buffer_from_example(ex.action, batch_size),
            reward=np.zeros(batch_size, np.float32),
            done_n=np.zeros(batch_size, bool),
            discount=np.zeros(batch_size, np.float32),
            next_observation=buffer_from_example(ex.observation, batch_size),
            weights=np.zeros(batch_size, np.float32),
            indices=np.zeros(batch_size, np.int64),
        )

    def sample(
        self, batch_size: int, rng: np.random.Generator | None = None, out: Any = None
    ) -> Any:
        """A minibatch (the store's own seeded generator is used; ``rng`` is ignored); ``out``
        (from ``batch_buffer``) is filled in place."""
        if not self._pending_sample:
            self._send(MsgType.REPLAY_SAMPLE, None, self._sample_meta(batch_size))
        self._pending_sample = False
        _, batch = self._recv(MsgType.REPLAY_BATCH)
        if out is not None:
            out[:] = batch  # copy out of the received frames
            batch = out
        else:
            batch = tree_map(np.array, batch)  # own the memory: frames are reused by ZeroMQ
        if self.prefetch:
            self._send(MsgType.REPLAY_SAMPLE, None, self._sample_meta(batch_size))
            self._pending_sample = True
        return batch

    def update_priorities(self, indices: Any, td_errors: Any) -> None:
        self._send(
            MsgType.REPLAY_PRIORITIES,
            PriorityMsg(
                np.ascontiguousarray(indices, np.int64), np.ascontiguousarray(td_errors, np.float64)
            ),
        )

    def __len__(self) -> int:
        return self._len

    def state_dict(self) -> dict[str, np.ndarray]:
        header, tree = self._request(MsgType.REPLAY_STATE, None, {}, expect=MsgType.REPLAY_STATE)
        return {n: np.array(a) for n, a in zip(header.meta["names"], tree)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        names = sorted(state)
        State = namedarraytuple("ReplayState", [f"a{i}" for i in range(len(names))])
        self._request(
            MsgType.REPLAY_STATE,
            State(*(np.asarray(state[n]) for n in names)),
            {"names": names},
            expect=MsgType.REPLAY_OK,
        )

    def close(self) -> None:
        if self._finalizer.alive:
            try:
                self._drain_prefetch()
                self._send(MsgType.STOP)
                self._recv(MsgType.REPLAY_OK)
            except Exception:  # noqa: BLE001 - it is killed below if it does not stop
                pass
            self._finalizer()


def _shutdown(process: subprocess.Popen, ctx, sock, directory: str) -> None:
    try:
        process.wait(3)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(5)
    sock.close(linger=0)
    ctx.term()
    for p in Path(directory).glob("*"):
        p.unlink(missing_ok=True)
    try:
        os.rmdir(directory)
    except OSError:
        pass
