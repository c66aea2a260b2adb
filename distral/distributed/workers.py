"""What runs inside each process of a distributed Distral run (DESIGN.md section 3).

- `learner_process`: runs `distral.distributed.learner.learner_main` (the Reverb server,
  the `Learner`, the evaluator, and the run directory through `distral.rundir`).
- `actor_main`: one `Actor` for one (task, replica) slot.
- `evaluator_main`: with `distributed.evaluator: process`, the evaluations in their own
  process (the learner then only drains their results).

The launchers (`distral.distributed.launch`) start these with spawn (local) or as Ray
actors. A worker stops when `should_stop()` turns true; it reports through `report(message)`:
("ready", reverb_address, learner_step), ("done", summary) or ("error", one_line).
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import time
import traceback
from collections.abc import Callable
from typing import Any, NoReturn

import numpy as np

from distral.config import APEX_FAMILIES, TrainConfig

Report = Callable[[tuple], None]
ShouldStop = Callable[[], bool]


def die_with_parent(parent_pid: int) -> None:
    """Linux: SIGKILL this process when its parent dies (no orphans, even after a SIGKILL)."""
    if sys.platform.startswith("linux"):
        PR_SET_PDEATHSIG = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(1)


def child_setup(parent_pid: int, stop_event: Any, *, clean_sigterm: bool) -> None:
    """In a spawned child: die with the parent; Ctrl-C is the parent's to handle (it sets
    the stop event). With `clean_sigterm` (the learner), SIGTERM also just sets the stop
    event, so the learner still writes its checkpoint; an actor dies on SIGTERM at once
    (it holds nothing worth saving, and may be blocked inside Reverb)."""
    die_with_parent(parent_pid)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")  # before TF/Reverb load: less noise
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if clean_sigterm:
        signal.signal(signal.SIGTERM, lambda *_: stop_event.set())


def exit_now(code: int) -> NoReturn:
    """Ends a spawned child once its work is written (files closed, reports sent), without
    the interpreter's teardown: TensorFlow's alone takes 2-3 s here (more under load),
    which would eat into the launcher's shutdown deadline (`launch.SHUTDOWN_SECONDS`)."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def actor_seed(seed: int, task_id: int, replica: int, attempt: int) -> int:
    """A distinct seed per (run seed, task, replica, restart), in [0, 2**31)."""
    state = np.random.SeedSequence([seed, task_id, replica, attempt]).generate_state(1)
    return int(state[0] % 2**31)


# ----------------------------------------------------------------------------------------
# ACTOR
# ----------------------------------------------------------------------------------------


def make_actor(
    config: TrainConfig, address: str, task_id: int, seed: int, *, writer: Any = None
) -> Any:
    """The `Actor` of one slot: task `task_id`'s B environments, its column of the
    parameters published on the server at `address`, and `writer` (None: a `ReplayWriter`
    to that server; benchmarks/distributed.py passes one that drops everything). A
    distillation student's actor also holds its task's teacher and writes its labels."""
    import reverb

    from distral.distill import actor_policy, experiment_and_teachers
    from distral.distributed import replay
    from distral.distributed.actor import Actor, ReplayWriter, VariableClient

    experiment, teachers = experiment_and_teachers(config)
    d = config.distributed
    client = reverb.Client(address)
    # A student acts with its task's teacher beside it, and writes that teacher's labels;
    # an Ape-X actor explores epsilon-greedily and writes n-step transitions.
    policy = None if teachers is None else actor_policy(experiment, teachers[task_id])
    if config.algorithm == "apex":
        policy = apex_policy(experiment)
    elif config.algorithm == "apex_distill":
        assert teachers is not None  # `experiment_and_teachers` loads them
        policy = apex_distill_policy(experiment, teachers[task_id])
    if writer is None:
        items: Any
        if config.algorithm in APEX_FAMILIES:
            from distral.distributed.prioritized import NStepWriter

            lam = config.distill.dqn_cost if config.algorithm == "apex_distill" else 1.0
            items = NStepWriter(client, task_id, config.apex.n_step, config.discount, td_weight=lam)
        elif policy is None:
            items = replay.UnrollWriter(client, config.unroll_length)
        else:
            items = replay.SampleWriter(client, task_id)
        writer = ReplayWriter(client, items)
    variables = VariableClient(
        client,
        experiment.params_template(),
        refresh_every=d.refresh_every,
        refresh_lag=d.refresh_lag,
        select=lambda params: experiment.network.task_params(params, task_id),
    )
    return Actor(
        experiment.make_vector_env(task_id, d.envs_per_actor, seed),
        task_id,
        experiment.network,
        variables,
        writer,
        seed=seed,
        policy=policy,
    )


def apex_policy(experiment: Any) -> Any:
    """An Ape-X actor's policy on its task's network: epsilon-greedy with the exploration
    ladder over its B environments (environment b: epsilon_base ** (1 + alpha b / (B - 1));
    Ape-X spreads the ladder over its actors, each with one environment), writing the
    Q-values it acted on (the initial priorities)."""
    import jax.numpy as jnp

    from distral.core import apex

    s, network = experiment.config.apex, experiment.network
    b = experiment.config.distributed.envs_per_actor
    epsilons = jnp.asarray(apex.epsilon_ladder(b, s.epsilon_base, s.epsilon_alpha), jnp.float32)

    def policy(params: Any, obs: np.ndarray, key: Any) -> tuple[Any, dict[str, Any]]:
        action, q = apex.select_action(params, obs, np.int32(0), epsilons, key, network=network)
        return action, {"q_values": q}

    return policy


def apex_distill_policy(experiment: Any, teacher: Any) -> Any:
    """An Ape-X distillation actor's policy on its task: the ladder's epsilon-greedy
    actions on the student's Q-values (`distill.behaviour: student`), on the teacher's
    outputs (`teacher`), or on either per state (`mixture`, the teacher's with
    `distill.teacher_prob`). It writes the student's Q-values (the n-step |td|), the
    teacher's outputs and KL(softmax(q_teacher / tau) || softmax(Q)) at s_t: the
    transition's priority, plus lambda |td| (`NStepWriter`)."""
    import jax
    import jax.numpy as jnp

    from distral.core import apex

    config, network = experiment.config, experiment.network
    s, settings = config.apex, config.distill
    b = config.distributed.envs_per_actor
    epsilons = jnp.asarray(apex.epsilon_ladder(b, s.epsilon_base, s.epsilon_alpha), jnp.float32)

    @jax.jit
    def act(params: Any, teacher_params: Any, obs: Any, key: Any) -> tuple[Any, dict[str, Any]]:
        k_act, k_mix = jax.random.split(key)
        q = network.apply(params, obs, jnp.zeros(obs.shape[:1], jnp.int32))
        taught = teacher.apply(teacher_params, obs)[0]
        kl = jax.vmap(apex.distill_priority, (0, 0, None))(q, taught, settings.tau)
        acting = taught if settings.behaviour == "teacher" else q
        if settings.behaviour == "mixture":
            use_teacher = jax.random.bernoulli(k_mix, settings.teacher_prob, q.shape[:1])
            acting = jnp.where(use_teacher[:, None], taught, q)
        action = apex.epsilon_greedy(acting, epsilons, k_act)
        return action, {"q_values": q, "teacher_outputs": taught, "distill_priority": kl}

    return lambda params, obs, key: act(params, teacher.params, obs, key)


class _StopFlag:
    """An Event-like view of a `should_stop()` callable (what `Actor.run` polls)."""

    def __init__(self, should_stop: ShouldStop) -> None:
        self.is_set = should_stop


def actor_main(
    config: TrainConfig,
    address: str,
    task_id: int,
    seed: int,
    should_stop: ShouldStop,
    max_steps: int | None = None,
) -> None:
    """Acts on task `task_id` with pi_i, writing to the Reverb server at `address`."""
    actor = make_actor(config, address, task_id, seed)
    actor.run(max_steps=max_steps, stop_event=_StopFlag(should_stop))
    if not should_stop():  # closing flushes, which could wait on a server that is gone
        actor.close()


def _run_child(what: str, body: Callable[[], None], stop_event: Any, parent: int) -> None:
    """The body of a spawned actor or evaluator: it dies with its parent and on SIGTERM;
    an error is one line on stderr and exit code 1 (the launcher restarts the slot)."""
    child_setup(parent, stop_event, clean_sigterm=False)
    try:
        body()
    except Exception as e:
        if not stop_event.is_set():  # else the server went away during shutdown: no fault
            print(f"distral: {what} failed: {e!r}", file=sys.stderr, flush=True)
            exit_now(1)
    exit_now(0)


def actor_process(
    config: TrainConfig, address: str, task_id: int, seed: int, stop_event: Any, parent: int
) -> None:
    """Entry point of a spawned actor process."""
    body = lambda: actor_main(config, address, task_id, seed, stop_event.is_set)  # noqa: E731
    _run_child(f"actor (task {task_id})", body, stop_event, parent)


# ----------------------------------------------------------------------------------------
# EVALUATOR (distributed.evaluator: process)
# ----------------------------------------------------------------------------------------


def evaluator_main(
    config: TrainConfig,
    address: str,
    seed: int,
    should_stop: ShouldStop,
    poll_seconds: float = 0.2,
) -> None:
    """Evaluates the newest published parameters whenever the learner has moved on by
    `log_every` steps since the last evaluation, and logs each result in `evaluations`.

    The evaluation key depends on the seed and the parameters' learner step alone, so the
    same parameters always get the same evaluation (`distral.evaluator`).
    """
    import reverb

    from distral.distill import experiment_and_teachers
    from distral.distributed import replay
    from distral.evaluator import make_evaluator

    experiment, teachers = experiment_and_teachers(config)  # a student's: in pi_0's place
    client = reverb.Client(address)
    source = replay.VariableSource(client, experiment.params_template())
    evaluate = make_evaluator(
        experiment, config.eval_episodes_per_task, seed, should_stop, teachers=teachers
    )
    last: int | None = None
    while not should_stop():
        params, step = source.fetch(allow_stale=True)
        if last is not None and step < last + config.log_every:
            time.sleep(poll_seconds)
            continue
        pi_i, pi_0 = evaluate(params, step)
        if should_stop():  # a game evaluation cut short returns NaN: not a result
            break
        replay.write_evaluation(client, step, pi_i, pi_0)
        last = step


def evaluator_process(
    config: TrainConfig, address: str, seed: int, stop_event: Any, parent: int
) -> None:
    """Entry point of the spawned evaluator process."""
    body = lambda: evaluator_main(config, address, seed, stop_event.is_set)  # noqa: E731
    _run_child("evaluator", body, stop_event, parent)


# ----------------------------------------------------------------------------------------
# LEARNER (+ replay server, evaluator, run directory)
# ----------------------------------------------------------------------------------------


def learner_process(
    config: TrainConfig, run_dir: str, resume: bool, stop_event: Any, reports: Any, parent: int
) -> None:
    """Entry point of the spawned learner process (it hosts the Reverb server)."""
    child_setup(parent, stop_event, clean_sigterm=True)
    from distral.distributed.learner import learner_main
    from distral.guard import DivergenceError

    try:
        summary = learner_main(
            config, run_dir, resume, stop_event.is_set, stop_event.set, reports.put
        )
    except DivergenceError as e:  # one line says it all: no traceback
        reports.put(("error", f"learner stopped: {e}"))
        sys.exit(1)
    except Exception as e:
        traceback.print_exc()
        reports.put(("error", f"learner failed: {type(e).__name__}: {e}".splitlines()[0]))
        code = 1
    else:
        reports.put(("done", summary))
        code = 0
    reports.close()
    reports.join_thread()  # the last report is in the pipe before the process ends
    exit_now(code)
