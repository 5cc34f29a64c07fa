"""The wire protocol: round trips without copies, and every defect is one ProtocolError."""

from __future__ import annotations

import pickle

import msgpack
import numpy as np
import pytest

from asyncrl.data import tree_equal
from asyncrl.runtime.protocol import (
    PROTOCOL_VERSION,
    Header,
    MsgType,
    ProtocolError,
    VersionMismatch,
    decode,
    encode,
)

from ._peers import fill, make_batch


def header(**changes) -> Header:
    h = Header(MsgType.SAMPLES, "run-7", "worker-3", seq=12, policy_version=5)
    for k, v in changes.items():
        setattr(h, k, v)
    return h


def raw_header(**changes) -> dict:
    d = header().to_wire()
    d.update(changes)
    return d


def test_round_trip_keeps_fields_and_shares_memory():
    batch = fill(make_batch(), 3)
    frames = encode(header(meta={"episodes": [1.5, 2.0]}), batch)
    assert isinstance(frames[0], bytes)
    # The array frames are the leaves themselves: nothing was copied on the way out ...
    assert all(f is leaf for f, leaf in zip(frames[1:], [batch.agent.action, *batch.env]))
    got_header, got = decode(frames)
    assert got_header == header(meta={"episodes": [1.5, 2.0]}, schema=got_header.schema)
    assert got_header.version == PROTOCOL_VERSION
    assert type(got).__name__ == "Samples" and got.env._fields == batch.env._fields
    assert tree_equal(got, batch)
    # ... nor on the way in: every leaf is a view of its frame.
    assert np.shares_memory(got.env.observation, batch.env.observation)
    assert np.shares_memory(got.agent.action, batch.agent.action)


def test_round_trip_from_bytes_frames_and_no_tree():
    batch = fill(make_batch(), 1)
    frames = [bytes(memoryview(f)) for f in encode(header(), batch)]
    _, got = decode(frames)
    assert tree_equal(got, batch)
    h, tree = decode(encode(Header(MsgType.HEARTBEAT, meta={"steps": 10})))
    assert h.type == MsgType.HEARTBEAT and h.meta == {"steps": 10} and tree is None


@pytest.mark.parametrize(
    "frames",
    [
        [b"\x00\xffgarbage\x13\x37"],
        [b""],
        [b"\xc1"],  # a byte msgpack never uses
        [b"\x92\x01"],  # truncated msgpack array
        [pickle.dumps({"asyncrl": 1, "type": 5})],  # pickles are just garbage here
        [msgpack.packb([1, 2, 3])],
        [msgpack.packb({"hello": "world"})],  # foreign map
        [msgpack.packb(raw_header()) + b"trailing"],
        [msgpack.packb(msgpack.ExtType(5, b"x"))],
        [msgpack.packb(raw_header(meta=msgpack.ExtType(1, b"code")))],
    ],
    ids=[
        "garbage",
        "empty",
        "never-used",
        "truncated",
        "pickle",
        "list",
        "foreign",
        "trailing",
        "ext",
        "ext-in-meta",
    ],  # fmt: skip
)
def test_garbage_header_is_a_protocol_error(frames):
    with pytest.raises(ProtocolError) as info:
        decode(frames)
    assert not isinstance(info.value, VersionMismatch)
    assert info.value.reason


def test_empty_message_and_non_buffers():
    for frames in ([], None, [object()], "text"):
        with pytest.raises(ProtocolError):
            decode(frames)


def test_truncated_and_miscounted_array_frames():
    frames = encode(header(), fill(make_batch(), 2))
    with pytest.raises(ProtocolError, match="frame of"):
        decode([*frames[:-1], bytes(memoryview(frames[-1]))[:-1]])  # last frame truncated
    with pytest.raises(ProtocolError, match="fewer frames"):
        decode(frames[:-1])
    with pytest.raises(ProtocolError, match="more frames"):
        decode([*frames, b"extra"])
    with pytest.raises(ProtocolError, match="no schema"):
        decode([encode(Header(MsgType.HEARTBEAT))[0], b"stray array"])
    with pytest.raises(ProtocolError):
        decode([frames[0]])  # header only: the arrays never came


def test_a_known_schema_is_still_checked_against_the_frames():
    """The second message of a layout takes the cached path; its frames are checked all the same."""
    batch = fill(make_batch(), 2)
    frames = encode(header(), batch)
    for _ in range(2):
        assert tree_equal(decode(frames)[1], batch)
    with pytest.raises(ProtocolError, match="frame of"):
        decode([*frames[:-1], bytes(memoryview(frames[-1]))[:-1]])
    with pytest.raises(ProtocolError, match="fewer frames"):
        decode(frames[:-1])
    with pytest.raises(ProtocolError, match="more frames"):
        decode([*frames, b"extra"])


def test_oversize_message_is_refused_before_parsing():
    frames = encode(header(), fill(make_batch(), 2))
    total = sum(memoryview(f).nbytes for f in frames)
    decode(frames, max_bytes=total)
    with pytest.raises(ProtocolError, match="exceeds the limit"):
        decode(frames, max_bytes=total - 1)
    with pytest.raises(ProtocolError, match="header of"):
        decode([b"\x00" * (2**20 + 1)])


def test_wrong_version_is_distinguishable():
    for version in (0, PROTOCOL_VERSION + 1, "1", True):
        frames = [msgpack.packb(raw_header(asyncrl=version))]
        with pytest.raises(VersionMismatch) as info:
            decode(frames)
        assert info.value.peer_version == version
        assert isinstance(info.value, ProtocolError)
        assert str(PROTOCOL_VERSION) in info.value.reason
    # A future version's unknown types and keys still read as a version mismatch, not garbage.
    future = raw_header(asyncrl=PROTOCOL_VERSION + 1, type=999, novelty=True)
    with pytest.raises(VersionMismatch):
        decode([msgpack.packb(future)])


@pytest.mark.parametrize(
    "changes, match",
    [
        ({"type": 999}, "unknown message type 999"),
        ({"type": "SAMPLES"}, "'type' must be an int"),
        ({"seq": -1}, "'seq'"),
        ({"seq": True}, "'seq'"),
        ({"run_id": 5}, "'run_id' must be a string"),
        ({"schema": [1, 2]}, "'schema' must be msgpack bin"),
        ({"schema": msgpack.packb([1, 2])}, "'schema' must be a map"),
        ({"schema": b"\xc1"}, "schema is not msgpack"),
        ({"meta": [1]}, "'meta' must be a map"),
        ({"extra": 1}, "unknown keys"),
        ({"slot": 1}, "come together"),
        ({"slot": -1, "shm": {"name": "asyncrl_x"}}, "'slot'"),
        ({"slot": 1, "shm": {"name": "/etc/passwd"}}, "asyncrl_"),
        ({"slot": 1, "shm": {"name": "asyncrl_x"}, "schema": msgpack.packb({"dtype": "|u1", "shape": []})}, "not both"),
    ],
)  # fmt: skip
def test_bad_header_fields(changes, match):
    with pytest.raises(ProtocolError, match=match):
        decode([msgpack.packb(raw_header(**changes)), b"\x00"])


def test_missing_keys():
    d = raw_header()
    del d["worker_id"]
    with pytest.raises(ProtocolError, match="lacks"):
        decode([msgpack.packb(d)])


@pytest.mark.parametrize(
    "schema",
    [
        {"dtype": "O", "shape": [2]},  # object arrays would unpickle-like; refused
        {"dtype": "nonsense", "shape": [2]},
        {"dtype": "|u1", "shape": [-1]},
        {"dtype": "|u1"},
        {"type": "Bad", "fields": ["a", "b"], "children": [None]},
        {"type": "not an identifier!", "fields": ["a"], "children": [None]},
        {"type": "T", "fields": ["_fields"], "children": [None]},
    ],
)
def test_malformed_schema(schema):
    with pytest.raises(ProtocolError):
        decode([msgpack.packb(raw_header(schema=msgpack.packb(schema))), b"\x00\x00"])


def test_encode_refuses_tree_with_slot():
    with pytest.raises(ValueError):
        encode(header(slot=0, shm={"name": "asyncrl_x"}), make_batch())
