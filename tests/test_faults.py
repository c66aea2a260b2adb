"""Faults of a real run, with real processes: signals to the launcher, killed children, a
killed launcher, a checkpoint cut short, an actor slot out of restarts, Ctrl-C in
`distral train`, and the same on the Ray backend.

The launcher's promise (`distral.distributed.launch`): on Ctrl-C or SIGTERM every child
is gone within SHUTDOWN_SECONDS (10 s) of the signal, after a last log row and checkpoint;
exit code 130; `--resume` continues from that checkpoint. Each stop is timed from the
signal to the last process of the launch gone (its children's children included), and the
launcher's own exit is bounded separately (LAUNCHER_EXIT_SECONDS).
"""

from __future__ import annotations

import json
import os
import re
import signal
import time
from pathlib import Path

import numpy as np
import pytest
from launching import (
    PRESET,
    ROOT,
    SMALL,
    Launch,
    alive,
    cmdline,
    descendants,
    metrics_rows,
    port_free,
    saved_steps,
    sets,
    still_running,
    wait_until,
)
from small_runs import write_launch_run

from distral.distributed.launch import SHUTDOWN_SECONDS

ONE_TASK = [*SMALL, "env.num_tasks=1"]
EVALUATOR = "distributed.evaluator=process"
# Ray's own shutdown (`ray.shutdown()` of the instance a launch started) after the run's
# processes are gone: seconds more on a loaded machine. The local launcher imports no
# TensorFlow (it reads the tasks without building the algorithm), so it has no such tail.
RAY_SHUTDOWN_SECONDS = 10.0
TMP_CHECKPOINT = re.compile(r"^(\d+)\.orbax-checkpoint-tmp-")


def _stop(launch: Launch, sig: int, *, group: bool) -> tuple[int, float, float]:
    """Sends `sig` to the launcher (or its whole process group, as a terminal's Ctrl-C
    does) once it has written a first metrics row (its jitted steps and evaluation are
    compiled: what remains of a stop is a row, a checkpoint, the summary and the plot).
    Returns (exit code, seconds from the signal to the last of its children gone, to the
    launcher gone). Multiprocessing's resource tracker counts with the launcher: it exits
    when the launcher does."""
    launch.wait_for(r"actors started")
    out = Path(launch.wait_for(r"run directory (\S+)$").group(1))
    first_row = wait_until(lambda: (out / "metrics.csv").is_file() and metrics_rows(out), 240)
    assert first_row, launch.tail()
    processes = descendants(launch.proc.pid)
    children = {p: t for p, t in processes.items() if "resource_tracker" not in cmdline(p)}
    assert len(children) >= 2  # the learner and an actor, or a Ray instance
    t0 = time.monotonic()
    if group:
        os.killpg(launch.proc.pid, sig)
    else:
        os.kill(launch.proc.pid, sig)
    wait_until(lambda: not still_running(children), 60, poll=0.02)
    children_gone = time.monotonic() - t0
    code = launch.finish(timeout=60)
    launcher_gone = time.monotonic() - t0
    assert wait_until(lambda: not still_running(processes), 10)
    return code, children_gone, launcher_gone


def _assert_clean_stop(
    launch: Launch, out: Path, stop: tuple[int, float, float], port: int, exit_tail: float = 0.0
):
    """Exit 130 with the resume line; every child and the launcher gone within
    SHUTDOWN_SECONDS (the launcher kills stragglers 1.5 s before; `exit_tail` more for the
    launcher on Ray); the port free; the summary and a checkpoint of the last row written
    (a stopped learner draws no figure)."""
    code, children_gone, launcher_gone = stop
    timing = f"children {children_gone:.1f} s, launcher {launcher_gone:.1f} s\n{launch.tail()}"
    assert code == 130, launch.tail()
    assert children_gone < SHUTDOWN_SECONDS, timing
    assert launcher_gone < SHUTDOWN_SECONDS + exit_tail, timing
    assert f"stopped; resume with: distral launch --resume {out}" in launch.lines
    assert port_free(port)
    assert (out / "summary.json").is_file()
    assert saved_steps(out)[-1] == len(metrics_rows(out))  # the last row's checkpoint


# ----------------------------------------------------------------------------------------
# LOCAL BACKEND
# ----------------------------------------------------------------------------------------


def test_killed_launcher_takes_its_children_with_it(tmp_path, launches):
    """SIGKILL of the launcher alone: its children (learner, actors, multiprocessing's
    resource tracker) die with it (PR_SET_PDEATHSIG), and the Reverb port is free."""
    out = tmp_path / "run"
    launch = Launch(str(PRESET), "--out", str(out), *sets(ONE_TASK))
    launches.append(launch)
    port = int(launch.wait_for(r"Reverb server at \S+:(\d+)").group(1))
    launch.wait_for(r"1 actors started")
    processes = descendants(launch.proc.pid)
    assert set(launch.pids()) <= set(processes) and len(launch.pids()) == 2
    os.kill(launch.proc.pid, signal.SIGKILL)
    assert launch.finish(timeout=60) == -signal.SIGKILL
    assert wait_until(lambda: not still_running(processes), 10), [
        cmdline(p) for p in still_running(processes)
    ]
    assert wait_until(lambda: port_free(port), 10)


def _kill_during_a_save(pid: int, run_dir: Path, timeout: float = 180.0) -> int:
    """SIGKILLs `pid` while it writes a checkpoint, once two are finished: it is stopped
    (SIGSTOP) as soon as a temporary checkpoint directory appears, and killed if that
    directory is still there (else resumed, to try the next save). Returns the step of
    the checkpoint it was writing."""
    directory = run_dir / "checkpoints"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        tmp = [m for p in directory.glob("*") if (m := TMP_CHECKPOINT.match(p.name))]
        if tmp and len(saved_steps(run_dir)) >= 2:
            os.kill(pid, signal.SIGSTOP)
            if (directory / tmp[0].string).exists():
                os.kill(pid, signal.SIGKILL)
                return int(tmp[0].group(1))
            os.kill(pid, signal.SIGCONT)
        time.sleep(0.001)
    raise AssertionError("no checkpoint save was caught in progress")


def test_a_local_run_through_each_fault_resumes_from_its_last_checkpoint(tmp_path, launches):
    """One run of one task with two actors (`--actors-per-task 2`, at most one restart per
    slot) taken through the local faults in turn, each resumed from what it left:

    1. one actor slot killed twice: the run stops with a one-line error and a checkpoint;
    2. `--resume`, then Ctrl-C (SIGINT to the process group, as a terminal sends it);
    3. `--resume`, then SIGTERM to the launcher's PID alone (as a service manager sends it):
       both are clean stops (`_assert_clean_stop`);
    4. `--resume`, the learner SIGKILLed in the middle of a checkpoint save: the run stops
       with an error and orbax's temporary directory is left behind;
    5. `--resume` ignores it, starts at the last finished checkpoint, saves the interrupted
       step again and completes: the metrics rows are cut back to that checkpoint and
       appended, one per log step.
    """
    out = tmp_path / "run"
    slot = "actor task 0 replica 1"
    settings = [*ONE_TASK, "distributed.max_actor_restarts=1"]
    launch = Launch(str(PRESET), "--out", str(out), "--actors-per-task", "2", *sets(settings))
    launches.append(launch)
    launch.wait_for(r"2 actors started \(2 per task\)")
    first = int(launch.wait_for(rf"{slot}: pid (\d+)").group(1))
    os.kill(first, signal.SIGKILL)
    launch.wait_for(rf"{slot} died \(exit code -9\); restart 1/1")
    second = int(launch.wait_for(rf"{slot}: pid (?!{first}\b)(\d+)").group(1))
    os.kill(second, signal.SIGKILL)
    assert launch.finish(timeout=60) == 1, launch.tail()
    errors = [x for x in launch.lines if x.startswith("distral launch: error")]
    assert errors == [
        f"distral launch: error: {slot} died 2 times (exit code -9); stopping the run; "
        f"resume with: distral launch --resume {out}"
    ]
    assert not [p for p in launch.pids() if alive(p)]
    assert saved_steps(out)[-1] == len(metrics_rows(out))

    for sig, group in ((signal.SIGINT, True), (signal.SIGTERM, False)):
        resumed = Launch("--resume", str(out))  # the run's config: 2 actors per task
        launches.append(resumed)
        port = int(resumed.wait_for(r"Reverb server at \S+:(\d+)").group(1))
        resumed.wait_for(r"2 actors started")
        before = len(metrics_rows(out))  # the signal comes once the resumed run is compiled
        assert wait_until(lambda n=before: len(metrics_rows(out)) > n, 240), resumed.tail()
        pids = resumed.pids()
        assert len(pids) == 3 and all(alive(p) for p in pids)  # the learner and 2 actors
        _assert_clean_stop(resumed, out, _stop(resumed, sig, group=group), port)
        assert not [p for p in pids if alive(p)]

    cut_short = Launch("--resume", str(out), "--max-learner-steps", "100000")
    launches.append(cut_short)
    learner = int(cut_short.wait_for(r"learner: pid (\d+)").group(1))
    cut_short.wait_for(r"2 actors started")
    cut = _kill_during_a_save(learner, out)
    assert cut_short.finish(timeout=60) == 1
    assert any("the learner died" in x and "--resume" in x for x in cut_short.lines)
    assert not [p for p in cut_short.pids() if alive(p)]
    saved = max(saved_steps(out))
    assert cut == saved + 1
    assert [p for p in (out / "checkpoints").glob(f"{cut}.orbax-checkpoint-tmp-*") if p.is_dir()]
    rows = [r for r in metrics_rows(out) if int(r["log_step"]) <= saved]
    step_at_checkpoint = int(rows[-1]["updates"])

    last = Launch("--resume", str(out), "--max-learner-steps", str(step_at_checkpoint + 30))
    launches.append(last)
    assert int(last.wait_for(r"learner at step (\d+)").group(1)) == step_at_checkpoint
    assert last.finish() == 0, last.tail(20)
    rows = metrics_rows(out)
    log_steps = [int(r["log_step"]) for r in rows]
    assert log_steps == list(range(1, len(rows) + 1))  # cut back to the checkpoint, appended
    assert int(rows[-1]["updates"]) == step_at_checkpoint + 30
    summary = json.loads((out / "summary.json").read_text())
    assert summary["learner_steps"] == step_at_checkpoint + 30
    assert summary["actors_per_task"] == 2
    # The stops above end rows at any learner step, so 30 more steps give 3 or 4 rows: the
    # interrupted step `cut` was saved again (and more after it), the last 3 rows' kept.
    assert log_steps[-1] >= cut + 2
    assert saved_steps(out) == log_steps[-3:]  # keep_checkpoints: 3


# ----------------------------------------------------------------------------------------
# DISTRAL TRAIN
# ----------------------------------------------------------------------------------------


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.is_file() else []


def test_ctrl_c_in_distral_train_resumes_to_the_rows_of_an_uninterrupted_run(tmp_path):
    """Ctrl-C (SIGINT to the process group) during `distral train`: exit code 130, the
    resume line, a checkpoint; `--resume` then writes exactly the rows of a run that was
    never interrupted (timings aside)."""
    import yaml

    from distral.config import load_config
    from distral.train import run

    config = tmp_path / "c.yaml"
    # 100 log steps of 400 env steps per task, about 0.13 s each on an idle machine: the
    # signal, sent after the second row, lands in the middle of the run however fast the
    # machine (with 20, an idle machine finished before the signal came).
    small = dict(hidden_sizes=[32], num_envs_per_task=8, unroll_length=10, log_every=5)
    small |= dict(eval_episodes_per_task=8, checkpoint_every=1, keep_checkpoints=2)
    config.write_text(
        yaml.safe_dump({**small, "env_steps_per_task": 40_000, "env": {"num_tasks": 2}})
    )
    out = tmp_path / "run"
    train = Launch(str(config), "--out", str(out), "--seeds", "0", "--quiet", command="train")
    try:
        assert wait_until(lambda: len(_lines(out / "metrics.csv")) >= 3, 240, poll=0.01)
        os.killpg(train.proc.pid, signal.SIGINT)
        assert train.finish(timeout=60) == 130, train.tail()
    finally:
        train.kill()
    assert f"interrupted; resume with: distral train --resume {out}" in train.lines
    assert not (out / "summary.json").exists()
    interrupted = metrics_rows(out)
    assert 2 <= len(interrupted) < 100 and saved_steps(out)

    resumed = Launch("--resume", str(out), "--quiet", command="train")
    try:
        assert resumed.finish() == 0, resumed.tail()
    finally:
        resumed.kill()
    run(load_config(out / "config.yaml"), tmp_path / "whole", progress=False)
    whole, part = metrics_rows(tmp_path / "whole"), metrics_rows(out)
    assert [r["log_step"] for r in part] == [str(k) for k in range(1, 101)]
    timing = {"wall_seconds", "steps_per_second"}
    for a, b in zip(whole, part, strict=True):
        for key in a.keys() - timing:
            np.testing.assert_allclose(float(a[key]), float(b[key]), rtol=1e-5, err_msg=key)


# ----------------------------------------------------------------------------------------
# RAY BACKEND
# ----------------------------------------------------------------------------------------


def _ray_actor_workers(launch: Launch) -> list[int]:
    """The Ray worker processes of this launch running an actor slot (Ray names a worker's
    process after its task: "ray::RayWorker.run_actor")."""
    return [
        p for p in descendants(launch.proc.pid) if cmdline(p).startswith("ray::RayWorker.run_actor")
    ]


@pytest.fixture(scope="module")
def breakout_teacher(tmp_path_factory):
    """An a3c MinAtar Breakout run directory (fresh parameters, written in process)."""
    from distral.config import load_config

    preset = ROOT / "experiments" / "minatar_5games.yaml"
    config = load_config(preset, ["env.games=[breakout]"], overrides={"variant": "a3c"})
    return write_launch_run(tmp_path_factory.mktemp("teacher") / "breakout", config)


def test_a_ray_student_restarts_a_killed_actor_then_ctrl_c_stops_every_process(
    tmp_path, launches, breakout_teacher
):
    """A MinAtar distillation student on the Ray backend: its actor (with the teacher) and
    the evaluator each in a Ray worker. The actor's worker process SIGKILLed: its slot is
    restarted in a new worker and the run writes rows again, with the teacher's
    evaluation. Then Ctrl-C: the learner's last row and checkpoint, exit code 130, and no
    process of the launch left (learner, workers, and the Ray instance it started). One
    Ray instance for both faults: its start is the costliest part of a Ray test."""
    pytest.importorskip("ray")
    out = tmp_path / "run"
    student = sets([
        "env.games=[breakout]", f"distill.teachers=[{breakout_teacher}]", "env.max_steps=100",
        "distributed.envs_per_actor=4", "distributed.refresh_every=5", "unroll_length=5",
        "eval_episodes_per_task=2", "checkpoint_every=1", "log_every=2",
        "distill.batch_per_task=8", "distill.replay_per_task=400", "torso_width=64", EVALUATOR,
    ])  # fmt: skip
    preset = str(ROOT / "experiments" / "minatar_distill.yaml")
    launch = Launch(preset, "--out", str(out), "--backend", "ray", *student)
    launches.append(launch)
    port = int(launch.wait_for(r"Reverb server at \S+:(\d+)").group(1))
    launch.wait_for(r"1 Ray actors started \(1 per task\) and the evaluator")
    assert wait_until(lambda: len(_ray_actor_workers(launch)) == 1, 240)
    victim = _ray_actor_workers(launch)[0]
    os.kill(victim, signal.SIGKILL)
    launch.wait_for(r"actor task 0 replica 0 died \(ActorDiedError: .*\); restart 1/3$")
    assert wait_until(lambda: _ray_actor_workers(launch) not in ([], [victim]), 240)
    restarted = len(metrics_rows(out))

    def evaluated(rows: list[dict]) -> list[dict]:  # the evaluator worker's results
        return [r for r in rows if np.isfinite(float(r["eval_learner_step"] or "nan"))]

    # The run goes on with the new worker's samples, and the evaluator worker's results
    # reach its rows (the student's and its teacher's returns).
    assert wait_until(lambda: evaluated(metrics_rows(out)[restarted:]), 240), launch.tail()
    stop = _stop(launch, signal.SIGINT, group=True)
    _assert_clean_stop(launch, out, stop, port, exit_tail=RAY_SHUTDOWN_SECONDS)
    assert len([x for x in launch.lines if " died " in x]) == 1  # the evaluator never died
    rows = metrics_rows(out)
    for r in evaluated(rows):
        assert np.isfinite(float(r["eval_return"])), r
        assert np.isfinite(float(r["teacher_eval_return"])), r
    # The Ray actors send their ended episodes with their items, as the local ones do:
    # 100-step episodes of 4 environments end long before the rows above.
    ended = [(r["env_steps_per_task"], r["episodes"], r["mean_return"]) for r in rows]
    assert sum(int(r["episodes"]) for r in rows) >= 4, ended
    assert all(0 <= float(r["mean_return"]) <= 100 for r in rows if int(r["episodes"])), ended
    summary = json.loads((out / "summary.json").read_text())
    assert summary["teachers"] == [f"{breakout_teacher}, task 0"]
