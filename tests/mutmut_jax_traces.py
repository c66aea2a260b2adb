"""pytest plugin for `make mutate` (mutmut): fresh JAX traces per test while mutmut maps tests
to functions.

mutmut learns which tests reach a function from a trampoline that records each call during
one "stats" run of the whole suite. Under `jax.jit` a function body runs only when it is
traced: a later test that hits the trace cache of an earlier one (same static arguments,
same shapes) would not be recorded as reaching the functions inside, and a mutant there
would skip the very test that could kill it. Clearing JAX's caches before every test of the
stats run makes each test trace, hence record, everything it reaches. Mutant runs need no
help (each runs in a fresh process) and ordinary test runs never load this plugin.

mutmut forks each mutant's test run from a process that has collected the tests. JAX is
not fork-safe once its backend has started: a child forked after that hangs in XLA and
ends at mutmut's CPU limit, a "timeout" that is no detection. A test module that makes a
JAX array at import (a module-level `jnp.asarray`) starts the backend, so collection fails
here, naming the modules, instead.
"""

from __future__ import annotations

import os

import jax
import pytest


@pytest.fixture(autouse=True)
def _fresh_jax_traces_for_mutmut_stats():
    if os.environ.get("MUTANT_UNDER_TEST") == "stats":
        jax.clear_caches()
    yield


def pytest_collection_finish(session: pytest.Session) -> None:
    from jax._src import xla_bridge

    if xla_bridge._backends:  # started while the test modules were imported
        raise pytest.UsageError(
            "JAX's backend started while the tests were collected (a module-level JAX array "
            "in a test module?): mutmut's forked mutant runs would hang; use numpy there"
        )
