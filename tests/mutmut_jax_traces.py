"""pytest plugin for `make mutate` (mutmut): fresh JAX traces per test while mutmut maps tests
to functions.

mutmut learns which tests reach a function from a trampoline that records each call during
one "stats" run of the whole suite. Under `jax.jit` a function body runs only when it is
traced: a later test that hits the trace cache of an earlier one (same static arguments,
same shapes) would not be recorded as reaching the functions inside, and a mutant there
would skip the very test that could kill it. Clearing JAX's caches before every test of the
stats run makes each test trace, hence record, everything it reaches. Mutant runs need no
help (each runs in a fresh process) and ordinary test runs never load this plugin.
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
