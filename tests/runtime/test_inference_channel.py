"""The inference server's shared-memory channel (runtime/inference.py): real segments, real
Unix sockets, the server's own thread; the agent is a small numpy stand-in (the edge of the
unit) that records which env ids each forward pass saw."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from asyncrl.data import namedarraytuple
from asyncrl.data.buffer import SharedArrayTree
from asyncrl.runtime.inference import (
    KIND_ACT,
    KIND_VALUE,
    REQUEST,
    InferenceClient,
    InferenceServer,
    slot_example,
)
from asyncrl.runtime.protocol import ProtocolError
from tests.runtime._runtime_helpers import wait_until

Info = namedarraytuple("Info", ["value"])


class RecordingAgent:
    """action = 10 * env id + the observation's first entry; value = -env id."""

    policy_version = 7

    def __init__(self):
        self.calls: list[list[int]] = []
        self.resets: list[list[int]] = []

    def step(self, obs, env_ids):
        ids = np.asarray(env_ids)
        self.calls.append(ids.tolist())
        action = (10 * ids + obs[:, 0]).astype(np.int64)
        return action, Info(obs[:, 0].astype(np.float32))

    def value(self, obs):
        return -obs[:, 1]

    def on_episode_end(self, mask, env_ids):
        self.resets.append(np.asarray(env_ids)[np.asarray(mask)].tolist())


EXAMPLE = slot_example(np.zeros(2, np.float32), np.int64(0), Info(np.float32(0)))


@pytest.fixture
def server(tmp_path):
    servers = []

    def make(synchronous=True, wait_s=0.001, may_attach=lambda peer, ids, pid: ""):
        srv = InferenceServer(
            RecordingAgent(), lambda f, *a: f(*a), lambda a: None, lambda *a: None
        )
        path = srv.open_channel(
            str(tmp_path / f"inference{len(servers)}.sock"),
            may_attach,
            synchronous=synchronous,
            wait_s=wait_s,
        )
        servers.append(srv)
        return srv, path

    yield make
    for srv in servers:
        srv.close()


def _client(path, worker_id, groups):
    return InferenceClient(path, worker_id, [np.asarray(g, np.int64) for g in groups], EXAMPLE,
                           timeout_s=10)  # fmt: skip


def _ask(client, group, obs, kind=KIND_ACT, reset=None):
    view = client.views[group]
    view.observation[:] = obs
    if reset is not None:
        view.reset[:] = reset
    client.request(group, kind, reset=reset is not None)


def test_a_split_is_served_once_every_active_worker_asked_in_env_id_order(server):
    srv, path = server()
    a, b = _client(path, "w-a", [[4, 5]]), _client(path, "w-b", [[0, 1]])
    srv.begin_round([b"w-a", b"w-b"])
    _ask(a, 0, np.array([[1, 0], [2, 0]], np.float32))
    # a synchronous split waits for w-b: nothing is served yet
    assert not wait_until(lambda: srv.agent.calls, 0.3)
    _ask(b, 0, np.array([[3, 0], [4, 0]], np.float32), reset=np.array([False, True]))
    assert a.wait(0) == 7 and b.wait(0) == 7
    assert srv.agent.calls == [[0, 1, 4, 5]]  # one forward pass, env-id order
    assert srv.agent.resets == [[1]]
    assert a.views[0].action.tolist() == [41, 52] and b.views[0].action.tolist() == [3, 14]
    assert b.views[0].agent_info.value.tolist() == [3.0, 4.0]
    # values come back in the value field
    for c, obs in ((a, [[0, 5], [0, 6]]), (b, [[0, 1], [0, 2]])):
        _ask(c, 0, np.array(obs, np.float32), kind=KIND_VALUE)
    a.wait(0), b.wait(0)
    assert a.views[0].value.tolist() == [-5, -6] and b.views[0].value.tolist() == [-1, -2]
    # a worker whose batch is done is no longer waited for
    b.end()
    _ask(a, 0, np.zeros((2, 2), np.float32))
    a.wait(0)
    assert srv.agent.calls[-1] == [4, 5]
    assert srv.dropped == 0 and srv.partial_splits == 0
    a.close(), b.close()


def test_alternating_splits_are_served_apart(server):
    srv, path = server()
    a, b = _client(path, "w-a", [[0], [1]]), _client(path, "w-b", [[2], [3]])
    srv.begin_round([b"w-a", b"w-b"])
    for c in (a, b):
        for g in (0, 1):
            _ask(c, g, np.zeros((1, 2), np.float32))
    for c in (a, b):
        for g in (0, 1):
            c.wait(g)
    assert sorted(srv.agent.calls) == [[0, 2], [1, 3]]


def test_a_worker_that_goes_away_is_not_waited_for(server):
    srv, path = server()
    a, b = _client(path, "w-a", [[0, 1]]), _client(path, "w-b", [[2, 3]])
    srv.begin_round([b"w-a", b"w-b"])
    _ask(a, 0, np.zeros((2, 2), np.float32))
    b.close()  # its process died: the server sees its socket close
    a.wait(0)
    assert srv.agent.calls == [[0, 1]]
    a.close()


def test_an_asynchronous_split_waits_at_most_its_deadline(server):
    srv, path = server(synchronous=False, wait_s=0.05)
    a, b = _client(path, "w-a", [[0, 1]]), _client(path, "w-b", [[2, 3]])
    import time

    for c in (a, b):  # both active (served together or apart: the timing decides)
        _ask(c, 0, np.zeros((2, 2), np.float32))
    a.wait(0), b.wait(0)
    partial = srv.partial_splits
    t0 = time.monotonic()
    _ask(a, 0, np.zeros((2, 2), np.float32))  # w-b does not ask again
    a.wait(0)
    assert time.monotonic() - t0 >= 0.05  # it waited for w-b, up to the deadline
    assert srv.agent.calls[-1] == [0, 1] and srv.partial_splits == partial + 1
    a.close(), b.close()


def test_attach_is_refused_with_the_reason(server):
    srv, path = server(may_attach=lambda peer, ids, pid: "not a registered worker")
    with pytest.raises(ProtocolError, match="not a registered worker"):
        _client(path, "w-x", [[0, 1]])
    assert srv.dropped == 1


def test_the_coordinator_checks_the_attaching_process(server):
    import os

    seen = []
    srv, path = server(may_attach=lambda peer, ids, pid: seen.append((peer, ids, pid)) or "")
    c = _client(path, "w-a", [[6, 7]])
    (peer, ids, pid), = seen  # fmt: skip
    assert peer == b"w-a" and [i.tolist() for i in ids] == [[6, 7]]
    assert pid in (0, os.getpid())  # SO_PEERCRED where the platform has it
    c.close()


def test_a_segment_that_is_not_an_inference_slot_is_refused(server):
    import socket
    import struct

    import msgpack

    srv, path = server()
    Other = namedarraytuple("Other", ["observation"])
    seg = SharedArrayTree.allocate(Other(np.zeros(2, np.float32)), (2,))
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(path)
    body = msgpack.packb({"worker_id": "w-bad", "groups": [seg.handle.to_dict()]})
    s.sendall(struct.pack("<I", len(body)) + body)
    s.settimeout(10)
    answer = s.recv(4096)
    assert b"not an InferenceSlot" in answer
    assert s.recv(10) == b""  # and the connection is closed
    s.close()
    seg.release()
    assert srv.dropped == 1


def test_malformed_requests_are_dropped_and_the_server_goes_on(server):
    srv, path = server()
    a = _client(path, "w-a", [[0, 1]])
    srv.begin_round([b"w-a"])
    a._sock.sendall(REQUEST.pack(KIND_ACT, 5, 0, 1))  # no group 5
    a._sock.sendall(REQUEST.pack(99, 0, 0, 2))  # no kind 99
    assert wait_until(lambda: srv.dropped == 2, 10)
    _ask(a, 0, np.zeros((2, 2), np.float32))
    a.wait(0)
    assert srv.agent.calls == [[0, 1]]
    a.close()


def test_a_failing_forward_pass_fails_the_request_not_the_server(server):
    srv, path = server()
    a = _client(path, "w-a", [[0, 1]])
    srv.begin_round([b"w-a"])
    good = srv.agent.step
    fail = threading.Event()
    fail.set()

    def step(obs, ids):
        if fail.is_set():
            raise ValueError("boom")
        return good(obs, ids)

    srv.agent.step = step
    _ask(a, 0, np.zeros((2, 2), np.float32))
    with pytest.raises(RuntimeError, match="could not answer"):
        a.wait(0)
    fail.clear()
    _ask(a, 0, np.zeros((2, 2), np.float32))
    a.wait(0)
    assert srv.agent.calls == [[0, 1]]
    a.close()
