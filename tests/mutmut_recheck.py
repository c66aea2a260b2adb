"""Re-checks mutmut's survivors in fresh processes: `make mutate-recheck NAMES='...'`.

`make mutate` forks every mutant from a server that has already imported the code, so a
mutant of a function that runs at import time (the variants table is built by `_a3c` and
`_distral` when `distral.core.variants` is imported) can never show: it "survives" whatever
the tests do. Tests added after a run are also only seen by mutmut's next run. This script
applies each named mutant (its diff from `mutmut show NAME`) to a copy of the source tree,
runs the given tests in a new Python process, and prints `NAME killed` or `NAME SURVIVED`.

    python tests/mutmut_recheck.py --tests tests/test_variants.py -- NAME [NAME ...]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def mutant_source(name: str) -> tuple[str, str, str]:
    """(path, original function text, mutated function text) of mutant `name`."""
    shown = subprocess.run(
        [str(Path(sys.executable).with_name("mutmut")), "show", name],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    path = next(line[4:].strip() for line in shown if line.startswith("--- "))
    body = [
        line
        for line in shown
        if line[:1] in (" ", "-", "+") and not line.startswith(("---", "+++"))
    ]
    old = "\n".join(line[1:] for line in body if line[0] in " -")
    new = "\n".join(line[1:] for line in body if line[0] in " +")
    return path, old, new


def apply(tree: Path, name: str) -> tuple[Path, str] | None:
    """Writes mutant `name` into `tree`; returns (file, its original text), or None when its
    function cannot be found exactly once (mutmut shows methods dedented by one level)."""
    path, old, new = mutant_source(name)
    target = tree / path
    original = target.read_text()
    for indent in ("", "    "):
        o = "\n".join(indent + line if line else line for line in old.split("\n"))
        n = "\n".join(indent + line if line else line for line in new.split("\n"))
        if original.count(o) == 1:
            target.write_text(original.replace(o, n))
            return target, original
    return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tests", nargs="+", required=True, help="pytest arguments")
    parser.add_argument("names", nargs="+", help="mutant names (mutmut results)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="mutmut-recheck-") as tmp:
        tree = Path(tmp) / "tree"
        ignore = shutil.ignore_patterns(".git", ".venv", "mutants", "*_cache", "__pycache__")
        shutil.copytree(ROOT, tree, ignore=ignore)
        env = {**os.environ, "PYTHONPATH": str(tree)}
        for name in args.names:
            applied = apply(tree, name)
            if applied is None:
                print(f"{name} NOT-APPLIED", flush=True)
                continue
            target, original = applied
            try:
                pytest = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider"]
                result = subprocess.run(
                    [*pytest, *args.tests],
                    cwd=tree,
                    env=env,
                    capture_output=True,
                )
            finally:
                target.write_text(original)
            verdicts = {0: "SURVIVED", 5: "NO-TESTS-RAN"}  # pytest: 1 failed, 2 broken
            print(f"{name} {verdicts.get(result.returncode, 'killed')}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
