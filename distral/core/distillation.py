"""Teacher -> student distillation losses, pure and unbatched, rlax style.

Policy Distillation (Rusu et al., 2016, arXiv:1511.06295) and Actor-Mimic (Parisotto et
al., 2016, arXiv:1511.06342). A teacher data set D = {(s, q)} holds, at each state s, the
teacher's output vector q: Q-values of a value-based teacher, logits of a policy teacher.
Each function takes the arrays of ONE state and checks them; callers `jax.vmap` over
samples. The teacher's arrays are targets: no gradient flows into them.

- NLL:  -log pi_S(argmax_a q | s), only the teacher's best action.
- MSE:  ||q - q_S||^2, the student regresses the whole output vector.
- KL at temperature tau:  KL(softmax(q / tau) || softmax(z_S)) with z_S the student's
  logits; a small tau (0.01 in Rusu et al.) sharpens a value teacher toward its argmax.
- Actor-Mimic: the teacher policy pi_E = softmax(q / tau); policy regression is the
  cross-entropy -sum_a pi_E(a|s) log pi_S(a|s) (the KL above plus pi_E's entropy, a
  constant of the student: the same gradient), and feature regression
  ||f_i(h_S(s)) - h_E(s)||^2 maps the student's features through a small network f_i of
  teacher i onto that teacher's features h_E. Loss = policy + feature_cost * feature.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Generic, Literal, NamedTuple

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from distral.core.learning import ArrayT
from distral.core.networks import DistralNetwork, Params, Torso, make_network

Array = jax.Array
DistillLossKind = Literal["nll", "mse", "kl", "actor_mimic"]
DISTILL_LOSSES: tuple[str, ...] = ("nll", "mse", "kl", "actor_mimic")


def _check_pair(student: Array, teacher: Array) -> None:
    chex.assert_rank([student, teacher], 1)
    chex.assert_equal_shape([student, teacher])
    chex.assert_type([student, teacher], float)


def nll_loss(logits_s: Array, q_t: Array) -> Array:
    """-log pi_S(argmax_a q_t): the student's negative log-likelihood of the teacher's
    best action (Rusu et al., 2016)."""
    _check_pair(logits_s, q_t)
    best = jnp.argmax(jax.lax.stop_gradient(q_t))
    return -jax.nn.log_softmax(logits_s)[best]


def mse_loss(out_s: Array, q_t: Array) -> Array:
    """||q_t - out_s||^2: the student's output vector regresses the teacher's."""
    _check_pair(out_s, q_t)
    return jnp.sum(jnp.square(jax.lax.stop_gradient(q_t) - out_s))


def teacher_policy(q_t: Array, tau: float) -> Array:
    """softmax(q_t / tau): the Boltzmann policy of teacher outputs at temperature tau."""
    chex.assert_rank(q_t, 1)
    if not tau > 0:
        raise ValueError(f"tau={tau!r}; the temperature must be > 0")
    return jax.nn.softmax(jax.lax.stop_gradient(q_t) / tau)


def kl_loss(logits_s: Array, q_t: Array, tau: float) -> Array:
    """KL(softmax(q_t / tau) || softmax(logits_s)) (Rusu et al., 2016)."""
    _check_pair(logits_s, q_t)
    target = teacher_policy(q_t, tau)
    log_target = jax.nn.log_softmax(jax.lax.stop_gradient(q_t) / tau)
    # 0 log 0 = 0: a sharpened target puts exactly zero mass on some actions.
    terms = jnp.where(target > 0, target * (log_target - jax.nn.log_softmax(logits_s)), 0.0)
    return jnp.sum(terms)


def policy_regression_loss(logits_s: Array, q_t: Array, tau: float) -> Array:
    """-sum_a pi_E(a) log pi_S(a) with pi_E = softmax(q_t / tau): Actor-Mimic's policy
    regression (Parisotto et al., 2016)."""
    _check_pair(logits_s, q_t)
    return -jnp.sum(teacher_policy(q_t, tau) * jax.nn.log_softmax(logits_s))


def feature_regression_loss(predicted: Array, features_t: Array) -> Array:
    """||f_i(h_S(s)) - h_E(s)||^2, Actor-Mimic's feature regression: `predicted` is the
    student's features mapped by teacher i's regression network f_i onto h_E's size."""
    _check_pair(predicted, features_t)
    return jnp.sum(jnp.square(predicted - jax.lax.stop_gradient(features_t)))


@dataclasses.dataclass(frozen=True)
class DistillConfig:
    """Which distillation loss, and its coefficients. Hashable: a static jit argument."""

    loss: DistillLossKind = "kl"
    """'nll', 'mse', 'kl' (Policy Distillation) or 'actor_mimic'."""
    tau: float = 1.0
    """Teacher temperature of 'kl' and 'actor_mimic': 1.0 reads a policy teacher's logits
    as they are (the config's default too); 0.01 is Rusu et al.'s (2016) for DQN teachers'
    Q-values."""
    feature_cost: float = 0.01
    """Actor-Mimic's beta, the weight of feature regression; 0 turns it off. The paper
    sets it per experiment; 0.01 is our default, to be tuned with the presets."""

    def __post_init__(self) -> None:
        if self.loss not in DISTILL_LOSSES:
            raise ValueError(f"loss={self.loss!r}; valid choices: {', '.join(DISTILL_LOSSES)}")
        if not self.tau > 0:
            raise ValueError(f"tau={self.tau!r}; the temperature must be > 0")
        if not self.feature_cost >= 0:
            raise ValueError(f"feature_cost={self.feature_cost!r}; it must be >= 0")

    @property
    def uses_features(self) -> bool:
        """Whether the loss reads features (Actor-Mimic with feature regression on)."""
        return self.loss == "actor_mimic" and self.feature_cost > 0


class DistillMetrics(NamedTuple):
    policy: Array  # the output-matching term (NLL, MSE, KL or policy regression)
    feature: Array  # Actor-Mimic's feature regression (0 otherwise)
    agreement: Array  # 1 where the student's argmax is the teacher's


def distill_loss(
    out_s: Array,
    q_t: Array,
    config: DistillConfig,
    predicted: Array | None = None,
    features_t: Array | None = None,
) -> tuple[Array, DistillMetrics]:
    """The configured loss at one state, and its terms. `out_s` are the student's outputs
    (logits; its regression target under 'mse'), `q_t` the teacher's; `predicted` and
    `features_t` only for Actor-Mimic's feature regression."""
    if config.loss == "nll":
        policy = nll_loss(out_s, q_t)
    elif config.loss == "mse":
        policy = mse_loss(out_s, q_t)
    elif config.loss == "kl":
        policy = kl_loss(out_s, q_t, config.tau)
    else:
        policy = policy_regression_loss(out_s, q_t, config.tau)
    feature = jnp.zeros((), out_s.dtype)
    if config.uses_features:
        if predicted is None or features_t is None:
            raise ValueError("actor_mimic with feature_cost > 0 needs predicted and features_t")
        feature = feature_regression_loss(predicted, features_t)
    agreement = (jnp.argmax(out_s) == jnp.argmax(q_t)).astype(out_s.dtype)
    loss = policy + config.feature_cost * feature
    return loss, DistillMetrics(policy, feature, agreement)


# ----------------------------------------------------------------------------------------
# THE STUDENT'S LEARNER: a batch of (observation, teacher outputs, teacher features, task)
# ----------------------------------------------------------------------------------------

STUDENT_HEADS = ("per_task", "shared")


def student_network(
    heads: str, *, torso: Torso, num_tasks: int, num_actions: int
) -> DistralNetwork:
    """The multitask student (both papers): one torso shared by every task, with one
    policy head per task ('per_task', a known task label) or one head for all ('shared').
    Either way its features (`task_features`) do not depend on the task."""
    if heads not in STUDENT_HEADS:
        raise ValueError(f"heads={heads!r}; valid choices: {', '.join(STUDENT_HEADS)}")
    if heads == "shared":
        return make_network("shared", num_tasks=num_tasks, num_actions=num_actions, torso=torso)
    return make_network(
        "independent",
        num_tasks=num_tasks,
        num_actions=num_actions,
        torso=torso,
        task_columns="shared_torso",
    )


class Batch(NamedTuple, Generic[ArrayT]):
    """B samples of the per-task replays, task-major when drawn evenly from each task."""

    observation: ArrayT  # [B, *obs]
    teacher_outputs: ArrayT  # [B, A]
    teacher_features: ArrayT  # [B, D_max]: teacher i's D_i features, zero-padded
    task_id: ArrayT  # [B] int


class DistillState(NamedTuple):
    """The student's learner state; `params` are its network's (what evaluation, actors
    and later teachers read), `regression` Actor-Mimic's heads f_i."""

    params: Params
    regression: Params  # {"w": [N, D_student, D_max], "b": [N, D_max]}, or {} when unused
    opt_state: optax.OptState
    step: Array
    rng: Array


@dataclasses.dataclass(frozen=True)
class LearnerConfig:
    """The loss and, for feature regression, each teacher's feature size (static)."""

    loss: DistillConfig = DistillConfig()
    feature_dims: tuple[int, ...] = ()
    """D_i of teacher i (`Teacher.feature_dim`); needed only with feature regression."""

    def feature_mask(self) -> Array:
        """[N, D_max]: 1 on teacher i's D_i features, 0 on the padding."""
        d_max = max(self.feature_dims)
        return jnp.asarray([[1.0] * d + [0.0] * (d_max - d) for d in self.feature_dims])


def init_state(
    key: Array,
    network: DistralNetwork,
    optimizer: optax.GradientTransformation,
    config: LearnerConfig,
    example_obs: Array,
) -> DistillState:
    """Fresh student parameters, the regression heads f_i (when Actor-Mimic regresses
    features; they map the student's features onto teacher i's), and Adam's state."""
    params_key, head_key, rng = jax.random.split(key, 3)
    params = network.init(params_key, example_obs)
    regression: Params = {}
    if config.loss.uses_features:
        if len(config.feature_dims) != network.num_tasks:
            raise ValueError(
                f"feature_dims={config.feature_dims!r} needs one size per task "
                f"({network.num_tasks})"
            )
        d_student = network.task_features(params, example_obs, jnp.int32(0)).shape[-1]
        keys = jax.random.split(head_key, network.num_tasks)
        init = nn.initializers.variance_scaling(1.0, "fan_in", "truncated_normal")
        d_max = max(config.feature_dims)
        regression = {
            "w": jax.vmap(lambda k: init(k, (d_student, d_max), jnp.float32))(keys),
            "b": jnp.zeros((network.num_tasks, d_max)),
        }
    opt_state = optimizer.init((params, regression))
    return DistillState(params, regression, opt_state, jnp.zeros((), jnp.int32), rng)


DISTILL_METRICS = (
    "loss", "policy_loss", "feature_loss", "kl", "agreement", "entropy", "grad_norm",
)  # fmt: skip
PER_TASK_METRICS = ("kl", "entropy", "agreement")


def batch_loss(
    trainable: tuple[Params, Params],
    batch: Batch[Array],
    network: DistralNetwork,
    config: LearnerConfig,
) -> tuple[Array, dict[str, Array]]:
    """Mean `distill_loss` over the batch, its terms, and per task: KL(softmax(q/tau) ||
    pi_S) (whatever the loss), the student's entropy and its agreement with the teacher."""
    params, regression = trainable
    logits = network.apply(params, batch.observation, batch.task_id).logits
    predicted = features = None
    if config.loss.uses_features:
        mask = config.feature_mask()[batch.task_id]  # [B, D_max]
        student = network.task_features(params, batch.observation, jnp.int32(0))
        heads = jax.tree.map(lambda x: x[batch.task_id], regression)
        predicted = (jnp.einsum("bd,bde->be", student, heads["w"]) + heads["b"]) * mask
        features = batch.teacher_features * mask

    def one(out_s: Array, q_t: Array, pred: Array | None, feat: Array | None):
        return distill_loss(out_s, q_t, config.loss, pred, feat)

    loss, m = jax.vmap(one)(logits, batch.teacher_outputs, predicted, features)
    kl = jax.vmap(kl_loss, in_axes=(0, 0, None))(logits, batch.teacher_outputs, config.loss.tau)
    log_p = jax.nn.log_softmax(logits)
    entropy = -jnp.sum(jnp.exp(log_p) * log_p, axis=-1)
    metrics = {
        "loss": jnp.mean(loss),
        "policy_loss": jnp.mean(m.policy),
        "feature_loss": jnp.mean(m.feature),
        "kl": jnp.mean(kl),
        "agreement": jnp.mean(m.agreement),
        "entropy": jnp.mean(entropy),
    }
    one_hot = jax.nn.one_hot(batch.task_id, network.num_tasks)  # [B, N]
    count = one_hot.sum(0)
    for name, x in (("kl", kl), ("entropy", entropy), ("agreement", m.agreement)):
        total = (one_hot * x[:, None]).sum(0)
        metrics[f"{name}_per_task"] = jnp.where(count > 0, total / count, jnp.nan)
    return jnp.mean(loss), metrics


@functools.partial(jax.jit, static_argnames=("network", "optimizer", "config"))
def update_step(
    state: DistillState,
    batch: Batch,
    *,
    network: DistralNetwork,
    optimizer: optax.GradientTransformation,
    config: LearnerConfig,
) -> tuple[DistillState, dict[str, Array]]:
    """One Adam step of the student (and the regression heads) on a batch of samples."""
    trainable = (state.params, state.regression)
    grads, metrics = jax.grad(batch_loss, has_aux=True)(trainable, batch, network, config)
    updates, opt_state = optimizer.update(grads, state.opt_state, trainable)
    params, regression = optax.apply_updates(trainable, updates)
    metrics["grad_norm"] = optax.global_norm(grads)
    state = DistillState(params, regression, opt_state, state.step + 1, state.rng)
    return state, metrics
