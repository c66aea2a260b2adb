# The two set-up commands of the README: `make demo` (install + main job) and
# `make test` (install + tests). Both are idempotent: the virtualenv is (re)built from the
# lock file only when the lock file or pyproject.toml changed.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint format lock mutate mutate-recheck clean

$(STAMP): requirements/lock.txt pyproject.toml
	@command -v $(PY) >/dev/null 2>&1 || { \
	  echo "error: '$(PY)' not found: distral needs Python 3.11 (dm-reverb 0.14.0 has no wheel for newer Pythons). Install it (e.g. 'pyenv install 3.11' or 'apt-get install python3.11 python3.11-venv') or pass PY=/path/to/python3.11" >&2; exit 2; }
	@$(PY) -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' || { \
	  echo "error: '$(PY)' is Python $$($(PY) -c 'import platform; print(platform.python_version())'), distral needs Python 3.11: pass PY=/path/to/python3.11" >&2; exit 2; }
	@[ -x $(BIN)/python ] && $(BIN)/python -c 'import sys, pip; sys.exit(sys.version_info[:2] != (3, 11))' 2>/dev/null || { \
	  rm -rf $(VENV); $(PY) -m venv $(VENV) || { rm -rf $(VENV); echo "error: '$(PY) -m venv' failed: install the venv module (e.g. 'apt-get install python3.11-venv')" >&2; exit 2; }; }
	$(BIN)/python -m pip install --quiet -r requirements/lock.txt
	$(BIN)/python -m pip install --quiet --no-deps -e .
	@touch $@

# The main job: a real two-room experiment (8 tasks, kl_ent_2col, ~1 min on 2 cores).
demo: $(STAMP)
	$(BIN)/distral train experiments/two_room.yaml --variant kl_ent_2col

test: $(STAMP)
	$(BIN)/ruff check distral tests benchmarks
	$(BIN)/ruff format --check distral tests benchmarks
	$(BIN)/mypy distral
	$(BIN)/python -m pytest -n 2 --durations=10 tests

lint: $(STAMP)
	$(BIN)/ruff check distral tests benchmarks
	$(BIN)/ruff format --check distral tests benchmarks
	$(BIN)/mypy distral

format: $(STAMP)
	$(BIN)/ruff format distral tests benchmarks
	$(BIN)/ruff check --fix distral tests benchmarks

# Mutation testing (mutmut, [tool.mutmut] in pyproject.toml) of the core modules against the
# fast tests; mutmut works in mutants/ (git-ignored). MUTANTS narrows the run to a glob of
# mutant names, e.g. `make mutate MUTANTS='distral.core.losses.*'`. Survivors:
# `$(BIN)/mutmut results`, one diff: `$(BIN)/mutmut show NAME` (BUILD_NOTES.md).
# JAX's persistent compilation cache (in mutants/) lets a mutant's test process reuse the
# compiled programs its mutant does not change (a changed program has another cache key).
MUTANTS ?=
mutate: $(STAMP)
	JAX_COMPILATION_CACHE_DIR=$(CURDIR)/mutants/jax-cache JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=0 \
	  JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES=0 $(BIN)/mutmut run --max-children 2 $(MUTANTS)
	$(BIN)/mutmut results

# Re-check survivors, each in a fresh process (tests/mutmut_recheck.py): mutants of code that
# runs at import, and tests added since the run. NAMES='name ...' TESTS='tests/test_x.py ...'
mutate-recheck: $(STAMP)
	$(BIN)/python tests/mutmut_recheck.py --tests $(TESTS) -- $(NAMES)

# Regenerate the lock file from pyproject.toml (pip-tools, in a throwaway virtualenv).
lock:
	$(PY) -m venv /tmp/distral-lock && /tmp/distral-lock/bin/pip install --quiet pip-tools
	/tmp/distral-lock/bin/pip-compile --quiet --no-emit-index-url --no-emit-find-links \
	  --strip-extras --extra dev -o requirements/lock.txt pyproject.toml

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache mutants
