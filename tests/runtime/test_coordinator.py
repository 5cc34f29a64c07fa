"""The coordinator on its own, with hand-driven peers (raw ZeroMQ DEALERs standing in for
workers): registration and refusals, central inference with greedy batching, stale and foreign
batches, the status line; and the embedding example run as a user would run it.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time

import numpy as np
import pytest

from asyncrl.data import namedarraytuple
from asyncrl.logging.checkpoint import list_checkpoints
from asyncrl.runtime.protocol import Header, MsgType, encode
from tests.runtime._runtime_helpers import (
    ROOT,
    cli_env,
    no_leftovers,  # noqa: F401 - module fixture: no process or shm segment remains
    wait_until,
)
from tests.runtime.conftest import raw_peer, recv_reply, register_local

Info = namedarraytuple("Info", ["value", "log_prob"])
ActRequest = namedarraytuple("ActRequest", ["observation", "env_ids"])
Batch = namedarraytuple("Batch", ["reward"])


class FakeAgent:
    """Acts env_id * 10; the first call dawdles so that requests pile up behind it."""

    policy_version = 3

    def __init__(self, first_call_s: float = 0.5):
        self.calls: list[list[int]] = []
        self.first_call_s = first_call_s

    def step(self, obs, env_ids):
        if not self.calls:
            time.sleep(self.first_call_s)
        self.calls.append(sorted(int(i) for i in env_ids))
        n = len(env_ids)
        return np.asarray(env_ids, np.int64) * 10, Info(
            obs.sum(1).astype(np.float32), np.full(n, -0.5, np.float32)
        )

    def value(self, obs):
        return obs.sum(1)


def test_central_inference_batches_waiting_requests_and_answers_each_worker(make_coordinator, zctx):
    agent = FakeAgent(first_call_s=0.0)
    coord = make_coordinator()
    coord.serve(agent)
    socks = [register_local(zctx, coord, slot)[0] for slot in (0, 1)]
    run_id = coord.run_id

    def ask(sock, seq, ids):
        obs = np.tile(np.asarray(ids, np.float32)[:, None], (1, 4))
        header = Header(MsgType.ACT_REQUEST, run_id=run_id, seq=seq, meta={"what": "act"})
        sock.send_multipart(encode(header, ActRequest(obs, np.asarray(ids, np.int64))))

    ask(socks[0], 1, [0, 1])  # answered alone
    header, tree = recv_reply(socks[0])
    assert header.type == MsgType.ACT_REPLY and header.seq == 1 and tree.action.tolist() == [0, 10]

    # Three requests that are waiting together (they arrived while a forward pass ran: the
    # agent is held in its second call meanwhile) are answered by one call, off the loop.
    import threading

    gate = threading.Event()
    held = threading.Event()
    step = agent.step

    def held_step(obs, env_ids):
        if len(agent.calls) == 1:
            held.set()
            gate.wait(10)
        return step(obs, env_ids)

    agent.step = held_step

    def request(w, seq, ids):
        obs = np.tile(np.asarray(ids, np.float32)[:, None], (1, 4))
        header = Header(MsgType.ACT_REQUEST, run_id=run_id, seq=seq, meta={"what": "act"})
        worker = coord.workers[f"fake-{w}".encode()]
        return (coord.local_sock, worker, header), ActRequest(obs, np.asarray(ids, np.int64))

    ask(socks[0], 5, [0, 1])  # the call the others wait behind
    assert held.wait(10)
    for w, seq, ids in ((0, 2, [0, 1]), (1, 1, [2, 3]), (1, 2, [2, 3])):
        coord.inference.submit(*request(w, seq, ids), "act")
    gate.set()
    header, _ = recv_reply(socks[0])
    assert header.seq == 5
    answers = {0: [], 1: []}
    for w, sock in enumerate(socks):
        for _ in range(1 if w == 0 else 2):
            header, tree = recv_reply(sock)
            assert header.type == MsgType.ACT_REPLY and header.policy_version == 3
            answers[w].append((header.seq, tree.action.tolist(), tree.agent_info.value.tolist()))
    assert sorted(answers[0]) == [(2, [0, 10], [0.0, 4.0])]
    assert sorted(answers[1]) == [(1, [20, 30], [8.0, 12.0]), (2, [20, 30], [8.0, 12.0])]
    assert agent.calls == [[0, 1], [0, 1], [0, 1, 2, 2, 3, 3]]  # greedy batching
    assert coord.dropped_messages == 0


def test_samples_are_delivered_once_and_stale_or_foreign_ones_dropped(make_coordinator, zctx):
    coord = make_coordinator(mode="parallel")
    socks, run_ids = zip(*[register_local(zctx, coord, slot) for slot in (0, 1)])
    delivered = []

    def deliver(d):
        delivered.append((d.worker.slot, d.tree.reward.copy()))

    coord.call(_start_sample(coord, deliver), timeout=10)  # the round goes on in the loop
    # Both workers are asked for batch 1 (parameters are sent with the request).
    for sock in socks:
        header, _ = recv_reply(sock)
        assert header.type == MsgType.PARAMS and header.meta["sample"] == 1
    batch = Batch(np.ones((4, 2), np.float32))
    stale = Header(MsgType.SAMPLES, run_id=run_ids[0], seq=0)
    foreign = Header(MsgType.SAMPLES, run_id="another-run", seq=1)
    socks[0].send_multipart(encode(stale, batch))
    socks[0].send_multipart(encode(foreign, batch))
    assert wait_until(lambda: coord.dropped_messages == 2, 10), coord.dropped_messages
    socks[0].send_multipart(encode(Header(MsgType.SAMPLES, run_id=run_ids[0], seq=1), batch))
    socks[0].send_multipart(encode(Header(MsgType.SAMPLES, run_id=run_ids[0], seq=1), batch))
    socks[1].send_multipart(
        encode(Header(MsgType.SAMPLES, run_id=run_ids[1], seq=1), Batch(2 * batch.reward))
    )
    assert wait_until(lambda: coord._itr is None, 10), "the round did not finish"
    assert sorted(s for s, _ in delivered) == [0, 1]  # the duplicate is not delivered twice
    assert coord.dropped_messages == 3
    assert coord.lost_batches == 0


def test_a_malformed_batch_is_dropped_and_its_worker_replaced(make_coordinator, zctx):
    """A batch the sampler cannot take (here: wrong shape) costs the worker its place, not the
    run: it is declared dead (a local one restarted), and the replacement is asked again."""
    coord = make_coordinator(mode="parallel")
    socks, run_ids = zip(*[register_local(zctx, coord, slot) for slot in (0, 1)])
    delivered = []

    def deliver(d):
        if d.tree.reward.shape != (4, 2):
            raise ValueError(f"reward of shape {d.tree.reward.shape}")
        delivered.append(d.worker.peer)

    coord.call(_start_sample(coord, deliver), timeout=10)
    for sock in socks:
        assert recv_reply(sock)[0].type == MsgType.PARAMS
    bad = Batch(np.ones((3, 2), np.float32))
    socks[0].send_multipart(encode(Header(MsgType.SAMPLES, run_id=run_ids[0], seq=1), bad))
    good = Batch(np.ones((4, 2), np.float32))
    socks[1].send_multipart(encode(Header(MsgType.SAMPLES, run_id=run_ids[1], seq=1), good))
    assert wait_until(lambda: coord.restarts == {0: 1}, 10), coord.restarts
    assert coord.lost_batches == 1 and coord.dropped_messages == 1
    assert coord._itr == 1, "the round must wait for slot 0's replacement"
    # The replacement registers in slot 0 and is asked for the owed batch at once.
    sock = raw_peer(zctx, coord.local_endpoint, "fake-0-bis")
    sock.send_multipart(encode(Header(MsgType.REGISTER, worker_id="fake-0-bis", meta={"slot": 0})))
    header, _ = recv_reply(sock)
    assert header.type == MsgType.REGISTERED
    header, _ = recv_reply(sock)
    assert header.type == MsgType.PARAMS and header.meta["sample"] == 1
    sock.send_multipart(encode(Header(MsgType.SAMPLES, run_id=header.run_id, seq=1), good))
    assert wait_until(lambda: coord._itr is None, 10), "the round did not finish"
    assert sorted(delivered) == [b"fake-0-bis", b"fake-1"]


async def _start_sample(coord, deliver):
    asyncio.get_running_loop().create_task(
        coord.sample(1, None, None, 0, deliver, min_workers=2, timeout=10)
    )


@pytest.mark.parametrize(
    "mode, allow, reason",
    [
        ("central", True, "parallel-mode runs only"),
        ("parallel", False, "local workers only"),
    ],
)
def test_remote_workers_are_refused_where_they_cannot_join(
    make_coordinator, zctx, mode, allow, reason
):
    coord = make_coordinator(mode=mode, allow_remote_sizes=allow, bind="tcp://127.0.0.1:*")
    sock = raw_peer(zctx, coord.remote_endpoint, "visitor")
    sock.send_multipart(encode(Header(MsgType.REGISTER, worker_id="visitor", meta={"envs": 2})))
    header, _ = recv_reply(sock)
    assert header.type == MsgType.REFUSED and reason in header.meta["reason"]
    assert coord.refused_workers == 1 and not coord.alive_workers()


def test_status_names_the_workers_and_their_rate(make_coordinator, zctx):
    coord = make_coordinator(mode="parallel")
    socks, run_ids = zip(*[register_local(zctx, coord, slot) for slot in (0, 1)])
    for sock, run_id, rate in zip(socks, run_ids, (1000.0, 500.0)):
        meta = {"steps": 4096, "steps_per_s": rate}
        sock.send_multipart(encode(Header(MsgType.HEARTBEAT, run_id=run_id, meta=meta)))
    assert wait_until(lambda: "1,500 steps/s" in coord.status(), 10), coord.status()
    assert coord.status().startswith("workers 2")
    # A worker that says goodbye is gone from the status (and, being local, restarted).
    socks[1].send_multipart(encode(Header(MsgType.BYE, run_id=run_ids[1])))
    assert wait_until(lambda: coord.status().startswith("workers 1 (1,000 steps/s"), 10)
    # (counted on the coordinator's thread right after the record goes: wait for it)
    assert wait_until(lambda: coord.restarts == {1: 1}, 10), coord.restarts


# ------------------------------------------------------------------------------- embedding


def test_the_embedding_example_runs(tmp_path):
    run_dir = tmp_path / "run"
    out = subprocess.run(
        [
            sys.executable,
            str(ROOT / "examples" / "embed_runtime.py"),
            "--steps",
            "2048",
            "--run-dir",
            str(run_dir),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=cli_env(),
        cwd=tmp_path,  # as a user would run it: not from the repository root
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "trained 2048 env steps in parallel mode" in out.stdout, out.stdout
    assert "greedy episode return" in out.stdout
    assert list_checkpoints(run_dir)


def test_a_worker_asked_by_the_round_is_not_asked_again_by_its_registration(make_coordinator, zctx):
    """A worker that registers just as a round begins is asked by the round itself; its
    registration's own hand-over of the owed request must not ask it a second time (it would
    collect the batch twice, and its envs would run ahead of serial mode's)."""
    coord = make_coordinator(mode="parallel")
    socks = [register_local(zctx, coord, slot)[0] for slot in (0, 1)]
    coord.call(_start_sample(coord, lambda d: None), timeout=10)
    for sock in socks:
        header, _ = recv_reply(sock)
        assert header.type == MsgType.PARAMS and header.meta["sample"] == 1
    # the registration's hand-over, late (as when REGISTERED was still being sent)
    coord.call(_on_register_again(coord, b"fake-0"), timeout=10)
    with pytest.raises(AssertionError, match="no answer"):
        recv_reply(socks[0], timeout_s=0.5)


async def _on_register_again(coord, peer):
    await coord.flow.on_register(coord.workers[peer])
