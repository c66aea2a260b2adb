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
import tempfile

import pytest
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
