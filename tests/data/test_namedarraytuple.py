"""namedarraytuple: construction, indexing, writes, pickling, repr, views and tree utilities."""

from __future__ import annotations

import copy
import itertools
import pickle
import sys

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from asyncrl.data import (
    buffer_from_example,
    is_namedarraytuple,
    namedarraytuple,
    to_numpy,
    to_torch,
    tree_equal,
    tree_leaves,
    tree_map,
)

from ._strategies import build_tree, leading_dims, random_array, tree_specs

nat_module = sys.modules["asyncrl.data.namedarraytuple"]

Step = namedarraytuple("Step", "obs reward done")
Agent = namedarraytuple("Agent", ["action", "info"])
Sample = namedarraytuple("Sample", "agent, env")

_unique = itertools.count()


class StepWithTotal(namedarraytuple("StepBase", "obs reward")):
    """A user's subclass with a method; pickles by reference to this module."""

    __slots__ = ()

    def total(self):
        return float(self.reward.sum())


def make_step(T: int = 5, B: int = 3) -> Step:
    return Step(
        obs=np.arange(T * B * 4, dtype=np.float32).reshape(T, B, 4),
        reward=np.arange(T * B, dtype=np.float64).reshape(T, B),
        done=np.zeros((T, B), dtype=bool),
    )


def make_sample(T: int = 5, B: int = 3) -> Sample:
    agent = Agent(action=np.arange(T * B, dtype=np.int64).reshape(T, B), info=None)
    return Sample(agent=agent, env=make_step(T, B))


# --- construction -------------------------------------------------------------------------------


def test_field_names_from_string_or_list_and_class_cache():
    assert Step._fields == ("obs", "reward", "done")
    assert Sample._fields == ("agent", "env")
    assert namedarraytuple("Step", ["obs", "reward", "done"]) is Step
    assert namedarraytuple("Step", "obs reward") is not Step  # other fields: other class
    step = Step(1, 2, 3)
    assert is_namedarraytuple(step) and isinstance(step, tuple)
    assert not is_namedarraytuple((1, 2, 3))
    assert step.obs == 1 and step.done == 3  # attribute access like a namedtuple
    assert Step(obs=1, reward=2, done=3).done == 3


@pytest.mark.parametrize(
    "fields", ["a get", "count", "a index", "_fields", "a a", "class", "1abc", "a-b"]
)
def test_bad_field_names_raise(fields):
    with pytest.raises(ValueError):
        namedarraytuple(f"Bad{next(_unique)}", fields)


def test_construction_needs_every_field():
    with pytest.raises(TypeError):
        Step(1, 2)


def test_nesting_and_none_leaves_are_kept():
    sample = make_sample()
    assert sample.agent.info is None
    assert isinstance(sample.env, Step)
    assert sample[2].agent.info is None
    assert len(tree_leaves(sample)) == 4


# --- reads --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "index",
    [2, -1, slice(1, 4), slice(None, None, 2), (slice(None), 0), (1, 2), np.array([0, 2, 4])],
    ids=["int", "negative", "slice", "step", "tuple-slice", "tuple-int", "fancy"],
)
def test_index_reads_apply_to_every_leaf(index):
    sample = make_sample()
    part = sample[index]
    assert type(part) is Sample and type(part.env) is Step
    assert part.agent.info is None
    for got, full in zip(tree_leaves(part), tree_leaves(sample)):
        np.testing.assert_array_equal(got, full[index])


def test_basic_slices_are_views_that_write_through():
    sample = make_sample()
    part = sample[1:3]
    part.env.obs[...] = -1.0
    assert (sample.env.obs[1:3] == -1.0).all() and (sample.env.obs[0] != -1.0).all()


def test_index_out_of_range_names_the_field():
    with pytest.raises(IndexError, match="agent"):
        make_sample(T=5)[7]


def test_boolean_mask_read():
    step = make_step(T=4, B=2)
    mask = np.array([True, False, True, False])
    part = step[mask]
    assert part.obs.shape == (2, 2, 4)
    np.testing.assert_array_equal(part.reward, step.reward[mask])


# --- writes -------------------------------------------------------------------------------------


def test_write_one_step_into_every_field():
    buf = buffer_from_example(make_sample()[0, 0], (5, 3))
    step = make_sample()[2, 1]
    buf[4, 0] = step
    assert buf.env.obs[4, 0].tolist() == step.env.obs.tolist()
    assert buf.env.reward[4, 0] == step.env.reward
    assert buf.agent.action[4, 0] == step.agent.action
    assert buf.env.obs[:4].sum() == 0 and buf.env.obs[4, 1:].sum() == 0  # nothing else touched


def test_write_a_slice_of_steps():
    src = make_sample()
    buf = buffer_from_example(src[0, 0], (5, 3))
    buf[1:3] = src[0:2]
    assert tree_equal(buf[1:3], src[0:2])
    assert buf.env.obs[0].sum() == 0 and buf.env.obs[3:].sum() == 0


@pytest.mark.parametrize("value", [0, 7, 1.5, True, np.float32(2.0), np.int64(3)])
def test_scalar_broadcasts_to_every_leaf(value):
    sample = make_sample()
    sample[1] = value
    for leaf in tree_leaves(sample):
        np.testing.assert_array_equal(leaf[1], np.asarray(value).astype(leaf.dtype))
    assert sample.agent.info is None


def test_array_broadcasts_to_every_leaf():
    step = Step(np.zeros((2, 3)), np.zeros((2, 3)), None)
    step[0] = np.array([1.0, 2.0, 3.0])
    np.testing.assert_array_equal(step.obs[0], [1, 2, 3])
    np.testing.assert_array_equal(step.reward[0], [1, 2, 3])


def test_write_plain_tuples_nested():
    sample = make_sample()
    obs = np.full(4, 9.0, dtype=np.float32)
    sample[0, 0] = ((11, None), (obs, 0.5, True))
    assert sample.agent.action[0, 0] == 11
    np.testing.assert_array_equal(sample.env.obs[0, 0], obs)
    assert sample.env.reward[0, 0] == 0.5 and sample.env.done[0, 0]


def test_write_plain_tuple_of_wrong_length_raises():
    step = make_step()
    before = step.obs.copy()
    with pytest.raises(ValueError, match="one value per field"):
        step[0] = (1.0, 2.0)
    np.testing.assert_array_equal(step.obs, before)


def test_write_none_fields_of_the_value_are_skipped():
    step = make_step()
    before = step.obs.copy()
    step[0] = Step(None, 5.0, None)
    np.testing.assert_array_equal(step.obs, before)
    assert (step.reward[0] == 5.0).all()


def test_write_into_none_leaf_is_skipped():
    agent = Agent(np.zeros(3), None)
    agent[1] = Agent(2.0, np.ones(5))
    assert agent.info is None and agent.action[1] == 2.0


def test_mismatched_fields_raise():
    step = make_step()
    other = namedarraytuple("Step", "obs reward terminated")(1, 2, 3)
    with pytest.raises(ValueError, match="fields differ"):
        step[0] = other
    with pytest.raises(ValueError, match="fields differ"):
        make_sample()[0] = Sample(Agent(1, None), Agent(2, None))


def test_same_fields_other_class_name_is_accepted():
    step = make_step()
    step[0] = namedarraytuple("OtherStep", "obs reward done")(1.0, 2.0, True)
    assert step.reward[0, 0] == 2.0


def test_structure_never_broadcasts_into_an_array_leaf():
    # numpy would silently turn the tuple into array([1, 2]) and write it.
    holder = Agent(np.zeros((3, 2)), None)
    with pytest.raises(TypeError, match="field 'action'"):
        holder[0] = Agent(Agent(1.0, 2.0), None)
    assert holder.action.sum() == 0


def test_write_shape_error_names_the_field():
    with pytest.raises(ValueError, match="field 'env'.*field 'obs'"):
        make_sample()[0, 0] = ((1, None), (np.ones(5), 0.0, False))


# --- string access and mapping-like helpers -----------------------------------------------------


def test_string_access():
    sample = make_sample()
    assert sample["env"] is sample.env
    assert sample["agent"]["info"] is None
    assert "env" in sample and "obs" not in sample
    with pytest.raises(KeyError, match="no field 'obs'"):
        sample["obs"]
    with pytest.raises(KeyError):
        sample["_fields"]  # not a field, although an attribute


def test_get_and_items():
    step = make_step()
    assert step.get("obs") is step.obs
    assert step.get("missing", 5) == 5
    assert step.get("count") is None  # a tuple method, not a field
    assert [k for k, _ in step.items()] == ["obs", "reward", "done"]
    assert step._asdict()["reward"] is step.reward
    assert step._replace(done=None).done is None


def test_equality_is_identity_and_hash_works():
    a, b = make_step(), make_step()
    assert a == a and a != b and not (a == b)
    assert len({a, b, a}) == 2


# --- pickling -----------------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_pickle_nested_round_trip(protocol):
    sample = make_sample()
    back = pickle.loads(pickle.dumps(sample, protocol=protocol))
    assert type(back) is Sample and type(back.env) is Step
    assert tree_equal(back, sample) and back.agent.info is None


def test_pickle_dynamically_created_class_and_class_itself():
    typename = f"Dynamic{next(_unique)}"
    cls = namedarraytuple(typename, "a b")
    value = cls(np.arange(3), cls(torch.ones(2), None))
    data = pickle.dumps(value)
    nat_module._CLASSES.pop((typename, ("a", "b")))  # as if unpickled in a fresh process
    back = pickle.loads(data)
    assert type(back).__name__ == typename and type(back) is not cls
    assert type(back) is namedarraytuple(typename, "a b")
    np.testing.assert_array_equal(back.a, np.arange(3))
    assert torch.equal(back.b.a, torch.ones(2)) and back.b.b is None
    assert pickle.loads(pickle.dumps(Sample)) is Sample
    assert pickle.loads(pickle.dumps(nat_module.NamedArrayTupleBase)) is (
        nat_module.NamedArrayTupleBase
    )


def test_pickle_user_subclass_keeps_its_type():
    step = StepWithTotal(np.zeros((2, 3)), np.ones(2))
    for value in (step, step[0], copy.deepcopy(step)):
        back = pickle.loads(pickle.dumps(value))
        assert type(back) is StepWithTotal and tree_equal(back, value)
    assert step[1:].total() == 1.0
    assert pickle.loads(pickle.dumps(StepWithTotal)) is StepWithTotal


def test_copy_and_deepcopy():
    step = make_step()
    shallow, deep = copy.copy(step), copy.deepcopy(step)
    assert shallow.obs is step.obs
    assert deep.obs is not step.obs and tree_equal(deep, step)


# --- repr ---------------------------------------------------------------------------------------


def test_repr_is_readable_and_short():
    sample = make_sample(T=100, B=8)
    sample = sample._replace(agent=sample.agent._replace(info=torch.zeros(100, 8, 2)))
    text = repr(sample)
    assert text.startswith("Sample(agent=Agent(action=ndarray(int64, [100, 8])")
    assert "info=Tensor(float32, [100, 8, 2], cpu)" in text
    assert "env=Step(obs=ndarray(float32, [100, 8, 4])" in text
    assert "done=ndarray(bool, [100, 8])" in text
    assert len(text) < 300  # no array values dumped
    assert repr(Step(None, 1.5, "x")) == "Step(obs=None, reward=1.5, done='x')"


# --- torch and numpy leaves ---------------------------------------------------------------------


def test_torch_leaves_read_and_write():
    step = Step(torch.zeros(4, 3), torch.zeros(4), torch.zeros(4, dtype=torch.bool))
    step[1] = Step(torch.ones(3), torch.tensor(2.0), torch.tensor(True))
    step[2:4] = 5
    assert torch.equal(step[1].obs, torch.ones(3)) and step.reward[1] == 2.0 and step.done[1]
    assert (step.obs[2:] == 5).all() and step.done[2:].all()
    assert type(step[0]) is Step and step[0].obs.shape == (3,)


def test_numpy_values_into_torch_leaves_and_back():
    torch_step = Step(torch.zeros(4, 3), torch.zeros(4), torch.zeros(4, dtype=torch.bool))
    torch_step[0] = Step(np.arange(3.0), np.float32(1.5), np.bool_(True))
    reversed_obs = np.arange(3.0)[::-1]  # negative strides
    frozen = np.arange(3.0)
    frozen.flags.writeable = False
    torch_step[1] = Step(reversed_obs, np.array(2.0), True)
    torch_step[2] = Step(frozen, 1, False)
    assert torch_step.obs[0].tolist() == [0, 1, 2] and torch_step.reward[0] == 1.5
    assert torch_step.obs[1].tolist() == [2, 1, 0] and torch_step.obs[2].tolist() == [0, 1, 2]
    assert torch_step.done[0] and torch_step.done[1]

    numpy_step = make_step(T=2, B=1)
    grad = torch.ones(1, 4, requires_grad=True)
    numpy_step[0] = Step(grad, torch.tensor([3.0]), torch.tensor([True]))
    assert numpy_step.obs[0].tolist() == [[1, 1, 1, 1]] and numpy_step.reward[0, 0] == 3.0


def test_mixed_numpy_and_torch_leaves():
    step = Step(np.zeros((3, 2)), torch.zeros(3), None)
    step[0] = Step(np.ones(2), torch.tensor(1.0), None)
    part = step[0:2]
    assert isinstance(part.obs, np.ndarray) and isinstance(part.reward, torch.Tensor)
    assert part.obs[0].sum() == 2 and part.reward[0] == 1


def test_to_torch_and_to_numpy_share_memory():
    sample = make_sample()
    torch_view = to_torch(sample)
    assert type(torch_view) is Sample and torch_view.agent.info is None
    assert isinstance(torch_view.env.obs, torch.Tensor)
    assert torch_view.env.obs.dtype == torch.float32 and torch_view.env.done.dtype == torch.bool
    torch_view[2, 1] = 7  # writes through the view are visible in the numpy buffer
    assert (sample.env.obs[2, 1] == 7).all() and sample.agent.action[2, 1] == 7
    sample.env.reward[0, 0] = -3
    assert torch_view.env.reward[0, 0] == -3

    numpy_view = to_numpy(torch_view)
    assert isinstance(numpy_view.env.obs, np.ndarray)
    assert np.shares_memory(numpy_view.env.obs, sample.env.obs)
    numpy_view.env.done[4, 2] = True
    assert torch_view.env.done[4, 2] and sample.env.done[4, 2]

    assert to_torch(torch_view).env.obs is torch_view.env.obs
    assert to_numpy(sample).env.obs is sample.env.obs
    cpu = to_torch(sample, device="cpu")
    assert cpu.env.obs.data_ptr() == torch_view.env.obs.data_ptr()


def test_to_numpy_of_tensor_requiring_grad_shares_memory():
    weight = torch.zeros(3, requires_grad=True)
    view = to_numpy(Agent(weight, None))
    view.action[0] = 4
    assert weight[0].item() == 4


# --- tree utilities -----------------------------------------------------------------------------


def test_tree_map_single_and_multiple_trees():
    sample = make_sample()
    doubled = tree_map(lambda x: x * 2, sample)
    assert type(doubled) is Sample and doubled.agent.info is None
    np.testing.assert_array_equal(doubled.env.obs, sample.env.obs * 2)
    summed = tree_map(lambda a, b: a + b, sample, doubled)
    np.testing.assert_array_equal(summed.env.reward, sample.env.reward * 3)
    assert tree_map(lambda x: x + 1, None) is None
    assert tree_map(lambda x: x + 1, np.array(1)) == 2


def test_tree_map_rejects_mismatched_trees():
    with pytest.raises(ValueError, match="does not match"):
        tree_map(lambda a, b: a, make_sample(), make_step())
    with pytest.raises(ValueError, match="does not match"):
        tree_map(lambda a, b: a, make_sample(), 1.0)


def test_tree_leaves_depth_first_without_none():
    sample = make_sample()
    leaves = tree_leaves(sample)
    expected = [sample.agent.action, sample.env.obs, sample.env.reward, sample.env.done]
    assert all(a is b for a, b in zip(leaves, expected)) and len(leaves) == 4
    assert tree_leaves(None) == [] and len(tree_leaves(np.zeros(2))) == 1


def test_tree_equal():
    a, b = make_sample(), make_sample()
    assert tree_equal(a, b) and tree_equal(a, to_torch(b))
    b.env.obs[0, 0, 0] = 99
    assert not tree_equal(a, b)
    assert not tree_equal(make_step(), make_step(T=4))  # shapes differ
    assert not tree_equal(make_step(), make_sample())  # types differ
    assert not tree_equal(make_step(), None) and tree_equal(None, None)
    assert not tree_equal(Step(None, 1, 2), Step(np.zeros(1), 1, 2))


# --- properties ---------------------------------------------------------------------------------


@st.composite
def index_for(draw, lead: tuple[int, ...]):
    """An int, a slice or a tuple of those over the leading dims."""

    def one(n):
        return st.one_of(
            st.integers(-n, n - 1),
            st.builds(
                slice,
                st.none() | st.integers(-n, n),
                st.none() | st.integers(-n, n),
                st.none() | st.integers(1, 3),
            ),
        )

    parts = [draw(one(n)) for n in lead[: draw(st.integers(1, len(lead)))]]
    return parts[0] if len(parts) == 1 else tuple(parts)


@settings(max_examples=30, deadline=None)
@given(
    spec=tree_specs(allow_none=True),
    lead=leading_dims,
    data=st.data(),
    seed=st.integers(0, 2**32 - 1),
    broadcast=st.booleans(),
    through_torch=st.booleans(),
)
def test_write_equals_writing_each_leaf(spec, lead, data, seed, broadcast, through_torch):
    """``buf[idx] = value`` does what writing each underlying array at ``idx`` does."""
    rng = np.random.default_rng(seed)
    example = build_tree(spec, rng)
    buf = buffer_from_example(example, lead)
    expected = tree_map(np.copy, buf)
    index = data.draw(index_for(lead))
    target = to_torch(buf) if through_torch and spec is not None else buf
    part = target[index] if spec is not None else None

    if spec is None:
        return
    if not is_namedarraytuple(buf):  # a bare array leaf: plain numpy semantics
        value = random_array(rng, buf.dtype, buf[index].shape)
        buf[index] = value
        expected[index] = value
        np.testing.assert_array_equal(buf, expected)
        return
    if broadcast:
        value = 1
        tree_map(lambda leaf: leaf.__setitem__(index, 1), expected)
    else:
        value = tree_map(lambda leaf: random_array(rng, leaf.dtype, tuple(leaf.shape)), buf[index])
        tree_map(lambda leaf, v: leaf.__setitem__(index, v), expected, value)
    target[index] = value
    assert tree_equal(buf, expected)
    # A basic-index read is a view (numpy scalars excepted): it sees the write.
    if all(isinstance(x, (np.ndarray, torch.Tensor)) for x in tree_leaves(part)):
        assert tree_equal(part, target[index])


@settings(max_examples=25, deadline=None)
@given(spec=tree_specs(), seed=st.integers(0, 2**32 - 1))
def test_pickle_round_trip_of_arbitrary_trees(spec, seed):
    tree = build_tree(spec, np.random.default_rng(seed), (2,))
    back = pickle.loads(pickle.dumps(tree))
    assert tree_equal(back, tree)
    assert [a.dtype for a in tree_leaves(back)] == [a.dtype for a in tree_leaves(tree)]
    assert repr(back) == repr(tree)
