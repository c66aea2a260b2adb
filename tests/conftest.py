"""Shared fixtures, and one JAX compilation cache for the whole run.

The suite compiles the same programs many times over: every CLI test and every launched
process is a new Python process that traces and compiles its trainer, learner or actor
again. A persistent compilation cache shared by all of them (and by both xdist workers)
compiles each program once per run. It is made here, before any test module imports JAX,
in the controlling process; xdist's workers and every process a test starts inherit the
variable. It lives for one run only (removed at the end), so a run on a dev machine costs
what it costs on a fresh CI machine. A cache the caller set is used and kept.
"""

import os
import shutil
import signal
import tempfile
from typing import NamedTuple

import pytest
import small_runs
from launching import Launch

_OWN_CACHE: str | None = None
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _OWN_CACHE = tempfile.mkdtemp(prefix="distral-tests-jax-cache-")
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _OWN_CACHE
    # JAX keeps only compilations of 1 s or more by default; the tests' many small
    # programs, each compiled in several processes, are worth keeping too
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.2")


def pytest_unconfigure(config):
    if _OWN_CACHE is not None:  # None in xdist's workers: they inherit the variable
        shutil.rmtree(_OWN_CACHE, ignore_errors=True)


@pytest.fixture
def launches():
    """A list to append every started `Launch` to: whatever still runs at the end of the
    test (a failed one) is killed with its whole process group."""
    started: list[Launch] = []
    yield started
    for launch in started:
        launch.kill()


@pytest.fixture(scope="session")
def small_run(tmp_path_factory):
    """`small_run(name)`: the directory of a finished tests/small_runs.py run (`RUNS[name]`),
    trained at its first use in this process. Shared by every test: read it, never write
    into it."""
    made: dict = {}

    def get(name: str):
        if name not in made:
            made[name] = small_runs.train(name, tmp_path_factory.mktemp("small_runs") / name)
        return made[name]

    return get


class Ran(NamedTuple):
    """What a `distral` command gave, as `subprocess.run` would: exit code and output."""

    returncode: int
    stdout: str
    stderr: str


@pytest.fixture
def distral(capsys):
    """`distral ARGS...` run in this process (`distral.cli.main`): no new interpreter, no
    second import of JAX, and its programs come from this process's compilation caches.
    For what a command does, prints and writes; a test of a signal, of a separate process
    or of the `python -m distral.cli` entry point (tests/test_cli.py) starts a real one.
    The SIGINT handler a run installs is put back afterwards."""

    def run(*args: object) -> Ran:
        from distral import cli

        capsys.readouterr()  # drop what the test printed before
        handler = signal.getsignal(signal.SIGINT)
        try:
            code = cli.main([str(a) for a in args])
        except SystemExit as e:  # bad input, --help, --version
            code = e.code if isinstance(e.code, int) else int(e.code is not None)
        finally:
            signal.signal(signal.SIGINT, handler)
        out, err = capsys.readouterr()
        return Ran(code, out, err)

    return run
