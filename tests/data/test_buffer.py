"""buffer_from_example, in ordinary and in shared memory, across processes."""

from __future__ import annotations

import gc
import json
import multiprocessing
import os
import signal
import subprocess
import sys
import textwrap
import time

import msgpack
import numpy as np
import pytest
import torch

from asyncrl.data import (
    SharedArrayTree,
    SharedHandle,
    attach_shared,
    buffer_from_example,
    buffer_from_schema,
    example_schema,
    namedarraytuple,
    release_shared,
    shared_handle,
    to_torch,
    tree_equal,
    tree_leaves,
)

from . import _children
from .conftest import shm_exists

buffer_module = sys.modules["asyncrl.data.buffer"]

Step = namedarraytuple("Step", "obs reward terminated truncated")
Agent = namedarraytuple("Agent", "action info")
Sample = namedarraytuple("Sample", "agent env")


def numpy_example() -> Sample:
    return Sample(
        agent=Agent(action=np.int64(0), info=None),
        env=Step(
            obs=np.zeros((4, 2), dtype=np.uint8),
            reward=np.float32(0),
            terminated=np.bool_(False),
            truncated=np.bool_(False),
        ),
    )


# --- ordinary memory ----------------------------------------------------------------------------


def test_from_numpy_example():
    buf = buffer_from_example(numpy_example(), (5, 3))
    assert type(buf) is Sample and type(buf.env) is Step and buf.agent.info is None
    assert buf.env.obs.shape == (5, 3, 4, 2) and buf.env.obs.dtype == np.uint8
    assert buf.env.reward.shape == (5, 3) and buf.env.reward.dtype == np.float32
    assert buf.env.terminated.dtype == np.bool_ and buf.agent.action.dtype == np.int64
    assert all((leaf == 0).all() for leaf in tree_leaves(buf))
    assert len({id(leaf) for leaf in tree_leaves(buf)}) == 5


@pytest.mark.parametrize(
    "tensor_dtype, numpy_dtype",
    [
        (torch.float32, np.float32),
        (torch.float64, np.float64),
        (torch.float16, np.float16),
        (torch.int64, np.int64),
        (torch.int32, np.int32),
        (torch.uint8, np.uint8),
        (torch.int8, np.int8),
        (torch.bool, np.bool_),
        (torch.complex64, np.complex64),
    ],
)
def test_from_torch_example(tensor_dtype, numpy_dtype):
    example = Agent(torch.zeros(3, 2, dtype=tensor_dtype), None)
    buf = buffer_from_example(example, 4)
    assert isinstance(buf.action, np.ndarray)
    assert buf.action.shape == (4, 3, 2) and buf.action.dtype == numpy_dtype
    assert to_torch(buf).action.dtype == tensor_dtype


def test_from_torch_example_without_numpy_dtype_names_the_fix():
    with pytest.raises(TypeError, match="bfloat16"):
        buffer_from_example(Agent(torch.zeros(2, dtype=torch.bfloat16), None), 3)


def test_from_python_scalars_and_lists():
    example = Step(obs=[1.0, 2.0], reward=1.0, terminated=True, truncated=3)
    buf = buffer_from_example(example, (2, 2))
    assert buf.obs.shape == (2, 2, 2) and buf.obs.dtype == np.float64
    assert buf.reward.shape == (2, 2) and buf.reward.dtype == np.float64
    assert buf.terminated.dtype == np.bool_ and buf.truncated.dtype == np.int64


def test_structured_example_leaves_are_refused():
    # dtype.str would silently turn the record into raw "|V5" bytes.
    record = np.zeros(2, dtype=[("x", "<f4"), ("y", "u1")])
    with pytest.raises(TypeError, match="namedarraytuple"):
        buffer_from_example(Agent(record, None), 3)


def test_leading_dims_forms():
    example = Agent(np.zeros(3, np.float32), None)
    assert buffer_from_example(example).action.shape == (3,)
    assert buffer_from_example(example, 7).action.shape == (7, 3)
    assert buffer_from_example(example, np.int64(2)).action.shape == (2, 3)
    assert buffer_from_example(example, [2, 0]).action.shape == (2, 0, 3)
    assert buffer_from_example(np.zeros(2), 3).shape == (3, 2)  # a bare array is a tree too
    assert buffer_from_example(None, 3) is None


@pytest.mark.parametrize("leading_dims", [-1, (2, -3), (2.0,), (True,), ("4",)])
@pytest.mark.parametrize("shared", [False, True])
def test_bad_leading_dims_raise_before_allocating(leading_dims, shared, shm_names):
    with pytest.raises(ValueError, match="leading_dims"):
        buffer_from_example(numpy_example(), leading_dims, shared=shared)
    assert shm_names == []


def test_schema_is_plain_data_and_rebuilds_the_buffer():
    schema = example_schema(numpy_example())
    assert json.loads(json.dumps(schema)) == schema
    assert msgpack.unpackb(msgpack.packb(schema)) == schema
    rebuilt = buffer_from_schema(msgpack.unpackb(msgpack.packb(schema)), (5, 3))
    assert tree_equal(rebuilt, buffer_from_example(numpy_example(), (5, 3)))
    assert [a.dtype for a in tree_leaves(rebuilt)] == [np.int64, np.uint8, np.float32, bool, bool]


# --- shared memory, one process -----------------------------------------------------------------


def test_shared_buffer_layout(shm_names):
    buf = buffer_from_example(numpy_example(), (5, 3), shared=True)
    try:
        assert shm_exists(shm_names[0]) and shm_names[0].startswith("asyncrl_")
        assert tree_equal(buf, buffer_from_example(numpy_example(), (5, 3)))
        leaves = tree_leaves(buf)
        assert all(leaf.ctypes.data % 64 == 0 for leaf in leaves)  # aligned leaves
        assert all(leaf.flags.writeable and leaf.flags.c_contiguous for leaf in leaves)
        for a, b in zip(leaves, leaves[1:]):
            assert not np.shares_memory(a, b)
        buf[2, 1] = 1
        assert sum(int(leaf.sum()) for leaf in leaves) == 2 * 4 + 4
    finally:
        release_shared(buf)
    assert not shm_exists(shm_names[0])


def test_handle_round_trips_as_plain_data(shm_names):
    buf = buffer_from_example(numpy_example(), (5, 3), shared=True)
    try:
        handle = shared_handle(buf)
        assert isinstance(handle, SharedHandle) and handle.leading_dims == (5, 3)
        as_dict = msgpack.unpackb(msgpack.packb(handle.to_dict()))
        assert SharedHandle.from_dict(as_dict) == handle
        with pytest.raises(ValueError, match="not a shared buffer"):
            shared_handle(buf[0])  # a slice has no handle
        with pytest.raises(ValueError, match="not a shared buffer"):
            shared_handle(buffer_from_example(numpy_example(), 2))
    finally:
        release_shared(buf)


def test_attach_in_same_process_shares_memory(shm_names):
    buf = buffer_from_example(numpy_example(), (5, 3), shared=True)
    attached = attach_shared(shared_handle(buf).to_dict())
    try:
        assert shared_handle(attached) == shared_handle(buf)
        attached.tree.env.obs[1, 2] = 9
        assert (buf.env.obs[1, 2] == 9).all()
        buf.agent.action[...] = 5
        assert (attached.tree.agent.action == 5).all()
        assert attached.tree.agent.info is None
    finally:
        attached.release()
        assert shm_exists(shm_names[0])  # detaching does not unlink
        release_shared(buf)
    assert not shm_exists(shm_names[0])


def test_release_is_idempotent_and_arrays_stay_valid(shm_names):
    buf = buffer_from_example(numpy_example(), (5, 3), shared=True)
    torch_view = to_torch(buf)
    release_shared(buf)
    release_shared(buf)
    assert not shm_exists(shm_names[0])
    # Arrays kept after release still point at mapped memory (this used to segfault).
    buf.env.obs[...] = 3
    assert torch_view.env.obs.sum().item() == 3 * buf.env.obs.size
    del buf, torch_view
    gc.collect()
    buffer_module._close_unused()
    pending = [shm.name for shm in buffer_module._PENDING_CLOSE]
    assert shm_names[0] not in pending  # the mapping is closed once no array views it


def test_zero_sized_shared_buffer(shm_names):
    buf = buffer_from_example(numpy_example(), (0, 3), shared=True)
    assert buf.env.obs.shape == (0, 3, 4, 2)
    release_shared(buf)


def test_object_dtype_cannot_be_shared(shm_names):
    with pytest.raises(TypeError, match="fixed-size"):
        buffer_from_example(Agent(np.array(["a", None], dtype=object), None), 2, shared=True)
    assert shm_names == []


def test_attach_with_a_foreign_schema_fails_cleanly(shm_names):
    buf = buffer_from_example(Agent(np.zeros(2, np.float32), None), 2, shared=True)
    try:
        handle = shared_handle(buf)
        too_big = SharedHandle(handle.name, example_schema(np.zeros(1000)), (2,))
        with pytest.raises(ValueError, match="does not belong"):
            attach_shared(too_big)
        with pytest.raises(FileNotFoundError):
            attach_shared(SharedHandle("asyncrl_does_not_exist", handle.schema, (2,)))
    finally:
        release_shared(buf)


def test_owner_garbage_collected_releases(shm_names):
    owner = SharedArrayTree.allocate(numpy_example(), (3,))
    owner.tree.env.obs[...] = 1
    name = owner.handle.name
    assert shm_exists(name)
    del owner
    gc.collect()
    assert not shm_exists(name)


def test_owner_release_keeps_other_owners(shm_names):
    first = buffer_from_example(numpy_example(), 2, shared=True)
    second = buffer_from_example(numpy_example(), 2, shared=True)
    release_shared(first)
    assert not shm_exists(shm_names[0]) and shm_exists(shm_names[1])
    release_shared(second)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_forked_copy_of_owner_does_not_unlink(shm_names):
    buf = buffer_from_example(numpy_example(), 2, shared=True)
    pid = os.fork()
    if pid == 0:  # child: release everything it inherited, as its exit handlers would
        try:
            buffer_module._release_all()
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    assert shm_exists(shm_names[0])
    release_shared(buf)


# --- shared memory, across processes ------------------------------------------------------------


def test_spawned_child_attaches_and_writes(shm_names):
    ctx = multiprocessing.get_context("spawn")
    buf = buffer_from_example(numpy_example(), (4, 2), shared=True)
    other = buffer_from_example(Agent(np.zeros(3, np.float32), None), 5, shared=True)
    step = buffer_from_example(numpy_example())
    step.env.obs[...] = np.arange(8).reshape(4, 2)
    step.env.reward[...] = 1.5
    step.agent.action[...] = 6
    ready = ctx.Queue()
    child = ctx.Process(
        target=_children.write_through_handles,
        args=(shared_handle(buf), shared_handle(other).to_dict(), step, ready),
    )
    child.start()
    try:
        status, obs = ready.get(timeout=60)
        child.join(timeout=30)
        assert child.exitcode == 0 and status == "ok"
        assert obs == np.arange(8).reshape(4, 2).tolist()  # the tree pickled into the child
        assert tree_equal(buf[1, 0], step) and tree_equal(buf[1, 1], step)
        assert (buf.env.reward[2] == 42.0).all() and buf.env.reward[0, 0] == 0
        assert (other.action == 3).all()
        # The child's exit did not unlink the parent's segments.
        assert shm_exists(shm_names[0]) and shm_exists(shm_names[1])
        again = attach_shared(shared_handle(buf))
        assert tree_equal(again.tree, buf)
        again.release()
    finally:
        if child.is_alive():
            child.kill()
        release_shared(buf)
        release_shared(other)
    assert not any(shm_exists(n) for n in shm_names)


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
def test_sigkilled_child_leaves_parent_segment_intact(shm_names):
    ctx = multiprocessing.get_context("spawn")
    buf = buffer_from_example(Agent(np.zeros(3, np.float32), None), 4, shared=True)
    ready = ctx.Queue()
    child = ctx.Process(
        target=_children.attach_and_hang, args=(shared_handle(buf).to_dict(), ready)
    )
    child.start()
    try:
        assert ready.get(timeout=60) == "attached"
        os.kill(child.pid, signal.SIGKILL)
        child.join(timeout=30)
        assert child.exitcode == -signal.SIGKILL
        assert shm_exists(shm_names[0]) and (buf.action == 7).all()
        buf.action[0] = 1
        assert buf.action[0, 0] == 1
    finally:
        if child.is_alive():
            child.kill()
        release_shared(buf)
    assert not shm_exists(shm_names[0])


# --- whole processes: what stays in /dev/shm after exit -----------------------------------------

_EXIT_WITHOUT_RELEASE = textwrap.dedent(
    """
    import gc, sys
    import numpy as np
    from asyncrl.data import (SharedArrayTree, attach_shared, buffer_from_example,
                              namedarraytuple, release_shared, shared_handle)
    Step = namedarraytuple("Step", "obs reward")
    example = Step(np.zeros((3, 2), np.float32), 0.0)
    kept = buffer_from_example(example, (8, 4), shared=True)
    dropped = buffer_from_example(example, 2, shared=True)
    released = buffer_from_example(example, 2, shared=True)
    owner = SharedArrayTree.allocate(example, 3)
    names = [shared_handle(b).name for b in (kept, dropped, released)] + [owner.handle.name]
    attached = attach_shared(shared_handle(kept).to_dict())
    attached_tree = attached.tree
    release_shared(released)
    released.obs[...] = 1.0  # arrays of a released buffer stay valid
    attached_tree.obs[...] = 2.0
    del dropped
    gc.collect()
    print(" ".join(names), flush=True)
    if sys.argv[1] == "kill":
        import os, signal
        os.kill(os.getpid(), signal.SIGKILL)
    """
)


def _run_and_collect_names(mode: str) -> tuple[subprocess.CompletedProcess, list[str]]:
    result = subprocess.run(
        [sys.executable, "-c", _EXIT_WITHOUT_RELEASE, mode],
        capture_output=True,
        text=True,
        timeout=120,
    )
    return result, result.stdout.split()


@pytest.mark.skipif(not os.path.isdir("/dev/shm"), reason="needs /dev/shm")
def test_process_exiting_without_release_leaves_nothing():
    result, names = _run_and_collect_names("exit")
    assert result.returncode == 0, result.stderr
    assert len(names) == 4 and all(n.startswith("asyncrl_") for n in names)
    assert not [n for n in names if shm_exists(n)]
    assert "Exception ignored" not in result.stderr and "leaked" not in result.stderr


@pytest.mark.skipif(not os.path.isdir("/dev/shm"), reason="needs /dev/shm")
def test_process_sigkilled_leaves_nothing():
    """The owner's resource tracker unlinks what a killed owner could not."""
    result, names = _run_and_collect_names("kill")
    assert result.returncode == -signal.SIGKILL, result.stderr
    assert len(names) == 4
    deadline = time.monotonic() + 10
    while any(shm_exists(n) for n in names) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not [n for n in names if shm_exists(n)]
