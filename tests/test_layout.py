"""The package's architecture rules (issue 16), checked on the source itself.

- distral/core is pure JAX: importing all of it loads no Reverb, TensorFlow or Ray.
- No module imports another module's private (underscore) name.
- No function in distral/ is longer than 80 lines.
- Every name of the public surface (`distral.__all__`) resolves.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "distral"
CORE_MODULES = sorted(p.stem for p in (PACKAGE / "core").glob("*.py") if p.stem != "__init__")


def _sources() -> list[tuple[Path, ast.Module]]:
    return [(p, ast.parse(p.read_text())) for p in sorted(PACKAGE.rglob("*.py"))]


HEAVY = ("reverb", "tensorflow", "ray")

# A finder that makes reverb, tensorflow and ray unimportable, as on a machine without them.
_BLOCK = """
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {heavy!r}:
            raise ImportError(f"blocked: {{name}}")
sys.meta_path.insert(0, Block())
"""


def test_core_source_imports_no_reverb_tensorflow_or_ray():
    assert {"losses", "networks", "learning", "variants", "acting"} <= set(CORE_MODULES)
    imported = set()
    for path in (PACKAGE / "core").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                imported.add((node.module or "").split(".")[0])
    assert imported & set(HEAVY) == set()
    assert "distral" in imported and "jax" in imported  # the walk saw the imports


def test_rlax_loads_without_tensorflow_and_leaves_a_loaded_one_in_place():
    """`losses._import_rlax` hides TensorFlow while rlax loads (TFP would import it only to
    copy docstrings: seconds at every start-up), then makes it importable again; where
    TensorFlow is loaded already (Reverb's processes) it leaves it in place."""
    fresh = (
        "import sys\nimport distral.core.losses\n"
        "tf = [m for m in sys.modules if m.split('.')[0] == 'tensorflow']\n"
        "assert not tf, tf[:3]\n"
        "import tensorflow\n"
        "assert sys.modules['tensorflow'] is tensorflow and int(tensorflow.constant(2)) == 2\n"
    )
    loaded_first = (
        "import sys, tensorflow as tf\nimport distral.core.losses\n"
        "assert sys.modules['tensorflow'] is tf and int(tf.constant(2)) == 2\n"
    )
    for code in (fresh, loaded_first):
        result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        assert result.returncode == 0, result.stderr[-2000:]


def test_core_runs_where_reverb_tensorflow_and_ray_cannot_be_imported():
    """rlax's distrax pulls in tensorflow_probability, whose JAX substrate imports
    tensorflow when it is installed (only to copy docstrings): blocked here, core must
    still import and compute a jitted update step."""
    code = (
        _BLOCK.format(heavy=HEAVY)
        + "".join(f"import distral.core.{m}\n" for m in CORE_MODULES)
        + "import jax, jax.numpy as jnp\n"
        + "from distral.core import learning, networks, variants\n"
        + "from distral.core.losses import LossConfig\n"
        + "v = variants.get_variant('kl_ent_2col')\n"
        + "net = learning.build_network(v, num_tasks=2, num_actions=3,\n"
        + "    torso=networks.make_torso('mlp', hidden_sizes=[4]))\n"
        + "opt = learning.make_optimizer(1e-2, 40.0)\n"
        + "state = learning.init_training_state(\n"
        + "    jax.random.PRNGKey(0), net, opt, jnp.zeros((1, 5)))\n"
        + "T, B = 4, 2\n"
        + "batch = learning.Batch(observation=jnp.ones((T + 1, B, 5)),\n"
        + "    action=jnp.zeros((T + 1, B), jnp.int32), reward=jnp.ones((T + 1, B)),\n"
        + "    discount=jnp.ones((T + 1, B)), behaviour_logits=jnp.zeros((T + 1, B, 3)),\n"
        + "    task_id=jnp.arange(B))\n"
        + "cfg = LossConfig.from_variant(v, discount=0.9)\n"
        + "state2, m = learning.update_step(state, batch, network=net, optimizer=opt, config=cfg)\n"
        + "assert int(state2.step) == 1 and bool(jnp.isfinite(m['loss'])), m\n"
        + "heavy = sorted({m.split('.')[0] for m in sys.modules} & set("
        + repr(HEAVY)
        + "))\n"
        + "print('loaded:' + ','.join(heavy))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == "loaded:"


def test_the_single_process_runners_start_without_tensorflow_where_it_is_installed():
    """TensorFlow is installed (Reverb needs it), yet `distral train`, `distill` and
    `compare` do not load it (4-5 s of every start): rlax's tensorflow_probability would,
    only for docstrings (`losses._import_rlax`). Reverb's processes still can."""
    code = (
        "import sys\n"
        "import distral.cli, distral.train, distral.distill, distral.compare\n"
        "assert 'rlax' in sys.modules\n"
        "print('loaded:' + ','.join(sorted({m.split('.')[0] for m in sys.modules}"
        f" & set({HEAVY!r}))))\n"
        "import reverb, tensorflow\n"
        "print(tensorflow.constant(2).numpy() + 1)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == ["loaded:", "3"]


def test_no_module_imports_a_private_name_of_another():
    offenders = []
    for path, tree in _sources():
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("distral"):
                for alias in node.names:
                    if alias.name.startswith("_") and alias.name != "__version__":
                        offenders.append(f"{path.relative_to(PACKAGE)}: {alias.name}")
    assert offenders == []


def test_no_function_is_longer_than_80_lines():
    long = [
        f"{path.relative_to(PACKAGE)}:{node.lineno} {node.name} ({length} lines)"
        for path, tree in _sources()
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and (length := node.end_lineno - node.lineno + 1) > 80  # type: ignore[operator]
    ]
    assert long == []


def test_every_public_name_resolves():
    """`distral.NAME` for each name of `distral.__all__` (the lazy table names modules)."""
    import distral

    missing = [name for name in distral.__all__ if not hasattr(distral, name)]
    assert missing == []
