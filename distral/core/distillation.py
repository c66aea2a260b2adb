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
from typing import Literal, NamedTuple

import chex
import jax
import jax.numpy as jnp

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
    tau: float = 0.01
    """Teacher temperature of 'kl' and 'actor_mimic' (0.01: Rusu et al., 2016, for DQN
    teachers' Q-values; 1.0 reads a policy teacher's logits as they are)."""
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
