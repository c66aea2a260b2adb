"""Config loading: strict keys and types, --set, YAML round trip, --help coverage."""

import dataclasses
from pathlib import Path

import pytest

from distral import config as cfg
from distral.core.variants import VARIANTS


def test_defaults_and_overrides_compose(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("variant: kl_2col\nenv:\n  num_tasks: 4\nlearning_rate: 3e-4\n")
    c = cfg.load_config(path, ["env.max_steps=50", "hidden_sizes=[8, 8]"], {"seeds": [1, 2]})
    assert (c.variant, c.env.num_tasks, c.env.max_steps) == ("kl_2col", 4, 50)
    assert c.learning_rate == 3e-4  # YAML 1.1 reads 3e-4 as a string; float fields accept it
    assert c.hidden_sizes == (8, 8) and c.seeds == (1, 2)
    assert c.env.layout == "default"  # untouched nested defaults survive a partial section


def test_yaml_round_trip(tmp_path):
    c = cfg.load_config(
        None, ["env.goals=[[1, 1], [3, 12]]", "env.num_tasks=2", "n_step=5", "returns=vtrace"]
    )
    path = tmp_path / "config.yaml"
    path.write_text(cfg.dump_yaml(c))
    assert cfg.load_config(path) == c
    assert c.env.goals == ((1, 1), (3, 12))


@pytest.mark.parametrize(
    "sets, message",
    [
        (["bogus=1"], "unknown config key 'bogus'; valid keys: algorithm, variant, alpha,"),
        (["env.bogus=1"], "unknown config key 'env.bogus'; valid keys: env.name,"),
        (["unroll_length=2.5"], "unroll_length=2.5 must be of type int"),
        (["unroll_length=true"], "unroll_length=True must be of type int"),
        (["discount=abc"], "discount='abc' must be of type float"),
        (["hidden_sizes=7"], "hidden_sizes=7 must be a list"),
        (["env.goals=[[1, 2, 3]]"], "env.goals[0]=[1, 2, 3] must have 2 items"),
        (["env=3"], "env must be a mapping, got 3"),
        (["seeds=[1, 1]"], "seeds=[1, 1] must be distinct and non-empty"),
        (["num_envs_per_task=0"], "num_envs_per_task=0 must be >= 1"),
        (
            ["torso=resnet"],
            "torso='resnet'; valid choices: mlp, nature_cnn, impala_resnet, minatar_cnn",
        ),
        (["env.name=mujoco"], "env.name='mujoco'; valid choices: two_room, minatar, atari"),
        (["env.name=atari", "torso=nature_cnn"], "env.games must name the Atari games"),
        (["env.games=[pong]"], "env.games is for minatar and atari"),
        (["env.name=minatar", "torso=minatar_cnn", "env.games=[pacman]"], "env.games: unknown"),
        (["variant=kl_ent_2col", "alpha=2"], "alpha=2.0 is outside [0, 1]"),
        (["distilled_lr_scale=0"], "distilled_lr_scale=0.0 must be > 0"),
        (["torso_width=0", "env.name=minatar", "torso=minatar_cnn"], "torso_width=0 must be >= 1"),
        (["torso_width=256"], "torso_width=256 sizes a CNN torso; the mlp torso's layers are"),
        (["nokey"], "--set 'nokey' must look like key=value"),
    ],
)
def test_bad_values_are_one_line_config_errors(sets, message):
    with pytest.raises(cfg.ConfigError) as e:
        cfg.load_config(None, sets)
    assert str(e.value).startswith(message), str(e.value)
    assert "\n" not in str(e.value)


def test_bad_files(tmp_path):
    with pytest.raises(cfg.ConfigError, match="does not exist"):
        cfg.load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [1, 2\n")
    with pytest.raises(cfg.ConfigError, match="is not valid YAML at line"):
        cfg.load_config(bad)
    bad.write_text("- 1\n- 2\n")
    with pytest.raises(cfg.ConfigError, match="must hold a mapping"):
        cfg.load_config(bad)
    # safe_load only: a python tag is refused, not executed.
    bad.write_text("variant: !!python/object/apply:os.system ['true']\n")
    with pytest.raises(cfg.ConfigError, match="not valid YAML"):
        cfg.load_config(bad)


def test_help_documents_every_field():
    text = cfg.describe_fields()
    for f in dataclasses.fields(cfg.TrainConfig):
        assert f"  {f.name}" in text
    for f in dataclasses.fields(cfg.EnvConfig):
        assert f"  env.{f.name} (" in text
    assert "unroll_length (int, default 20): agent steps per unroll" in text


def test_derived_values():
    c = cfg.load_config(
        None, ["num_envs_per_task=4", "unroll_length=5", "log_every=3", "env_steps_per_task=100"]
    )
    assert c.steps_per_update == 20
    assert c.num_log_steps == 2  # ceil(100 / 60)


def test_per_variant_settings_apply_to_their_variant_only(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text(
        "learning_rate: 0.001\n"
        "per_variant:\n"
        "  a3c: {entropy_cost: 0.03}\n"
        "  kl_2col: {beta: 10, learning_rate: 0.003}\n"
    )
    a3c = cfg.load_config(path, overrides={"variant": "a3c"})
    assert (a3c.entropy_cost, a3c.learning_rate) == (0.03, 0.001)
    kl = cfg.load_config(path, overrides={"variant": "kl_2col"})
    assert (kl.beta, kl.learning_rate, kl.entropy_cost) == (10.0, 0.003, None)
    other = cfg.load_config(path, overrides={"variant": "kl_ent_1col"})
    assert (other.beta, other.learning_rate) == (None, 0.001)
    # --set and flags beat the per-variant entry
    assert (
        cfg.load_config(path, ["learning_rate=0.0005"], {"variant": "kl_2col"}).learning_rate
        == 5e-4
    )
    assert "per_variant" not in cfg.dump_yaml(kl)


def test_two_room_preset_resolves_for_every_variant():
    """The preset BUILD_NOTES.md's results come from (issue 15): the linear network, lr
    3e-2, h at 1/32, 8 envs x 10 steps, the 2col column in logit units with the expected
    regulariser, entropy 0.03 for a3c and a3c_2col; every variant valid. The distributed
    preset shares the learner's settings."""
    root = Path(__file__).resolve().parents[1] / "experiments"
    for name in VARIANTS:
        c = cfg.load_config(root / "two_room.yaml", overrides={"variant": name})
        assert c.hidden_sizes == () and c.learning_rate == 0.03
        assert c.distilled_lr_scale == 0.03125
        assert (c.num_envs_per_task, c.unroll_length) == (8, 10)
        assert (c.task_column_output, c.regulariser) == ("logits", "expected")
        assert c.entropy_cost == (0.03 if name in ("a3c", "a3c_2col") else None)
    d = cfg.load_config(root / "two_room_distributed.yaml")
    assert (d.variant, d.hidden_sizes, d.learning_rate) == ("kl_ent_2col", (), 0.03)
    assert d.distilled_lr_scale == 0.03125 and d.distributed.refresh_lag == 1


@pytest.mark.parametrize(
    "text, message",
    [
        ("per_variant: {a3x: {beta: 1}}", "per_variant.a3x: unknown variant"),
        ("per_variant: {a3c: {beta: 1}}", "variant 'a3c' has no beta"),
        ("per_variant: {a3c: {gamma: 1}}", "unknown config key 'gamma'"),
        ("per_variant: [a3c]", "per_variant must map variant names to settings"),
    ],
)
def test_per_variant_errors(tmp_path, text, message):
    path = tmp_path / "p.yaml"
    path.write_text(text + "\n")
    with pytest.raises(cfg.ConfigError, match=message):
        cfg.load_config(path, overrides={"variant": "kl_2col"})


def test_a_run_config_older_than_a_learner_default_loads_as_it_ran(tmp_path):
    """A run's config.yaml written before `task_column_output` / `regulariser` existed ran
    the literal 2col form with the sampled regulariser: resuming it must keep those."""
    c = cfg.load_config(None, ["beta=20"])
    text = cfg.dump_yaml(c)
    (tmp_path / "config.yaml").write_text(text)
    assert cfg.load_run_config(tmp_path) == c  # a current run: as written
    old = "".join(
        line
        for line in text.splitlines(keepends=True)
        if not line.startswith(("task_column_output:", "regulariser:"))
    )
    (tmp_path / "config.yaml").write_text(old)
    resumed = cfg.load_run_config(tmp_path, overrides={"seeds": [3]})
    assert (resumed.task_column_output, resumed.regulariser) == ("f", "sampled")
    assert resumed.beta == 20 and resumed.seeds == (3,)
    assert cfg.load_config(tmp_path / "config.yaml").regulariser == "expected"  # today's


def test_the_apex_section_checks_its_values():
    load_config, ConfigError = cfg.load_config, cfg.ConfigError
    config = load_config(None, ["algorithm=apex", "apex.n_step=5", "apex.selector=uniform"])
    assert (config.apex.n_step, config.apex.selector) == (5, "uniform")
    bad = {
        "apex.selector=fifo": r"apex.selector='fifo'; valid choices: prioritized, uniform",
        "apex.n_step=0": r"apex.n_step=0 must be >= 1",
        "apex.min_replay_per_task=200000": r"apex.min_replay_per_task=200000 exceeds",
        "apex.batch_per_task=6000": r"apex.batch_per_task=6000 exceeds",
        "apex.epsilon_base=0": r"apex.epsilon_base=0.0 is outside \(0, 1\]",
        "apex.priority_exponent=-1": r"apex.priority_exponent=-1.0 must be >= 0",
        "apex.is_exponent_start=2": r"apex.is_exponent_start=2.0 is outside \[0, 1\]",
        "apex.samples_per_insert=0": r"apex.samples_per_insert=0.0 must be > 0",
    }
    for setting, message in bad.items():
        with pytest.raises(ConfigError, match=message):
            load_config(None, [setting])
