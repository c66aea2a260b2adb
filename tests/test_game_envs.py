"""Atari (real ale-py ROMs) and MinAtar (the real package) as dm_env tasks."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import dm_env
import numpy as np
import pytest

from distral import rundir
from distral.envs import atari, minatar
from distral.envs.timesteps import step_timestep
from distral.envs.vector import DmEnvVector

ROOT = Path(__file__).resolve().parents[1]


def _cli(command: str, preset: str, out: Path, *args: str, sets: list[str] = ()) -> list[str]:
    """argv of `distral COMMAND experiments/PRESET --out OUT ARGS --set S ...`."""
    setting = [a for s in sets for a in ("--set", s)]
    cli = [sys.executable, "-m", "distral.cli", command, str(ROOT / "experiments" / preset)]
    return [*cli, "--out", str(out), *args, *setting]


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
    # the first observation is one frame after zeros; no-op starts took 1..30 frames
    assert not ts.observation[..., :3].any() and ts.observation[..., 3].any()
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


def test_atari_vector_env_matches_the_python_env_and_auto_resets():
    """ale-py's C++ vector env against AtariEnv on the same actions (no sticky actions, no
    no-ops): same rewards, same episode end, same frames up to the resize kernel."""
    game, steps = "breakout", 150
    vec = atari.AtariVectorEnv(game, 2, sticky_action_prob=0.0, noop_max=0, max_steps=steps)
    ref = atari.AtariEnv(game, sticky_action_prob=0.0, noop_max=0, max_steps=steps)
    assert vec.observation_spec() == ref.observation_spec()
    obs, ts = vec.reset(0), ref.reset()
    assert obs.shape == (2, 84, 84, 4) and obs.dtype == np.uint8
    assert not obs[..., :3].any()  # zeros before the first frame, as AtariEnv's
    rng, diffs, total = np.random.default_rng(0), [], 0.0
    for t in range(steps):
        action = int(rng.integers(18))
        obs, reward, discount, done = vec.step(np.array([action, action]))
        ts = ref.step(action)
        assert reward[0] == reward[1] == ts.reward, t
        total += ts.reward
        if t < steps - 1:
            assert not done.any() and not ts.last() and (discount == 1).all(), t
            diffs.append(np.abs(obs[0].astype(int) - ts.observation).mean())
    assert total > 0  # random play in Breakout scores within 150 steps (this seed: 1 point)
    assert np.mean(diffs) < 3.0  # grey levels: OpenCV area vs PIL box resize
    # The limit (max_steps x 4 frames) ended both: discount 0, a new episode's first frame.
    assert done.all() and (discount == 0).all() and ts.last()
    assert not obs[..., :3].any() and obs[..., 3].any()


def test_atari_vector_env_seeds_sticky_actions_and_checks_input():
    def frames(seed: int) -> np.ndarray:
        env = atari.AtariVectorEnv("pong", 3)  # sticky actions 0.25, no-op starts
        out = [env.reset(seed)]
        for a in [2, 3, 2, 3, 2, 3, 1, 1] * 8:
            out.append(env.step(np.full(3, a))[0])
        return np.stack(out)

    a, b, c = frames(0), frames(0), frames(1)
    np.testing.assert_array_equal(a, b)  # determinism under a seed
    assert not np.array_equal(a, c)
    assert not np.array_equal(a[:, 0], a[:, 1])  # each env has its own seed
    env = atari.AtariVectorEnv("pong", 2)
    with pytest.raises(RuntimeError, match="reset"):
        env.step(np.zeros(2))
    env.reset(0)
    with pytest.raises(ValueError, match=r"shape \(2,\)"):
        env.step(np.zeros(3))
    with pytest.raises(atari.GameError, match="did you mean pong"):
        atari.AtariVectorEnv("Pongg", 1)


# MINATAR


def test_step_timestep_game_over_beats_the_time_limit():
    obs = np.zeros(2, np.float32)
    kinds = [
        step_timestep(1.5, obs, game_over=over, t=t, max_steps=3)
        for over, t in ((False, 2), (False, 3), (True, 3), (True, 1))
    ]
    assert [(k.step_type, k.discount) for k in kinds] == [
        (dm_env.StepType.MID, 1.0),
        (dm_env.StepType.LAST, 1.0),  # truncated at the limit: bootstrap from the state
        (dm_env.StepType.LAST, 0.0),  # a game over on the last step is a termination
        (dm_env.StepType.LAST, 0.0),
    ]
    assert all(k.reward == np.float32(1.5) and k.reward.dtype == np.float32 for k in kinds)
    specs = minatar.MinAtarEnv("breakout", seed=0)  # the adapters' float32 specs
    for k in kinds:
        specs.reward_spec().validate(k.reward)
        specs.discount_spec().validate(k.discount)


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

    assert play(1) == play(1)
    total, steps, discount = play(1)
    assert discount == 0.0 and steps < 10_000
    # The same seed and actions on MinAtar's own environment: the same rewards and end.
    from minatar import Environment

    game = Environment("breakout", sticky_action_prob=0.1)
    game.seed(1)
    game.reset()
    rng = np.random.default_rng(0)
    want, want_steps, terminal = 0.0, 0, False
    while not terminal:
        reward, terminal = game.act(int(rng.integers(6)))
        want += reward
        want_steps += 1
    assert (total, steps) == (want, want_steps) and total > 0
    _, steps, discount = play(4, max_steps=3)
    assert (steps, discount) == (3, 1.0)  # truncated: LAST with discount 1


def test_game_envs_run_in_the_actor_vector_env():
    """DmEnvVector over real games against the same-seeded envs stepped one by one: same
    frames and rewards, discount 0 and a fresh episode's frame at every LAST step (the
    12-step limit forces two resets in 30 steps)."""
    seeds = (0, 1)
    envs = DmEnvVector([minatar.MinAtarEnv("asterix", seed=s, max_steps=12) for s in seeds])
    refs = [minatar.MinAtarEnv("asterix", seed=s, max_steps=12) for s in seeds]
    obs = envs.reset(0)
    np.testing.assert_array_equal(obs, [ref.reset().observation for ref in refs])
    rng, resets = np.random.default_rng(0), 0
    for _ in range(30):
        actions = rng.integers(0, 6, size=len(seeds))
        obs, reward, discount, done = envs.step(actions)
        for b, (ref, action) in enumerate(zip(refs, actions, strict=True)):
            ts = ref.step(int(action))
            assert reward[b] == ts.reward and done[b] == ts.last()
            assert discount[b] == (0.0 if ts.last() else ts.discount)
            if ts.last():
                ts, resets = ref.reset(), resets + 1
            np.testing.assert_array_equal(obs[b], ts.observation)
    assert resets == 2 * len(seeds)
    envs = DmEnvVector([atari.AtariEnv("pong", seed=s) for s in seeds])
    want = [atari.AtariEnv("pong", seed=s).reset().observation for s in seeds]
    np.testing.assert_array_equal(envs.reset(0), want)


# CONFIG, EXPERIMENT AND A DISTRIBUTED RUN


def test_game_configs_resolve_tasks_shapes_and_limits():
    from distral.config import load_config
    from distral.experiment import make_experiment

    c = load_config(None, ["env.name=minatar", "torso=minatar_cnn"])
    assert c.env.canonical_games == minatar.GAMES and c.env.step_limit == 10_000
    e = make_experiment(c)
    assert (e.num_tasks, e.obs_shape, e.network.num_actions) == (5, (10, 10, 10), 6)
    assert e.example_obs.dtype == np.float32 and np.isnan(e.optimal_returns).all()
    c = load_config(ROOT / "experiments" / "atari_4games.yaml")
    e = make_experiment(c)
    assert e.task_names == ("pong", "breakout", "space_invaders", "seaquest")
    assert (e.obs_shape, e.example_obs.dtype, e.network.num_actions) == ((84, 84, 4), np.uint8, 18)
    env = e.make_vector_env(1, 2, seed=123)
    assert isinstance(env, atari.AtariVectorEnv) and env.game == "breakout"
    assert env.reset(0).shape == (2, 84, 84, 4)
    c = load_config(ROOT / "experiments" / "minatar_5games.yaml")
    assert make_experiment(c).num_tasks == 5
    assert make_experiment(c).variant.beta == 50.0  # the preset's kl_ent_2col (BUILD_NOTES)
    a3c = load_config(ROOT / "experiments" / "minatar_5games.yaml", overrides={"variant": "a3c"})
    assert a3c.beta is None and make_experiment(a3c).variant.beta is None


@pytest.mark.parametrize(
    "args, message",
    [
        (
            ["--set", "env.games=[Pong, Breakot]"],
            "unknown Atari game 'Breakot'; did you mean breakout",
        ),
        (["--set", "env.games=[Pong, pong]"], "names a game twice"),
        (["--set", "torso=mlp"], "torso='mlp' takes vectors; atari gives images"),
        (["--set", "env.num_tasks=3"], "env.num_tasks=3 but env.games has 4 games"),
        (["--set", "env.ale_threads=0"], "env.ale_threads=0 must be >= 1"),
    ],
)
def test_game_config_errors_are_one_line_exit_2(tmp_path, args, message):
    out = tmp_path / "run"
    p = subprocess.run(
        _cli("launch", "atari_4games.yaml", out, *args),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode == 2, p.stderr
    assert message in p.stderr and len(p.stderr.strip().splitlines()) == 1, p.stderr
    assert not out.exists()


def test_train_refuses_game_environments(tmp_path):
    p = subprocess.run(
        _cli("train", "minatar_5games.yaml", tmp_path / "run"),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode == 2 and "runs with distral launch" in p.stderr, p.stderr
    assert not (tmp_path / "run").exists()


def test_distributed_run_on_two_atari_games(tmp_path):
    """Learner + an actor process (Pong) + the evaluator process + Reverb, tiny budget, end
    to end. (One game: the games' per-task columns and tables are tested with two MinAtar
    games in tests/test_launch.py; each more game here is one more process to start.)"""
    out = tmp_path / "atari"
    sets = [
        "env.games=[Pong]",
        "env.max_steps=60",
        "distributed.envs_per_actor=2",
        "distributed.batch_size=2",
        "distributed.queue_size=4",
        "log_every=5",
        "eval_episodes_per_task=1",
        "checkpoint_every=1",
    ]
    p = subprocess.run(
        _cli("launch", "atari_4games.yaml", out, "--max-learner-steps", "10", sets=sets),
        capture_output=True,
        text=True,
        timeout=540,  # below pytest-timeout's 600 s: this wait fails first, with its output
        cwd=ROOT,
    )
    assert p.returncode == 0, p.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["learner_steps"] == 10 and summary["tasks"] == ["pong"]
    assert summary["optimal_mean_return"] is None
    rows = list(csv.DictReader(open(out / "metrics.csv")))
    assert [int(r["log_step"]) for r in rows] == [1, 2]
    # 10 steps x 2 items, each an unroll of the actor's 2 environments x 20 steps
    assert int(rows[-1]["env_steps_per_task"]) == 10 * 2 * 2 * 20
    # The preset's evaluator runs in its own process: the first row holds its result if one
    # came in time (else NaN); the last row evaluates the final parameters.
    assert rows[-1]["eval_learner_step"] == "10"
    for r in rows:
        if r["eval_learner_step"] == "nan":
            assert r["eval_return"] == "nan"
            continue
        # a 60-step Pong evaluation scores between -21 and 0; its HNS follows the formula
        pong = float(r["eval_return_task_0"])
        assert -21 <= pong <= 0
        assert float(r["eval_hns_task_0"]) == pytest.approx((pong + 20.7) / (14.6 + 20.7))
        assert int(r["episodes"]) >= 1
    assert (out / "checkpoints").is_dir() and (out / "curves.png").is_file()


def test_apex_dqn_on_atari_pong_through_the_processes(tmp_path):
    """Ape-X DQN (`algorithm: apex`) on Atari: the 84x84x4 uint8 frame stacks go into its
    prioritised table as they are, the Nature CNN's dueling head has Pong's 18 actions, and
    the evaluator process plays it (real ROM, tiny budget; MinAtar's Ape-X runs are tested
    in tests/test_launch.py)."""
    out = tmp_path / "apex_atari"
    sets = [
        "algorithm=apex",
        "env.games=[Pong]",
        "env.max_steps=60",
        "distributed.envs_per_actor=2",
        "apex.min_replay_per_task=64",
        "apex.batch_per_task=8",
        "apex.replay_per_task=500",
        "apex.target_update_period=2",
        "log_every=3",
        "eval_episodes_per_task=1",
    ]
    p = subprocess.run(
        _cli("launch", "atari_4games.yaml", out, "--max-learner-steps", "6", sets=sets),
        capture_output=True,
        text=True,
        timeout=540,
        cwd=ROOT,
    )
    assert p.returncode == 0, p.stderr[-3000:]
    assert p.stdout.startswith("distral launch: apex, seed 0"), p.stdout  # not the variant
    summary = json.loads((out / "summary.json").read_text())
    assert summary["algorithm"] == "apex" and summary["tasks"] == ["pong"]
    assert summary["learner_steps"] == 6
    rows = list(csv.DictReader(open(out / "metrics.csv")))
    assert [int(r["updates"]) for r in rows] == [3, 6]
    # The IS exponent 0.4 -> 1 over the 6 steps: steps 0-2 and 3-5 average 0.5 and 0.8.
    assert [float(r["is_exponent"]) for r in rows] == pytest.approx([0.5, 0.8], abs=1e-5)
    assert all(float(r["td_abs"]) > 0 for r in rows)
    # The first sample waited for 64 transitions; 6 steps of 8 at 1 sample per insert add
    # 48, within the limiter's slack (4 steps' samples + one actor step + 2).
    assert 64 + 48 - 36 <= summary["env_steps_per_task"] <= 64 + 48 + 36
    assert rows[-1]["eval_learner_step"] == "6" and -21 <= float(rows[-1]["eval_return"]) <= 0
    loaded = rundir.load_run(out)
    assert loaded.experiment.obs_shape == (84, 84, 4)
    obs = np.zeros((1, 84, 84, 4), np.uint8)
    q = np.asarray(loaded.experiment.network.apply(loaded.params, obs, np.array([0])))
    assert q.shape == (1, 18) and np.all(np.isfinite(q))


def test_ctrl_c_during_a_long_game_evaluation_stops_within_10_s(tmp_path):
    """MinAtar evaluations take seconds (Freeway: 2,500 steps an episode) and run in the
    learner: Ctrl-C in the middle of one still stops the run within 10 s, with a final
    checkpoint and a summary whose return is the last finished evaluation's."""
    import os
    import signal
    import time

    out = tmp_path / "run"
    sets = [
        "env.games=[freeway]",
        "distributed.envs_per_actor=4",
        "distributed.batch_size=2",
        "distributed.queue_size=4",
        "log_every=1",  # an evaluation after every learner step
        "eval_episodes_per_task=8",
        "checkpoint_every=1",
    ]
    log = tmp_path / "stderr.txt"  # a file, not a pipe: a chatty child can never block on it
    proc = subprocess.Popen(
        _cli("launch", "minatar_5games.yaml", out, sets=sets),
        stdout=subprocess.DEVNULL,
        stderr=log.open("w"),
        text=True,
        cwd=ROOT,
        start_new_session=True,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="1"),
    )
    try:
        metrics = out / "metrics.csv"
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and proc.poll() is None:
            if metrics.is_file() and len(metrics.read_text().splitlines()) >= 2:
                break  # a first row: the next evaluation has started or is about to
            time.sleep(0.2)
        assert proc.poll() is None, log.read_text()[-3000:]
        time.sleep(1.0)
        t0 = time.monotonic()
        os.killpg(proc.pid, signal.SIGINT)
        code = proc.wait(timeout=60)
        stop_seconds = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    stderr = log.read_text()
    assert code == 130, stderr[-3000:]
    assert stop_seconds < 10.0
    assert "did not stop in time" not in stderr
    rows = list(csv.DictReader(open(metrics)))
    evaluated = [r for r in rows if r["eval_return"] != "nan"]
    assert evaluated  # (the row of the stop, if any, has no evaluation: NaN)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["final_mean_return"] == pytest.approx(float(evaluated[-1]["eval_return"]))
    assert summary["learner_steps"] == int(rows[-1]["updates"])
    assert any((out / "checkpoints").iterdir())
