"""The Atari preset (DQN-paper preprocessing): observation format, raw scores in the episode
statistics while training sees clipped rewards and life-loss terminals."""

from __future__ import annotations

import numpy as np
import pytest

from asyncrl.envs import EnvSpec, VecEnv, make_vec_env

pytest.importorskip("ale_py")


def test_pong_observations_are_stacked_uint8_frames():
    with VecEnv(EnvSpec(id="ALE/Pong-v5"), 2, seed=0) as env:
        assert env.family == "atari"
        assert env.observation_space.shape == (4, 84, 84)
        assert env.observation_space.dtype == np.uint8
        obs = env.reset()
        assert obs.dtype == np.uint8 and obs.shape == (2, 4, 84, 84)
        assert env.action_space.n == 6  # minimal action set
        for _ in range(30):  # the ball is served after a short pause
            obs, *_ = env.step(np.array([0, 1]))
        assert obs.dtype == np.uint8 and obs.shape == (2, 4, 84, 84) and obs.max() > 0
        # the stack holds the last four distinct frames, oldest first
        assert not np.array_equal(obs[0, -1], obs[0, 0])


def test_training_signals_are_clipped_but_stats_are_raw_scores():
    """Step a training env and an evaluation env (same seed, same actions) side by side.

    Life-loss terminals and reward clipping change only what the learner sees, never the game,
    so both envs play the very same game: the eval env shows the raw rewards, and the training
    env's episode statistics must report exactly those raw scores over full games.
    """
    spec = EnvSpec(id="ALE/SpaceInvaders-v5")  # rewards 5..200 per alien, 3 lives
    rng = np.random.default_rng(0)
    with (
        VecEnv(spec, 1, seed=1, training=True) as train,
        VecEnv(spec, 1, seed=1, training=False) as raw,
    ):
        assert train.life_loss_terminal and train.clip_reward
        assert not raw.life_loss_terminal and not raw.clip_reward
        train.reset()
        raw.reset()
        train_rewards, raw_rewards, life_losses, raw_ends = [], [], 0, 0
        for _ in range(2000):
            a = rng.integers(train.action_space.n, size=1)
            obs_t, r_t, term_t, trunc_t, _ = train.step(a)
            obs_r, r_r, term_r, trunc_r, _ = raw.step(a)
            np.testing.assert_array_equal(obs_t, obs_r)  # the same game
            train_rewards.append(float(r_t[0]))
            raw_rewards.append(float(r_r[0]))
            game_over = bool(term_r[0] or trunc_r[0])
            if term_t[0] and not game_over:
                life_losses += 1
            assert not (game_over and not (term_t[0] or trunc_t[0]))
            if game_over:
                raw_ends += 1
                break
        assert raw_ends == 1, "a random SpaceInvaders game should end within 2000 steps"
        train_stats, raw_stats = train.pop_episode_stats(), raw.pop_episode_stats()

    train_rewards, raw_rewards = np.array(train_rewards), np.array(raw_rewards)
    assert set(np.unique(train_rewards)) <= {-1.0, 0.0, 1.0}
    np.testing.assert_array_equal(train_rewards, np.sign(raw_rewards))
    assert raw_rewards.max() > 1  # the game really pays more than 1 per alien
    # one full game in both envs, reported with its raw score and full length
    assert len(train_stats.returns) == len(raw_stats.returns) == 1
    assert train_stats.returns == raw_stats.returns == [raw_rewards.sum()]
    assert train_stats.returns[0] > train_rewards.sum()
    assert train_stats.lengths == raw_stats.lengths == [len(raw_rewards)]
    # lives were lost before the game ended: terminals for the learner, the game went on
    assert life_losses == 2


@pytest.mark.parametrize("backend", ["gymnasium", "native"])
def test_fire_reset_launches_the_ball_for_games_that_wait_for_fire(backend):
    """Breakout waits for FIRE: with fire_reset an agent that only ever sends NOOP still loses
    a life (the ball was launched); without it the game stands still for ever."""

    def lives_lost(fire_reset: bool) -> int:
        spec = EnvSpec(id="ALE/Breakout-v5", fire_reset=fire_reset, backend=backend)
        with make_vec_env(spec, 1, seed=0, training=True) as env:
            env.reset()
            losses = 0
            for _ in range(400):
                _, _, terminated, truncated, _ = env.step(np.zeros(1, np.int64))
                losses += int(terminated[0] and not truncated[0])  # life-loss terminals
            return losses

    assert lives_lost(True) >= 1
    assert lives_lost(False) == 0


def test_fire_reset_applies_only_where_action_one_is_fire():
    from asyncrl.envs.spec import fires_on_reset

    assert fires_on_reset(["NOOP", "FIRE", "RIGHT", "LEFT"])  # Breakout
    assert not fires_on_reset(["NOOP", "UP", "DOWN"])  # Freeway
    with VecEnv(EnvSpec(id="ALE/Freeway-v5"), 1, seed=0) as env:  # no FIRE: plain reset
        assert env.reset().shape == (1, 4, 84, 84)
