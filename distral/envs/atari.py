"""Atari 2600 games (ale-py; the ROMs ship with it) as Distral tasks.

One game is one task. Preprocessing as DESIGN.md section 2 (Mnih et al., 2015; Machado et
al., 2018, arXiv:1709.06009):
- frame skip 4, the reward summed over the skipped frames, and the max over the last two
  frames' pixels (Atari flicker);
- grey-scale, resized to 84 x 84 (area averaging), a stack of the last 4 frames (zeros
  before the episode's first): the observation is uint8 [84, 84, 4] (uint8 keeps Reverb
  items 4x smaller than float32);
- up to 30 no-op actions at the start of each episode (drawn with the environment's seed);
- sticky actions with probability 0.25 (ALE's `repeat_action_probability`);
- the full 18-action set for every game, so pi_0 is shared across games;
- episodes end at game over (no life-loss episodes), or after `max_steps` agent steps
  (27,000 = 108,000 frames = 30 minutes of play) as a truncation (discount 1).
Rewards are the game's, unclipped; clipping belongs to the learner's configuration.

Two implementations: `AtariEnv`, one game as a dm_env.Environment (Python preprocessing
on `ALEInterface`; the evaluator's), and `AtariVectorEnv`, B games stepped by ale-py's C++
vectorised environment (`ALEVectorInterface`, the same preprocessing in C++ on a thread
pool; the actors'). Measured against each other (tests/test_game_envs.py): the same
rewards, episode ends and frames, pixels differing only by the resize kernel (OpenCV's
area interpolation against PIL's box filter: a mean of ~1 grey level).

`human_normalised_score` uses the random and human reference scores of Mnih et al. (2015,
"Human-level control through deep reinforcement learning", Nature 518, Extended Data
Table 2), the table that later work (e.g. Badia et al., 2020, arXiv:2003.13350) reuses.
Environments import no learning code.
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path

import dm_env
import numpy as np
from dm_env import specs

from distral.envs.timesteps import Float32Specs, step_timestep

NUM_ACTIONS = 18
FRAME_SKIP = 4
STACK = 4
SIZE = 84
NOOP_MAX = 30
STICKY = 0.25
MAX_STEPS = 27_000

# Mnih et al. (2015), Extended Data Table 2: random and human scores per game.
RANDOM_SCORES = {
    "alien": 227.8, "amidar": 5.8, "assault": 222.4, "asterix": 210.0, "asteroids": 719.1,
    "atlantis": 12850.0, "bank_heist": 14.2, "battle_zone": 2360.0, "beam_rider": 363.9,
    "berzerk": 123.7, "bowling": 23.1, "boxing": 0.1, "breakout": 1.7, "centipede": 2090.9,
    "chopper_command": 811.0, "crazy_climber": 10780.5, "demon_attack": 152.1,
    "double_dunk": -18.6, "enduro": 0.0, "fishing_derby": -91.7, "freeway": 0.0,
    "frostbite": 65.2, "gopher": 257.6, "gravitar": 173.0, "hero": 1027.0,
    "ice_hockey": -11.2, "jamesbond": 29.0, "kangaroo": 52.0, "krull": 1598.0,
    "kung_fu_master": 258.5, "montezuma_revenge": 0.0, "ms_pacman": 307.3,
    "name_this_game": 2292.3, "phoenix": 761.4, "pitfall": -229.4, "pong": -20.7,
    "private_eye": 24.9, "qbert": 163.9, "riverraid": 1338.5, "road_runner": 11.5,
    "robotank": 2.2, "seaquest": 68.4, "skiing": -17098.1, "solaris": 1236.3,
    "space_invaders": 148.0, "star_gunner": 664.0, "tennis": -23.8, "time_pilot": 3568.0,
    "tutankham": 11.4, "up_n_down": 533.4, "venture": 0.0, "video_pinball": 0.0,
    "wizard_of_wor": 563.5, "yars_revenge": 3092.9, "zaxxon": 32.5,
}  # fmt: skip
HUMAN_SCORES = {
    "alien": 7127.7, "amidar": 1719.5, "assault": 742.0, "asterix": 8503.3,
    "asteroids": 47388.7, "atlantis": 29028.1, "bank_heist": 753.1, "battle_zone": 37187.5,
    "beam_rider": 16926.5, "berzerk": 2630.4, "bowling": 160.7, "boxing": 12.1,
    "breakout": 30.5, "centipede": 12017.0, "chopper_command": 7387.8,
    "crazy_climber": 35829.4, "demon_attack": 1971.0, "double_dunk": -16.4, "enduro": 860.5,
    "fishing_derby": -38.7, "freeway": 29.6, "frostbite": 4334.7, "gopher": 2412.5,
    "gravitar": 3351.4, "hero": 30826.4, "ice_hockey": 0.9, "jamesbond": 302.8,
    "kangaroo": 3035.0, "krull": 2665.5, "kung_fu_master": 22736.3,
    "montezuma_revenge": 4753.3, "ms_pacman": 6951.6, "name_this_game": 8049.0,
    "phoenix": 7242.6, "pitfall": 6463.7, "pong": 14.6, "private_eye": 69571.3,
    "qbert": 13455.0, "riverraid": 17118.0, "road_runner": 7845.0, "robotank": 11.9,
    "seaquest": 42054.7, "skiing": -4336.9, "solaris": 12326.7, "space_invaders": 1668.7,
    "star_gunner": 10250.0, "tennis": -8.3, "time_pilot": 5229.2, "tutankham": 167.6,
    "up_n_down": 11693.2, "venture": 1187.5, "video_pinball": 17667.9,
    "wizard_of_wor": 4756.5, "yars_revenge": 54576.9, "zaxxon": 9173.3,
}  # fmt: skip


class GameError(ValueError):
    """An unknown game name; the message is one line and lists close matches."""


def all_games() -> list[str]:
    """ale-py's ROM ids (snake_case), every one of which ships with ale-py."""
    from ale_py import roms

    return list(roms.get_all_rom_ids())


def _rom_path(game: str) -> Path:
    """The ROM file of a game named as `canonical_game` returns it (so one that ships)."""
    from ale_py import roms

    path = roms.get_rom_path(game)
    if path is None:
        raise GameError(f"ale-py has no ROM for {game!r}")
    return path


def canonical_game(name: str) -> str:
    """'SpaceInvaders', 'space invaders' or 'space_invaders' -> 'space_invaders'."""
    snake = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", name.strip()).lower()
    snake = re.sub(r"[\s\-]+", "_", snake)
    games = all_games()
    if snake in games:
        return snake
    by_key = {g.replace("_", ""): g for g in games}
    if snake.replace("_", "") in by_key:
        return by_key[snake.replace("_", "")]
    close = difflib.get_close_matches(snake, games, n=3, cutoff=0.6)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    raise GameError(f"unknown Atari game {name!r}{hint} ({len(games)} games ship with ale-py)")


def human_normalised_score(game: str, score: float) -> float:
    """(score - random) / (human - random) with Mnih et al. (2015)'s references; NaN if the
    game has none."""
    game = canonical_game(game)
    if game not in HUMAN_SCORES:
        return float("nan")
    random, human = RANDOM_SCORES[game], HUMAN_SCORES[game]
    return (score - random) / (human - random)


def _resize(frame: np.ndarray) -> np.ndarray:
    """[210, 160] uint8 -> [84, 84] uint8 by area averaging (PIL's box filter)."""
    from PIL import Image

    return np.asarray(Image.fromarray(frame).resize((SIZE, SIZE), Image.Resampling.BOX))


def observation_spec() -> specs.BoundedArray:
    """Every game's observation: uint8 [84, 84, 4], the last 4 preprocessed frames."""
    return specs.BoundedArray((SIZE, SIZE, STACK), np.uint8, 0, 255, name="observation")


class AtariEnv(Float32Specs, dm_env.Environment):
    """One Atari game with the preprocessing above, as a dm_env.Environment.

    Step after LAST resets. `seed` seeds ALE (sticky actions) and the no-op starts.
    """

    def __init__(
        self,
        game: str,
        seed: int = 0,
        *,
        sticky_action_prob: float = STICKY,
        noop_max: int = NOOP_MAX,
        max_steps: int = MAX_STEPS,
    ) -> None:
        from ale_py import ALEInterface, LoggerMode

        if max_steps < 1 or noop_max < 0:
            raise ValueError(f"max_steps={max_steps} must be >= 1 and noop_max={noop_max} >= 0")
        self.game = canonical_game(game)
        ALEInterface.setLoggerMode(LoggerMode.Error)
        self._ale = ale = ALEInterface()
        ale.setInt("random_seed", int(seed) % (2**31))
        ale.setFloat("repeat_action_probability", float(sticky_action_prob))
        ale.setInt("frame_skip", 1)  # we skip (and max-pool) ourselves
        ale.loadROM(_rom_path(self.game))
        self._actions = ale.getLegalActionSet()  # the full 18 actions, in ALE's order
        self._rng = np.random.default_rng(seed)
        self._noop_max = int(noop_max)
        self._max_steps = int(max_steps)
        self._screens = np.zeros((2, 210, 160), np.uint8)
        self._stack = np.zeros((SIZE, SIZE, STACK), np.uint8)
        self._t = 0
        self._needs_reset = True

    def _grab(self, slot: int) -> None:
        self._ale.getScreenGrayscale(self._screens[slot])

    def _push_frame(self) -> np.ndarray:
        """Max-pools the last two screens, pushes the resized frame; returns a copy."""
        frame = _resize(np.maximum(self._screens[0], self._screens[1]))
        self._stack = np.roll(self._stack, -1, axis=-1)
        self._stack[..., -1] = frame
        return self._stack.copy()

    def reset(self) -> dm_env.TimeStep:
        ale = self._ale
        ale.reset_game()
        for _ in range(int(self._rng.integers(1, self._noop_max + 1)) if self._noop_max else 0):
            ale.act(self._actions[0])
            if ale.game_over():
                ale.reset_game()
        self._grab(0)
        self._screens[1] = self._screens[0]
        self._stack[:] = 0  # the first observation: the first frame after zeros, as in
        obs = self._push_frame()  # ale-py's vectorised environment (AtariVectorEnv)
        self._t = 0
        self._needs_reset = False
        return dm_env.restart(obs)

    def step(self, action) -> dm_env.TimeStep:
        if self._needs_reset:
            return self.reset()
        ale = self._ale
        a = self._actions[int(action)]
        reward = 0.0
        for k in range(FRAME_SKIP):
            reward += ale.act(a)
            if k >= FRAME_SKIP - 2:
                self._grab(k - (FRAME_SKIP - 2))
            if ale.game_over():
                if k < FRAME_SKIP - 2:
                    self._grab(0)
                self._grab(1)
                break
        self._t += 1
        obs = self._push_frame()
        timestep = step_timestep(
            reward, obs, game_over=ale.game_over(), t=self._t, max_steps=self._max_steps
        )
        self._needs_reset = timestep.last()
        return timestep

    @property
    def frame_number(self) -> int:
        """ALE frames of the current episode (no-ops included)."""
        return int(self._ale.getEpisodeFrameNumber())

    def observation_spec(self) -> specs.BoundedArray:
        return observation_spec()

    def action_spec(self) -> specs.DiscreteArray:
        return specs.DiscreteArray(NUM_ACTIONS, name="action")


class AtariVectorEnv:
    """B environments of one game on ale-py's vectorised C++ environment, as a VectorEnv
    (distral.envs.vector: auto-reset, `done` with discount 0 ends an episode and the
    returned observation is the next episode's first).

    The preprocessing is `AtariEnv`'s, done in C++ by `ALEVectorInterface` with
    `num_threads` worker threads (1 suits one actor process per core). Two differences
    from `AtariEnv`: the no-op starts are drawn by ALE (0..noop_max) and `max_steps`
    counts the no-op frames (the limit is max_steps x 4 frames of the episode). `reset(seed)`
    seeds environment b with a 31-bit seed drawn from (seed, b).
    """

    def __init__(
        self,
        game: str,
        num_envs: int,
        seed: int = 0,
        *,
        sticky_action_prob: float = STICKY,
        noop_max: int = NOOP_MAX,
        max_steps: int = MAX_STEPS,
        num_threads: int = 1,
    ) -> None:
        from ale_py._ale_py import ALEVectorInterface

        if num_envs < 1 or num_threads < 1 or max_steps < 1 or noop_max < 0:
            raise ValueError(
                f"num_envs={num_envs}, num_threads={num_threads} and max_steps={max_steps} "
                f"must be >= 1 and noop_max={noop_max} >= 0"
            )
        self.game = canonical_game(game)
        self.num_envs = int(num_envs)
        self.num_actions = NUM_ACTIONS
        self._seed = seed
        self._ale = ALEVectorInterface(
            rom_path=_rom_path(self.game),
            num_envs=self.num_envs,
            frame_skip=FRAME_SKIP,
            stack_num=STACK,
            img_height=SIZE,
            img_width=SIZE,
            grayscale=True,
            maxpool=True,
            noop_max=int(noop_max),
            use_fire_reset=False,
            episodic_life=False,
            life_loss_info=False,
            reward_clipping=False,
            max_episode_steps=int(max_steps) * FRAME_SKIP,
            repeat_action_probability=float(sticky_action_prob),
            full_action_space=True,
            num_threads=int(num_threads),
            autoreset_mode="SameStep",  # a finished env returns its next episode's start
        )
        self._strength = np.ones(self.num_envs, np.float32)  # paddle strength (unused)
        self._started = False

    def observation_spec(self) -> specs.BoundedArray:
        return observation_spec()

    @staticmethod
    def _obs(stacked: np.ndarray) -> np.ndarray:
        """ALE's [B, 4, 84, 84] -> [B, 84, 84, 4], a copy (ALE reuses its buffer)."""
        return np.ascontiguousarray(np.moveaxis(stacked, 1, -1))

    def reset(self, seed: int | None = None) -> np.ndarray:
        entropy = self._seed if seed is None else seed
        seeds = np.random.SeedSequence(entropy).generate_state(self.num_envs) >> 1
        obs, _ = self._ale.reset(np.arange(self.num_envs), seeds.astype(np.int64))
        self._started = True
        return self._obs(obs)

    def step(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        if not self._started:
            raise RuntimeError("call reset(seed) before step(actions)")
        actions = np.asarray(actions)
        if actions.shape != (self.num_envs,):
            raise ValueError(f"actions must have shape ({self.num_envs},), got {actions.shape}")
        self._ale.send(actions.astype(np.int32), self._strength)
        obs, reward, terminated, truncated, info = self._ale.recv()
        done = np.asarray(terminated | truncated, bool)
        out = self._obs(obs), reward.astype(np.float32), (~done).astype(np.float32), done
        order = np.asarray(info["env_id"])  # ALE returns env order here; put it in order
        if not np.array_equal(order, np.arange(self.num_envs)):
            by_env = np.argsort(order)
            return out[0][by_env], out[1][by_env], out[2][by_env], out[3][by_env]
        return out
