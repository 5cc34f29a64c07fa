"""Native vector-env backends (asyncrl/envs/native.py) against VecEnv: the same interface, dtypes
and semantics (same-step autoreset, final_obs on truncation only, raw episode statistics, Atari
training signals), reproducible seeding, and the backend choice of ``make_vec_env``."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

from asyncrl.envs import EnvError, EnvSpec, VecEnv, make_vec_env
from asyncrl.envs.native import NativeAtari, NativeCartPole, atari_game, native_backend


def _lockstep(spec, num_envs, steps, seed=0, training=True, action_seed=0):
    """Step VecEnv and the native backend with the same actions; return both histories."""
    rng = np.random.default_rng(action_seed)
    hist = {"vec": [], "native": []}
    with (
        VecEnv(spec, num_envs, seed=seed, training=training) as vec,
        make_vec_env(spec, num_envs, seed=seed, training=training) as nat,
    ):
        assert type(nat) is not VecEnv
        hist["vec"].append(vec.reset().copy())
        hist["native"].append(nat.reset().copy())
        n = vec.action_space.n
        for _ in range(steps):
            a = rng.integers(n, size=num_envs)
            for name, env in (("vec", vec), ("native", nat)):
                obs, rew, term, trunc, final = env.step(a)
                hist[name].append((obs.copy(), rew.copy(), term.copy(), trunc.copy(), final))
        hist["vec_stats"], hist["native_stats"] = vec.pop_episode_stats(), nat.pop_episode_stats()
    return hist


def _assert_same(hist):
    assert np.array_equal(hist["vec"][0], hist["native"][0])
    for t, (v, n) in enumerate(zip(hist["vec"][1:], hist["native"][1:])):
        for x, y, what in zip(v[:4], n[:4], ("obs", "reward", "terminated", "truncated")):
            assert x.dtype == y.dtype, (t, what)
            np.testing.assert_array_equal(x, y, err_msg=f"{what} differs at step {t}")
        assert [b for b, _ in v[4]] == [b for b, _ in n[4]], f"final_obs envs differ at step {t}"
        for (_, x), (_, y) in zip(v[4], n[4]):
            assert x.dtype == y.dtype and x.shape == y.shape
            np.testing.assert_array_equal(x, y, err_msg=f"final_obs differs at step {t}")
    assert hist["vec_stats"] == hist["native_stats"]


# ------------------------------------------------------------------------------------ choice


def test_auto_picks_native_for_plain_specs_and_gymnasium_otherwise():
    assert native_backend(EnvSpec(id="CartPole-v1"))[0] is NativeCartPole
    assert native_backend(EnvSpec(id="CartPole-v1", max_episode_steps=50))[0] is NativeCartPole
    with make_vec_env(EnvSpec(id="CartPole-v1"), 2) as env:
        assert isinstance(env, NativeCartPole)
    # kwargs the native one does not model, rendering, other envs: gymnasium, silently
    fallbacks = [
        (EnvSpec(id="CartPole-v1", kwargs={"sutton_barto_reward": True}), None),
        (EnvSpec(id="CartPole-v1"), "rgb_array"),
        (EnvSpec(id="Acrobot-v1"), None),
        (EnvSpec(id="tests.envs.toy_envs:ToyEnv"), None),
        (EnvSpec(id="CartPole-v1", backend="gymnasium"), None),
    ]
    for spec, render in fallbacks:
        with make_vec_env(spec, 2, render_mode=render) as env:
            assert isinstance(env, VecEnv), spec


def test_explicit_native_without_a_native_backend_is_one_clear_error():
    with pytest.raises(EnvError, match="has no native backend"):
        make_vec_env(EnvSpec(id="Acrobot-v1", backend="native"), 2)
    with pytest.raises(EnvError, match="not supported natively"):
        make_vec_env(EnvSpec(id="CartPole-v1", kwargs={"x": 1}, backend="native"), 2)
    with pytest.raises(EnvError, match="unknown env backend 'gpu'"):
        make_vec_env(EnvSpec(id="CartPole-v1", backend="gpu"), 2)
    with pytest.raises(EnvError, match="unknown env id"):
        make_vec_env(EnvSpec(id="CartPole-v9"), 2)
    with pytest.raises(ValueError, match="num_envs"):
        make_vec_env(EnvSpec(id="CartPole-v1"), 0)


def test_backend_travels_with_the_spec():
    spec = EnvSpec(id="CartPole-v1", backend="gymnasium")
    assert EnvSpec.from_dict(spec.to_dict()).backend == "gymnasium"
    assert EnvSpec().backend == "auto"


# ---------------------------------------------------------------------------------- CartPole


def test_cartpole_dynamics_equal_gymnasium_single_env_step():
    """The same state and action give the same next state, reward and termination."""
    env = gym.make("CartPole-v1").unwrapped
    env.reset(seed=0)
    rng = np.random.default_rng(1)
    n = 2000
    states = rng.uniform([-2.4, -3, -0.21, -3], [2.4, 3, 0.21, 3], size=(n, 4))
    actions = rng.integers(2, size=n)
    nat = NativeCartPole(EnvSpec(id="CartPole-v1"), n, seed=0)
    nat.reset()
    nat._state[:] = states
    obs, reward, term, trunc, _ = nat.step(actions)
    want_obs = np.empty((n, 4), np.float32)
    want_term = np.empty(n, bool)
    for i in range(n):
        env.state, env.steps_beyond_terminated = states[i].copy(), None
        o, r, te, _, _ = env.step(int(actions[i]))
        want_obs[i], want_term[i] = o, te
        assert r == 1.0
        if not te:  # terminated envs were reset in the same step; compare the state instead
            np.testing.assert_array_equal(obs[i], o)
    assert term.tolist() == want_term.tolist() and not trunc.any()
    assert 0 < want_term.sum() < n  # both outcomes were exercised
    assert reward.dtype == np.float32 and (reward == 1.0).all()


def test_cartpole_trajectories_equal_vecenv_bit_for_bit():
    # 40-step limit: terminations, truncations (final_obs) and terminal-at-the-limit all occur
    hist = _lockstep(EnvSpec(id="CartPole-v1", max_episode_steps=40), 8, 400, seed=3)
    _assert_same(hist)
    ends = [(n[2].sum(), n[3].sum()) for n in hist["native"][1:]]
    assert sum(t for t, _ in ends) > 10 and sum(u for _, u in ends) > 5
    hist = _lockstep(EnvSpec(id="CartPole-v1"), 4, 300, seed=11, action_seed=5)
    _assert_same(hist)


def test_cartpole_random_policy_episode_lengths_match_gymnasium():
    """Independent seeds: the length distribution matches gymnasium's CartPole (mean ~22)."""

    def lengths(make, seed):
        rng = np.random.default_rng(seed + 100)
        with make(EnvSpec(id="CartPole-v1"), 32, seed=seed) as env:
            env.reset()
            out = []
            while len(out) < 2000:
                env.step(rng.integers(2, size=32))
                out += env.pop_episode_stats().lengths
        return np.array(out[:2000], float)

    nat, ref = lengths(make_vec_env, 1000), lengths(VecEnv, 2000)
    se = np.sqrt(nat.var() / len(nat) + ref.var() / len(ref))
    assert 20.5 < nat.mean() < 23.5 and abs(nat.mean() - ref.mean()) < 4 * se
    assert abs(np.median(nat) - np.median(ref)) <= 2
    assert abs(np.percentile(nat, 90) - np.percentile(ref, 90)) <= 4
    assert nat.min() >= 8


def test_cartpole_same_step_reset_truncation_and_stats():
    with make_vec_env(EnvSpec(id="CartPole-v1", max_episode_steps=3), 2, seed=0) as env:
        first = env.reset().copy()
        for _ in range(2):
            obs, reward, term, trunc, final = env.step(np.zeros(2, np.int64))
            assert not term.any() and not trunc.any() and final == []
        prev = obs.copy()
        obs, reward, term, trunc, final = env.step(np.zeros(2, np.int64))
        assert trunc.tolist() == [True, True] and not term.any()
        assert [b for b, _ in final] == [0, 1]
        for b, last in final:  # the real last observation, not the reset one
            assert last.dtype == np.float32 and last.shape == (4,)
            assert not np.array_equal(last, obs[b]) and not np.array_equal(last, prev[b])
        assert np.abs(obs).max() <= 0.05  # the next episode's first observation
        assert not np.array_equal(obs, first)  # a fresh draw, not the first reset again
        stats = env.pop_episode_stats()
        assert stats.lengths == [3, 3] and stats.returns == [3.0, 3.0]
        assert all(type(r) is float for r in stats.returns)
        assert all(type(n) is int for n in stats.lengths)
        assert env.pop_episode_stats().lengths == []


def test_cartpole_terminal_gives_no_final_obs_and_resets_in_the_same_step():
    with make_vec_env(EnvSpec(id="CartPole-v1"), 1, seed=0) as env:
        env.reset()
        steps, term = 0, [False]
        while not term[0] and steps < 200:
            obs, _, term, trunc, final = env.step(np.array([1]))  # pushing right: it falls
            steps += 1
        assert term[0] and not trunc[0] and final == []
        assert np.abs(obs).max() <= 0.05
        assert env.pop_episode_stats().lengths == [steps]


def test_cartpole_seeding_is_reproducible():
    def rollout(seed):
        rng = np.random.default_rng(7)
        with make_vec_env(EnvSpec(id="CartPole-v1"), 3, seed=seed) as env:
            out = [env.reset().copy()]
            for _ in range(100):
                obs, r, te, tr, _ = env.step(rng.integers(2, size=3))
                out += [obs.copy(), te.copy(), tr.copy()]
        return out

    a, b, c = rollout(5), rollout(5), rollout(6)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c))
    assert not np.array_equal(a[0][0], a[0][1])  # envs of one vector get distinct seeds


def test_cartpole_rejects_invalid_actions():
    with make_vec_env(EnvSpec(id="CartPole-v1"), 2) as env:
        env.reset()
        with pytest.raises(ValueError, match="outside"):
            env.step(np.array([0, 2]))
        with pytest.raises(ValueError, match="integers"):
            env.step(np.array([0.0, 1.0]))


@pytest.mark.parametrize("env_id", ["CartPole-v1", "ALE/Pong-v5"])
def test_interface_dtypes_and_shapes_match_vecenv(env_id):
    if env_id.startswith("ALE/"):
        pytest.importorskip("ale_py")
    spec = EnvSpec(id=env_id)
    with VecEnv(spec, 2, seed=0) as vec, make_vec_env(spec, 2, seed=0) as nat:
        assert type(nat) is not VecEnv
        assert nat.num_envs == 2 and nat.family == vec.family
        assert nat.observation_space == vec.observation_space
        assert nat.action_space == vec.action_space
        for x, y in ((nat.obs_example, vec.obs_example), (nat.action_example, vec.action_example)):
            assert x.dtype == y.dtype and x.shape == y.shape
        o1, o2 = nat.reset(), vec.reset()
        assert o1.dtype == o2.dtype and o1.shape == o2.shape
        a = np.zeros(2, np.int64)
        for x, y in zip(nat.step(a)[:4], vec.step(a)[:4]):
            assert x.dtype == y.dtype and x.shape == y.shape


# ------------------------------------------------------------------------------------- Atari


@pytest.fixture
def ale():
    return pytest.importorskip("ale_py")


def test_atari_ids_map_to_roms(ale):
    assert atari_game("ALE/Pong-v5") == "pong"
    assert atari_game("ALE/MsPacman-v5") == "ms_pacman"
    assert atari_game("BreakoutNoFrameskip-v4") == "breakout"
    assert native_backend(EnvSpec(id="ALE/Pong-v5"))[0] is NativeAtari
    # env kwargs the adapter does not pass on: gymnasium
    assert native_backend(EnvSpec(id="ALE/Pong-v5", kwargs={"mode": 1}))[0] is None
    with make_vec_env(EnvSpec(id="ALE/Pong-v5", kwargs={"mode": 1}), 1) as env:
        assert isinstance(env, VecEnv)


def test_atari_observations_are_stacked_uint8_frames(ale):
    with make_vec_env(EnvSpec(id="ALE/Pong-v5"), 2, seed=0) as env:
        assert isinstance(env, NativeAtari) and env.game == "pong"
        obs = env.reset()
        assert obs.dtype == np.uint8 and obs.shape == (2, 4, 84, 84)
        # a fresh episode's stack repeats its first frame, as gymnasium's FrameStack does
        assert all(np.array_equal(obs[b, i], obs[b, 3]) for b in range(2) for i in range(3))
        for _ in range(30):
            obs, *_ = env.step(np.array([0, 1]))
        assert obs.dtype == np.uint8 and obs.shape == (2, 4, 84, 84) and obs.max() > 0
        assert not np.array_equal(obs[0, -1], obs[0, 0])


def test_atari_pixels_and_training_signals_equal_vecenv(ale):
    """Without no-op starts the games are deterministic: the native backend must reproduce
    VecEnv step for step: pixels, clipped rewards, life-loss terminals, episode statistics."""
    spec = EnvSpec(id="ALE/Breakout-v5", noop_max=0)  # 5 lives, rewards 1..7
    hist = _lockstep(spec, 2, 700, training=True)
    _assert_same(hist)
    terms = sum(int(n[2].sum()) for n in hist["native"][1:])
    assert terms > len(hist["native_stats"].lengths) > 0  # life losses were signalled too


def test_atari_truncation_final_obs_equals_vecenv(ale):
    # max_episode_steps counts emulator frames (VecEnv's TimeLimit wraps the frameskip-1 env):
    # 10 frames -> 3 agent steps; the final stack still has padding to repeat
    hist = _lockstep(EnvSpec(id="ALE/Pong-v5", noop_max=0, max_episode_steps=10), 2, 12)
    _assert_same(hist)
    assert sum(len(n[4]) for n in hist["native"][1:]) == 8
    assert hist["native_stats"].lengths == [3] * 8


def test_atari_stats_are_raw_scores_while_training_rewards_are_clipped(ale):
    spec = EnvSpec(id="ALE/SpaceInvaders-v5")
    rng = np.random.default_rng(0)
    with (
        make_vec_env(spec, 1, seed=1, training=True) as train,
        make_vec_env(spec, 1, seed=1, training=False) as raw,
    ):
        assert train.life_loss_terminal and train.clip_reward
        assert not raw.life_loss_terminal and not raw.clip_reward
        train.reset(), raw.reset()
        tr, rr, life_losses = [], [], 0
        for _ in range(3000):
            a = rng.integers(train.action_space.n, size=1)
            obs_t, r_t, te_t, tu_t, _ = train.step(a)
            obs_r, r_r, te_r, tu_r, _ = raw.step(a)
            np.testing.assert_array_equal(obs_t, obs_r)  # the same game
            tr.append(float(r_t[0]))
            rr.append(float(r_r[0]))
            life_losses += bool(te_t[0] and not te_r[0])
            if te_r[0] or tu_r[0]:
                break
        stats_t, stats_r = train.pop_episode_stats(), raw.pop_episode_stats()
    assert len(stats_r.returns) == 1 and stats_t == stats_r  # raw game score in both
    np.testing.assert_array_equal(tr, np.sign(rr))
    assert max(rr) > 1 and stats_r.returns[0] == sum(rr)
    assert life_losses >= 2


def test_atari_seeding_is_reproducible(ale):
    def rollout(seed):
        rng = np.random.default_rng(3)
        with make_vec_env(EnvSpec(id="ALE/Pong-v5"), 2, seed=seed) as env:
            out = [env.reset().copy()]
            for _ in range(40):
                out.append(env.step(rng.integers(6, size=2))[0].copy())
        return out

    a, b, c = rollout(4), rollout(4), rollout(5)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c))  # no-op starts differ
