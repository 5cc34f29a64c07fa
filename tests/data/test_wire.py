"""wire: flatten/unflatten without copies, and refusal of every malformed input."""

from __future__ import annotations

import copy

import msgpack
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from asyncrl.data import (
    WireError,
    example_schema,
    flatten,
    namedarraytuple,
    tree_equal,
    tree_leaves,
    unflatten,
)

from ._strategies import trees

Step = namedarraytuple("Step", "obs reward done")
Agent = namedarraytuple("Agent", "action info")
Sample = namedarraytuple("Sample", "agent env")


def make_sample() -> Sample:
    return Sample(
        agent=Agent(action=np.arange(6, dtype=np.int64).reshape(3, 2), info=None),
        env=Step(
            obs=np.arange(3 * 2 * 4, dtype=np.float32).reshape(3, 2, 4),
            reward=np.linspace(0, 1, 6).reshape(3, 2),
            done=np.array([[True, False]] * 3),
        ),
    )


def as_bytes(buffers):
    return [bytes(memoryview(b)) for b in buffers]


# --- flatten ------------------------------------------------------------------------------------


def test_flatten_contiguous_leaves_without_copy():
    sample = make_sample()
    schema, buffers = flatten(sample)
    assert schema == example_schema(sample)
    assert len(buffers) == 4  # None leaves send no frame
    for buf, leaf in zip(buffers, tree_leaves(sample)):
        assert np.shares_memory(buf, leaf)


def test_flatten_copies_non_contiguous_leaves_once():
    sample = make_sample()
    strided = sample[:, 0]  # every leaf is a strided view
    schema, buffers = flatten(strided)
    for buf, leaf in zip(buffers, tree_leaves(strided)):
        assert buf.flags.c_contiguous and not np.shares_memory(buf, leaf)
        np.testing.assert_array_equal(buf, leaf)
    fortran = np.asfortranarray(np.arange(6.0).reshape(2, 3))
    _, (buf,) = flatten(fortran)
    assert buf.flags.c_contiguous and tree_equal(unflatten(*flatten(fortran)), fortran)


def test_flatten_keeps_zero_d_leaves_zero_d():
    schema, buffers = flatten(Agent(np.float32(1.5), np.array(3)))
    assert [b.shape for b in buffers] == [(), ()]
    assert schema["children"][0] == {"dtype": "<f4", "shape": []}


def test_flatten_torch_leaves_without_copy():
    tree = Agent(torch.arange(6.0).reshape(2, 3), torch.ones(2, requires_grad=True))
    schema, buffers = flatten(tree)
    assert schema["children"][0] == {"dtype": "<f4", "shape": [2, 3]}
    assert buffers[0].ctypes.data == tree.action.data_ptr()
    assert buffers[1].ctypes.data == tree.info.data_ptr()
    back = unflatten(schema, as_bytes(buffers))
    assert tree_equal(back, tree) and isinstance(back.action, np.ndarray)
    transposed = torch.arange(6.0).reshape(2, 3).t()  # non-contiguous tensor: copied
    _, (buf,) = flatten(transposed)
    np.testing.assert_array_equal(buf, transposed.numpy())


def test_flatten_refuses_object_leaves():
    with pytest.raises(WireError, match="object"):
        flatten(Agent(np.array([{"a": 1}], dtype=object), None))


def test_flatten_of_none_and_bare_arrays():
    assert flatten(None) == (None, [])
    assert unflatten(None, []) is None
    schema, buffers = flatten(np.arange(3))
    np.testing.assert_array_equal(unflatten(schema, buffers), np.arange(3))


# --- unflatten ----------------------------------------------------------------------------------


def test_unflatten_views_the_frames_unless_copy():
    sample = make_sample()
    schema, buffers = flatten(sample)
    back = unflatten(schema, buffers)
    assert type(back) is Sample and type(back.env) is Step and back.agent.info is None
    assert tree_equal(back, sample)
    for got, frame in zip(tree_leaves(back), buffers):
        assert np.shares_memory(got, frame)
    copied = unflatten(schema, buffers, copy=True)
    assert tree_equal(copied, sample)
    for got, frame in zip(tree_leaves(copied), buffers):
        assert not np.shares_memory(got, frame)


def test_unflatten_from_bytes_frames_through_msgpack():
    sample = make_sample()
    schema, buffers = flatten(sample)
    frames = as_bytes(buffers)
    header = msgpack.unpackb(msgpack.packb(schema))
    back = unflatten(header, frames)
    assert tree_equal(back, sample)
    assert [a.dtype for a in tree_leaves(back)] == [a.dtype for a in tree_leaves(sample)]
    assert not back.env.obs.flags.writeable  # bytes are immutable: views are read-only
    assert unflatten(header, frames, copy=True).env.obs.flags.writeable


def test_unflatten_from_writable_frames_shares_them():
    frames = [bytearray(b) for b in as_bytes(flatten(make_sample())[1])]
    back = unflatten(example_schema(make_sample()), frames)
    back.env.reward[0, 0] = 42.0
    assert np.frombuffer(frames[2], dtype=np.float64)[0] == 42.0
    memoryviews = [memoryview(f) for f in frames]
    assert tree_equal(unflatten(example_schema(make_sample()), memoryviews), back)


def test_zero_sized_leaves_round_trip():
    tree = Agent(np.zeros((0, 3), np.float32), np.zeros((2, 0), np.int8))
    back = unflatten(*flatten(tree))
    assert back.action.shape == (0, 3) and back.info.shape == (2, 0)
    assert unflatten(example_schema(tree), [b"", b""]).action.dtype == np.float32


def test_big_endian_and_raw_byte_leaves_round_trip():
    big = np.arange(4, dtype=">i4")
    blobs = np.frombuffer(b"abcdefgh", dtype="V4")
    back = unflatten(*flatten(Agent(big, blobs)))
    assert back.action.dtype == big.dtype and back.action.tolist() == [0, 1, 2, 3]
    assert back.info.dtype == np.dtype("V4") and back.info.tobytes() == b"abcdefgh"


def test_flatten_refuses_structured_leaves():
    # Their field names would not survive the schema; a namedarraytuple is the structure here.
    record = np.zeros(2, dtype=[("x", "<f4"), ("y", "u1")])
    with pytest.raises(WireError, match="structured"):
        flatten(Agent(record, None))


# --- malformed input ----------------------------------------------------------------------------


def good_schema():
    return example_schema(make_sample())


def good_frames():
    return as_bytes(flatten(make_sample())[1])


def test_wrong_frame_count_raises():
    schema, frames = good_schema(), good_frames()
    with pytest.raises(WireError, match="fewer frames"):
        unflatten(schema, frames[:-1])
    with pytest.raises(WireError, match="more frames"):
        unflatten(schema, frames + [b""])
    with pytest.raises(WireError, match="more frames"):
        unflatten(schema, frames + [None])
    with pytest.raises(WireError, match="more frames"):
        unflatten(None, [b"x"])


@pytest.mark.parametrize("delta", [-1, 1, -8])
def test_wrong_frame_size_raises(delta):
    frames = good_frames()
    frames[1] = frames[1][:delta] if delta < 0 else frames[1] + b"\0" * delta
    with pytest.raises(WireError, match="bytes, schema expects"):
        unflatten(good_schema(), frames)


@pytest.mark.parametrize(
    "frame",
    [None, 7, "a string", np.zeros((4, 4))[:, ::2], object()],
    ids=["none", "int", "str", "non-contiguous", "object"],
)
def test_frames_that_are_not_contiguous_buffers_raise(frame):
    schema = {"dtype": "<f8", "shape": [4, 2]}
    with pytest.raises(WireError):
        unflatten(schema, [frame])


def _with(path, value):
    """good_schema() with the node at ``path`` (keys/indices) replaced by ``value``."""
    schema = copy.deepcopy(good_schema())
    node = schema
    for key in path[:-1]:
        node = node[key]
    if value is _DELETE:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return schema


_DELETE = object()
_OBS = ("children", 1, "children", 0)  # the obs leaf of the env Step

MALFORMED = {
    "node-list": ["dtype", "<f4"],
    "node-str": "Sample",
    "node-int": 3,
    "child-list": _with(("children", 0), [1, 2]),
    "fields-tuple": _with(("fields",), ("agent", "env")),
    "fields-dict": _with(("fields",), {"agent": 0, "env": 1}),
    "fields-str": _with(("fields",), "agent env"),
    "children-dict": _with(("children",), {"a": None}),
    "children-missing": _with(("children",), _DELETE),
    "fields-length": _with(("fields",), ["agent"]),
    "field-int": _with(("fields",), ["agent", 3]),
    "field-invalid": _with(("fields",), ["agent", "not valid"]),
    "field-keyword": _with(("fields",), ["agent", "class"]),
    "field-reserved": _with(("fields",), ["agent", "count"]),
    "field-underscore": _with(("fields",), ["agent", "_env"]),
    "fields-duplicate": _with(("fields",), ["env", "env"]),
    "type-int": _with(("type",), 5),
    "type-invalid": _with(("type",), "not a name"),
    "dtype-missing": _with((*_OBS, "dtype"), _DELETE),
    "dtype-none": _with((*_OBS, "dtype"), None),
    "dtype-int": _with((*_OBS, "dtype"), 4),
    "dtype-list": _with((*_OBS, "dtype"), [["x", "<f4"]]),
    "dtype-unknown": _with((*_OBS, "dtype"), "float99"),
    "dtype-object": _with((*_OBS, "dtype"), "|O"),
    "dtype-object-name": _with((*_OBS, "dtype"), "object"),
    "dtype-structured-object": _with((*_OBS, "dtype"), "f4,O"),
    "dtype-empty-string": _with((*_OBS, "dtype"), "U"),
    "dtype-zero-bytes": _with((*_OBS, "dtype"), "S0"),
    "dtype-subarray": _with((*_OBS, "dtype"), "(2,)f4"),
    "dtype-structured": _with((*_OBS, "dtype"), "f4,u1"),
    "shape-missing": _with((*_OBS, "shape"), _DELETE),
    "shape-negative": _with((*_OBS, "shape"), [3, -2, -4]),
    "shape-string": _with((*_OBS, "shape"), "324"),
    "shape-int": _with((*_OBS, "shape"), 24),
    "shape-tuple": _with((*_OBS, "shape"), (3, 2, 4)),
    "shape-float": _with((*_OBS, "shape"), [3, 2, 4.0]),
    "shape-inf": _with((*_OBS, "shape"), [float("inf")]),
    "shape-bool": _with((*_OBS, "shape"), [3, 2, True]),
    "shape-none": _with((*_OBS, "shape"), [3, None, 4]),
    "shape-huge": _with((*_OBS, "shape"), [2**62, 2**62, 4]),
    "shape-overflowing-int64": _with((*_OBS, "shape"), [2**40, 2**40, 0 + 2**64]),
}


@pytest.mark.parametrize("schema", list(MALFORMED.values()), ids=list(MALFORMED))
def test_malformed_schema_raises_wire_error(schema):
    with pytest.raises(WireError):
        unflatten(schema, good_frames())


def test_deeply_nested_schema_raises_wire_error():
    schema = {"dtype": "<f4", "shape": [1]}
    for _ in range(2_000):  # deeper than Python's recursion limit
        schema = {"type": "Deep", "fields": ["x"], "children": [schema]}
    with pytest.raises(WireError, match="deeper"):
        unflatten(schema, [b"\0" * 4])


def test_wire_error_messages_stay_short():
    with pytest.raises(WireError) as info:
        unflatten({"dtype": "<f4", "shape": ["x"] * 100_000}, [b""])
    assert len(str(info.value)) < 200
    with pytest.raises(WireError) as info:
        unflatten({"dtype": "f" * 100_000, "shape": [1]}, [b""])
    assert len(str(info.value)) < 400


def test_wire_error_is_a_value_error():
    assert issubclass(WireError, ValueError)


# --- properties ---------------------------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(tree=trees)
def test_round_trip_of_arbitrary_trees(tree):
    schema, buffers = flatten(tree)
    for buf, leaf in zip(buffers, tree_leaves(tree)):
        assert np.shares_memory(buf, leaf) or buf.size == 0  # generated leaves are contiguous
    header = msgpack.unpackb(msgpack.packb(schema))
    for back in (unflatten(header, as_bytes(buffers)), unflatten(schema, buffers, copy=True)):
        assert tree_equal(back, tree)
        assert type(back) is type(tree) or tree is None
        assert [(a.dtype, a.shape) for a in tree_leaves(back)] == [
            (a.dtype, a.shape) for a in tree_leaves(tree)
        ]
        assert repr(back) == repr(tree)  # same structure, None leaves included


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats()
    | st.sampled_from(["<f4", "|b1", "O", "x", "obs", "fields", "", "(2,)i1", "S0"]),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(
            st.sampled_from(["type", "fields", "children", "dtype", "shape", "other"]),
            inner,
            max_size=4,
        )
    ),
    max_leaves=12,
)


@settings(max_examples=100, deadline=None)
@given(
    schema=json_values,
    frames=st.lists(st.binary(max_size=16) | st.none() | st.integers(), max_size=4),
)
def test_unflatten_of_arbitrary_data_raises_only_wire_error(schema, frames):
    """Whatever a peer sends, unflatten returns a tree or raises WireError, nothing else."""
    try:
        unflatten(schema, frames)
    except WireError:
        pass
