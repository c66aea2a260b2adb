"""The `distral` command line, run as a user runs it (a subprocess)."""

import json
import subprocess
import sys

import pytest

from distral.core.variants import VARIANTS


def run(*args):
    return subprocess.run(
        [sys.executable, "-m", "distral.cli", *args], capture_output=True, text=True, timeout=120
    )


def test_variants_prints_the_seven_and_the_gated_ones():
    p = run("variants")
    assert p.returncode == 0, p.stderr
    rows = p.stdout.strip().splitlines()[2:]
    assert [r.split()[0] for r in rows] == list(VARIANTS)
    assert rows[6].split()[7:9] == ["0.5", "30"]  # kl_ent_2col: alpha, beta


def test_variants_resolves_overrides_as_json():
    p = run("variants", "kl_ent_2col", "--alpha", "0.3", "--beta", "5", "--json")
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["alpha"] == 0.3
    assert json.loads(p.stdout)["beta"] == 5.0


@pytest.mark.parametrize(
    "args, fragment",
    [
        (("variants", "nope"), "unknown variant 'nope'; valid choices: a3c,"),
        (("variants", "kl_ent_2col", "--alpha", "1.5"), "alpha=1.5 is outside [0, 1]"),
        (("variants", "kl_ent_2col", "--beta", "0"), "beta=0.0 must be > 0"),
        (("variants", "kl_ent_2col", "--beta", "x"), "invalid float value: 'x'"),
        (("frobnicate",), "invalid choice: 'frobnicate'"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args, fragment):
    p = run(*args)
    assert p.returncode == 2
    assert p.stdout == ""
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("distral: error: ")
    assert fragment in lines[0]
