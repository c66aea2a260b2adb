"""Helpers for the tests that start `distral launch` / `distral train` as real processes
(tests/test_launch.py, tests/test_faults.py): the CLI in its own session, its stderr and
stdout read while it runs, and what is left of its processes and its port afterwards."""

from __future__ import annotations

import csv
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PRESET = ROOT / "experiments" / "two_room_distributed.yaml"

# Small and fast: 2 tasks (2 actors), short unrolls, small batches.
SMALL = [
    "env.num_tasks=2",
    "unroll_length=10",
    "distributed.envs_per_actor=8",
    "distributed.batch_size=2",
    "distributed.queue_size=4",
    "distributed.refresh_every=10",
    "log_every=10",
    "checkpoint_every=1",
    "eval_episodes_per_task=8",
]


def sets(items: list[str]) -> list[str]:
    """`--set a --set b ...` for the CLI."""
    return [a for item in items for a in ("--set", item)]


class Launch:
    """`distral <command> ...` (launch by default) in its own session, as a user's terminal
    would start it. Both pipes are read by threads while it runs, so a chatty child can
    never block on a full pipe; stderr is kept line by line."""

    def __init__(self, *args: str, command: str = "launch") -> None:
        env = dict(os.environ, PYTHONUNBUFFERED="1", TF_CPP_MIN_LOG_LEVEL="1")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "distral.cli", command, *args],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            start_new_session=True,
        )
        self.lines: list[str] = []
        self._stdout: list[str] = []
        self._readers = [
            threading.Thread(target=self._read, args=(self.proc.stderr, self.lines), daemon=True),
            threading.Thread(target=self._read, args=(self.proc.stdout, self._stdout), daemon=True),
        ]
        for reader in self._readers:
            reader.start()

    @staticmethod
    def _read(pipe, into: list[str]) -> None:
        for line in pipe:
            into.append(line.rstrip("\n"))

    @property
    def stdout(self) -> str:
        return "\n".join(self._stdout)

    def wait_for(self, pattern: str, timeout: float = 240.0) -> re.Match:
        """The first stderr line matching `pattern`, waiting for it up to `timeout` s."""
        deadline = time.monotonic() + timeout
        seen = 0
        while time.monotonic() < deadline:
            for line in self.lines[seen:]:
                m = re.search(pattern, line)
                if m:
                    return m
            seen = len(self.lines)
            if self.proc.poll() is not None and seen == len(self.lines):
                time.sleep(0.2)  # the reader may still be draining
                if not any(re.search(pattern, x) for x in self.lines):
                    break
            time.sleep(0.05)
        raise AssertionError(f"{pattern!r} not seen; stderr:\n" + "\n".join(self.lines[-40:]))

    def pids(self) -> list[int]:
        """Every PID the launcher logged ("learner: pid 12", "actor task 0 replica 0: ...")."""
        return [int(m.group(1)) for x in self.lines if (m := re.search(r": pid (\d+)$", x))]

    def finish(self, timeout: float = 300.0) -> int:
        """Its exit code, once it has exited and both pipes are drained. Every wait of
        these tests stays under pytest's timeout (600 s, pyproject.toml), so a test that
        hangs fails with its own message and the child's stderr."""
        self.proc.wait(timeout=timeout)
        for reader in self._readers:
            reader.join(timeout=10)
        return self.proc.returncode

    def tail(self, n: int = 30) -> str:
        return "\n".join(self.lines[-n:])

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


def alive(pid: int) -> bool:
    """True while `pid` runs (a zombie is dead)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except FileNotFoundError:
        return False


def _stat(pid: int) -> list[str] | None:
    """/proc/PID/stat's fields after the command name (state is [0], ppid [1], start [19])."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except (FileNotFoundError, ProcessLookupError):
        return None


def descendants(pid: int) -> dict[int, str]:
    """Every living process below `pid` (children, theirs, ...), as {pid: start time}: the
    start time tells a process from a later one that reuses its PID."""
    children: dict[int, list[int]] = {}
    start: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (fields := _stat(int(entry.name))) and fields[0] != "Z":
            children.setdefault(int(fields[1]), []).append(int(entry.name))
            start[int(entry.name)] = fields[19]
    out: dict[int, str] = {}
    todo = list(children.get(pid, []))
    while todo:
        p = todo.pop()
        out[p] = start[p]
        todo += children.get(p, [])
    return out


def still_running(processes: dict[int, str]) -> list[int]:
    """The processes of `descendants(...)` that still run (not zombies, same start time)."""
    return [
        p
        for p, started in processes.items()
        if (fields := _stat(p)) and fields[0] != "Z" and fields[19] == started
    ]


def cmdline(pid: int) -> str:
    """A process's command line ("" once it is gone); a Ray worker's names its task."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except (FileNotFoundError, ProcessLookupError):
        return ""


def wait_until(condition, timeout: float, poll: float = 0.05) -> bool:
    """Polls `condition()` until it holds (True) or `timeout` s pass (False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(poll)
    return bool(condition())


def metrics_rows(run_dir: Path) -> list[dict[str, str]]:
    """metrics.csv of a run directory."""
    with (run_dir / "metrics.csv").open(newline="") as fh:
        return list(csv.DictReader(fh))


def port_free(port: int) -> bool:
    """True if nothing listens on `port` (a socket in TIME_WAIT is not "bound")."""
    with socket.socket(socket.AF_INET6) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("", port))
        except OSError:
            return False
    return True


def saved_steps(run_dir: Path) -> list[int]:
    """The finished checkpoints of a run (orbax renames a checkpoint's temporary directory
    to its step once it is complete)."""
    return sorted(int(p.name) for p in (run_dir / "checkpoints").glob("*") if p.name.isdigit())


def kill_and_await_restart(launch: Launch, slot: str) -> int:
    """SIGKILLs the child the launcher logs as `slot` ("actor task 1 replica 0",
    "evaluator") 2 s after the actors started; returns its restart's (new) PID."""
    victim = int(launch.wait_for(rf"{slot}: pid (\d+)").group(1))
    launch.wait_for(r"actors started")
    time.sleep(2.0)
    os.kill(victim, signal.SIGKILL)
    launch.wait_for(rf"{slot} died \(exit code -9\); restart 1/3")
    return int(launch.wait_for(rf"{slot}: pid (?!{victim}\b)(\d+)").group(1))
