"""Atari (real ale-py ROMs) and MinAtar (the real package) as dm_env tasks."""

from __future__ import annotations

import dm_env
import numpy as np
import pytest

from distral.envs import atari, minatar
from distral.envs.vector import DmEnvVector

# ATARI


def test_atari_game_names_and_close_matches():
    assert atari.canonical_game("SpaceInvaders") == "space_invaders"
    assert atari.canonical_game("space invaders") == "space_invaders"
    assert atari.canonical_game("MsPacman") == "ms_pacman"
    assert atari.canonical_game("pong") == "pong"
    with pytest.raises(atari.GameError, match=r"unknown Atari game 'Pongg'; did you mean pong"):
        atari.canonical_game("Pongg")
    with pytest.raises(atari.GameError, match="ship with ale-py"):
        atari.canonical_game("zzzzzz")


def test_human_normalised_score_hand_computed():
    assert atari.human_normalised_score("Pong", 14.6) == pytest.approx(1.0)
    assert atari.human_normalised_score("Pong", -20.7) == pytest.approx(0.0)
    # Breakout: random 1.7, human 30.5 -> (16.1 - 1.7) / 28.8 = 0.5
    assert atari.human_normalised_score("breakout", 16.1) == pytest.approx(0.5)
    assert np.isnan(atari.human_normalised_score("adventure", 1.0))  # no reference score
    assert set(atari.RANDOM_SCORES) >= set(atari.HUMAN_SCORES)
    assert set(atari.HUMAN_SCORES) <= set(atari.all_games())  # names match the ROM ids


def test_atari_preprocessing_on_pong():
    env = atari.AtariEnv("Pong", seed=3)
    assert env.action_spec().num_values == 18
    ts = env.reset()
    assert ts.first() and ts.observation.shape == (84, 84, 4) and ts.observation.dtype == np.uint8
    # the first observation repeats one frame; no-op starts took 1..30 frames
    assert all(np.array_equal(ts.observation[..., 0], ts.observation[..., k]) for k in range(4))
    start = env.frame_number
    assert 1 <= start <= 30
    prev = ts.observation
    ts = env.step(0)
    assert env.frame_number == start + 4  # frame skip 4
    np.testing.assert_array_equal(ts.observation[..., :3], prev[..., 1:])  # the stack shifts
    assert env._ale.getFloat("repeat_action_probability") == pytest.approx(0.25)


def test_atari_random_pong_episode_and_determinism():
    def play(seed):
        env = atari.AtariEnv("pong", seed=seed)
        rng = np.random.default_rng(0)
        ts, total, obs_sum, steps = env.reset(), 0.0, 0, 0
        while not ts.last():
            ts = env.step(rng.integers(18))
            total += ts.reward
            obs_sum += int(ts.observation.sum())
            steps += 1
        return total, obs_sum, steps, ts.discount

    a, b, c = play(1), play(1), play(2)
    assert a == b  # same seed, same actions: the same episode
    assert a != c  # no-op starts and sticky actions follow the seed
    total, _, steps, discount = a
    assert -21 <= total <= -15  # a random player loses Pong (21 points to a few)
    assert discount == 0.0 and 500 < steps < 27_000


def test_atari_truncation_and_reset_after_last():
    env = atari.AtariEnv("breakout", seed=0, max_steps=5)
    ts = env.reset()
    for _ in range(5):
        ts = env.step(1)
    assert ts.last() and ts.discount == 1.0  # truncated, not terminated
    assert env.step(0).first()


# MINATAR


def test_minatar_names_shapes_and_shared_actions():
    assert minatar.canonical_game("SpaceInvaders") == "space_invaders"
    with pytest.raises(minatar.GameError, match="did you mean breakout"):
        minatar.canonical_game("brekout")
    for game in minatar.GAMES:
        env = minatar.MinAtarEnv(game, seed=0)
        ts = env.reset()
        assert ts.observation.shape == (10, 10, 10) and ts.observation.dtype == np.float32
        assert env.action_spec().num_values == 6
        channels = env._env.state_shape()[2]
        assert not ts.observation[..., channels:].any()  # padding channels stay zero
        assert ts.observation[..., :channels].any()


def test_minatar_episode_determinism_and_truncation():
    def play(seed, max_steps=10_000):
        env = minatar.MinAtarEnv("breakout", seed=seed, max_steps=max_steps)
        rng = np.random.default_rng(0)
        ts, total, steps = env.reset(), 0.0, 0
        while not ts.last():
            ts = env.step(rng.integers(6))
            total += ts.reward
            steps += 1
        return total, steps, ts.discount

    assert play(4) == play(4)
    total, steps, discount = play(4)
    assert discount == 0.0 and steps < 10_000 and total >= 0
    _, steps, discount = play(4, max_steps=3)
    assert (steps, discount) == (3, 1.0)  # truncated: LAST with discount 1


def test_game_envs_run_in_the_actor_vector_env():
    envs = DmEnvVector([minatar.MinAtarEnv("asterix", seed=s) for s in range(3)])
    obs = envs.reset(0)
    assert obs.shape == (3, 10, 10, 10)
    obs, reward, _, done = envs.step(np.zeros(3, np.int64))
    assert obs.shape == (3, 10, 10, 10) and reward.shape == (3,) and done.dtype == bool
    envs = DmEnvVector([atari.AtariEnv("pong", seed=s) for s in range(2)])
    assert envs.reset(0).shape == (2, 84, 84, 4)
    assert isinstance(atari.AtariEnv("pong").reset(), dm_env.TimeStep)
