"""Distral losses (Teh et al., 2017, arXiv:1707.04175), pure and unbatched, rlax style.

Each function takes the arrays of ONE unroll of one task and checks them; callers
`jax.vmap` over unrolls. An unroll of T transitions carries T+1 observations, so the
network outputs (`logits_t`, `distilled_logits_t`, `v_t`) have T+1 entries and the
transition quantities (`a_t`, `r_t`, `discount_t`, `behaviour_logits_t`) have T.

The objective (DESIGN.md section 1), with alpha = c_KL/(c_KL+c_Ent), beta = 1/(c_KL+c_Ent):

    J = sum_i E_{pi_i}[ sum_t g^t (r_t + (alpha/beta) log pi_0 - (1/beta) log pi_i) ].

Its gradient is a policy gradient on the regularised reward (a reward: no gradient
through its log-probabilities), plus the direct gradient of (alpha/beta) log pi_0, whose
expectation under pi_i is the distillation term below. The (1/beta) log pi_i term's
direct gradient has zero expectation and is dropped.

The regulariser of the step being scored can enter in two ways with the same expected
gradient (`LossConfig.regulariser`):
- 'sampled': r_reg_t uses log pi_0(a_t|s_t) and log pi_i(a_t|s_t) of the action taken, and
  its gradient comes only through the policy-gradient term;
- 'expected' (default): step t's regulariser is its expectation over pi_i's actions,
  E_a[(alpha/beta) log pi_0(a|s_t) - (1/beta) log pi_i(a|s_t)]
  = ((1 - alpha) H(pi_i) - alpha KL(pi_i || pi_0)) / beta at s_t, used as a reward in the
  returns and differentiated exactly into pi_i (`regulariser_loss`). Later steps still
  enter step t's return as rewards. The sampled form's signal vanishes on a saturated
  pi_i (a never-sampled action carries no -log pi_i bonus); the expected form keeps a
  gradient toward pi_0 and higher entropy there, and its reward stays bounded when the
  acting policy lagged the learner's.

Every term is a mean over the T steps of the unroll, so their relative scale is that of
the objective's gradient (tests/test_losses.py proves it by exact enumeration).
"""

from __future__ import annotations

import dataclasses
import sys
from types import ModuleType
from typing import Literal, NamedTuple, cast

import chex
import jax
import jax.numpy as jnp

from distral.core.variants import Variant


def _import_rlax() -> ModuleType:
    """rlax imports distrax, whose tensorflow_probability (JAX substrate) imports TensorFlow
    when it is installed (Reverb brings it), only to copy docstrings: 4-5 s at start-up of
    every process that trains, and more at exit. Unless TensorFlow is loaded already, it is
    hidden while rlax loads, so TFP takes the path it takes where TensorFlow is not
    installed; then it is importable again (Reverb's processes import it)."""
    if "tensorflow" in sys.modules:
        import rlax
    else:
        sys.modules["tensorflow"] = None  # type: ignore[assignment]  # makes it ImportError
        try:
            import rlax
        finally:
            del sys.modules["tensorflow"]
    return rlax


rlax = _import_rlax()

# rlax annotates its results as chex.Array, a union with numpy arrays and scalars; on jax
# inputs they are jax.Array, which the casts below record.
Array = jax.Array
ReturnsKind = Literal["nstep", "vtrace"]
RegulariserKind = Literal["expected", "sampled"]


@dataclasses.dataclass(frozen=True)
class LossConfig:
    """Coefficients of `distral_loss`. Hashable, so it can be a static jit argument."""

    alpha: float = 0.0
    """KL share alpha = c_KL / (c_KL + c_Ent) (used only when `distill`)."""
    beta: float = 1.0
    """Inverse regularisation strength 1 / (c_KL + c_Ent) (used only when `distill`)."""
    distill: bool = False
    """Regularised reward and distillation term on (the Distral rows)."""
    entropy_cost: float = 0.0
    """A3C entropy bonus cost (the A3C rows)."""
    discount: float = 0.99
    """Discount g per agent step, multiplied into the environment's discount."""
    returns: ReturnsKind = "nstep"
    """'nstep': bootstrapped returns (on-policy, A3C); 'vtrace': IMPALA off-policy targets."""
    n_step: int | None = None
    """Steps before bootstrapping for 'nstep'; None: bootstrap from the unroll's end (A3C)."""
    value_cost: float = 0.5
    """Weight of the value term 0.5 * (target - V)^2."""
    clip_rho: float = 1.0
    """V-trace rho-bar (Espeholt et al., 2018, arXiv:1802.01561)."""
    clip_pg_rho: float = 1.0
    """V-trace clip of the importance weight in the policy-gradient advantage."""
    regulariser: RegulariserKind = "expected"
    """How step t's own regulariser enters (Distral rows): 'expected' over pi_i's actions,
    differentiated exactly, or 'sampled' at a_t (see the module docstring)."""
    sparsity_cost: float = 0.0
    """Gated sub-policies: cost of the sparsity loss sum_k E[sigma_k] (`learning.gate_terms`)."""
    temporal_cost: float = 0.0
    """Gated sub-policies: cost of the gates' temporal-consistency loss."""

    def __post_init__(self) -> None:
        if self.distill and not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"alpha={self.alpha!r} is outside [0, 1]")
        if self.distill and not self.beta > 0.0:
            raise ValueError(f"beta={self.beta!r} must be > 0")
        if not 0.0 <= self.discount <= 1.0:
            raise ValueError(f"discount={self.discount!r} is outside [0, 1]")
        if self.returns not in ("nstep", "vtrace"):
            raise ValueError(f"returns={self.returns!r}; valid choices: nstep, vtrace")
        if self.n_step is not None and self.n_step < 1:
            raise ValueError(f"n_step={self.n_step!r} must be >= 1")
        if self.regulariser not in ("expected", "sampled"):
            raise ValueError(f"regulariser={self.regulariser!r}; valid choices: expected, sampled")

    @classmethod
    def from_variant(cls, variant: Variant, **kwargs: object) -> LossConfig:
        """The loss coefficients of a resolved variant; kwargs set the other fields."""
        return cls(
            alpha=variant.alpha if variant.distill and variant.alpha is not None else 0.0,
            beta=variant.beta if variant.distill and variant.beta is not None else 1.0,
            distill=variant.distill,
            entropy_cost=variant.entropy_cost,
            **kwargs,  # type: ignore[arg-type]
        )


class LossMetrics(NamedTuple):
    policy_loss: Array
    value_loss: Array
    distill_loss: Array
    entropy_loss: Array
    kl: Array
    """Mean over the unroll of KL(pi_i || pi_0)."""
    entropy: Array
    """Mean entropy of pi_i."""
    distilled_entropy: Array
    """Mean entropy of pi_0."""
    regularised_reward: Array
    """Mean regularised reward of the unroll."""
    regulariser: Array
    """Mean of its regulariser part (regularised reward minus environment reward)."""
    regulariser_loss: Array
    """-(mean expected regulariser), differentiated into pi_i ('expected'; else 0)."""
    logit_spread: Array
    """Mean over steps of max_a - min_a of pi_i's logits: how saturated pi_i is."""


def regularised_reward(
    r_t: Array, log_pi0_a_t: Array, log_pi_a_t: Array, alpha: float, beta: float
) -> Array:
    """r_t + (alpha/beta) log pi_0(a_t|s_t) - (1/beta) log pi_i(a_t|s_t), as a reward.

    The log-probabilities are stop-gradiented: r_reg is a reward, not a loss.
    """
    chex.assert_rank([r_t, log_pi0_a_t, log_pi_a_t], 1)
    chex.assert_equal_shape([r_t, log_pi0_a_t, log_pi_a_t])
    bonus = (alpha / beta) * log_pi0_a_t - (1.0 / beta) * log_pi_a_t
    return r_t + jax.lax.stop_gradient(bonus)


def expected_regulariser(
    logits_t: Array, distilled_logits_t: Array, alpha: float, beta: float
) -> Array:
    """E_{a~pi_i}[(alpha/beta) log pi_0(a|s_t) - (1/beta) log pi_i(a|s_t)] per step, [T].

    Equals ((1 - alpha) H(pi_i) - alpha KL(pi_i || pi_0)) / beta. pi_0 is stop-gradiented:
    the gradient reaches pi_i only (its exact gradient is the sampled regulariser's
    expected policy-gradient contribution); pi_0's is the distillation term.
    """
    chex.assert_rank([logits_t, distilled_logits_t], 2)
    chex.assert_equal_shape([logits_t, distilled_logits_t])
    log_pi = jax.nn.log_softmax(logits_t)
    log_pi0 = jax.lax.stop_gradient(jax.nn.log_softmax(distilled_logits_t))
    return jnp.sum(jnp.exp(log_pi) * (alpha * log_pi0 - log_pi), axis=-1) / beta


def n_step_returns(r_t: Array, discount_t: Array, v_t: Array, n: int | None = None) -> Array:
    """Bootstrapped n-step return targets G_0..G_{T-1} (rlax; scans backwards).

    `v_t` holds the values of s_1..s_T. With n=None every step bootstraps from v(s_T):
    G_t = r_t + d_t G_{t+1}, G_T = v(s_T), A3C's forward view.
    """
    chex.assert_rank([r_t, discount_t, v_t], 1)
    if n is None or n >= r_t.shape[0]:
        return cast(Array, rlax.lambda_returns(r_t, discount_t, v_t, lambda_=1.0))
    return cast(Array, rlax.n_step_bootstrapped_returns(r_t, discount_t, v_t, n))


def distillation_loss(
    logits_t: Array, distilled_logits_t: Array, alpha: float, beta: float
) -> Array:
    """-(alpha/beta) mean_t sum_a sg[pi_i(a|s_t)] log pi_0(a|s_t).

    Its gradient is (alpha/beta) mean_t sum_a (pi_0 - pi_i) grad h(a|s_t), i.e. minus the
    paper's distillation gradient; it reaches only the parameters of pi_0. The stop-gradient
    on pi_i is what makes this the objective's gradient (DESIGN.md 1.2).
    """
    chex.assert_rank([logits_t, distilled_logits_t], 2)
    chex.assert_equal_shape([logits_t, distilled_logits_t])
    pi_t = jax.lax.stop_gradient(jax.nn.softmax(logits_t))
    log_pi0_t = jax.nn.log_softmax(distilled_logits_t)
    return -(alpha / beta) * jnp.mean(jnp.sum(pi_t * log_pi0_t, axis=-1))


def kl_divergence(logits_t: Array, distilled_logits_t: Array) -> Array:
    """KL(pi_i || pi_0) per step, from logits [..., A].

    Kept here rather than `distrax.Softmax(...).kl_divergence` (what
    `rlax.categorical_kl_divergence` calls): distrax log-softmaxes the logits twice, which
    moves the logged KL by 1-2 float32 ulps (BUILD_NOTES.md, "rlax/distrax for KL").
    """
    log_pi = jax.nn.log_softmax(logits_t)
    log_pi0 = jax.nn.log_softmax(distilled_logits_t)
    return jnp.sum(jnp.exp(log_pi) * (log_pi - log_pi0), axis=-1)


def entropy(logits_t: Array) -> Array:
    """Entropy per step, from logits [..., A].

    As `rlax.softmax().entropy` up to 1-2 float32 ulps (distrax log-softmaxes twice); this
    one keeps the logged entropy of earlier runs bit for bit (see `kl_divergence`).
    """
    log_pi = jax.nn.log_softmax(logits_t)
    return -jnp.sum(jnp.exp(log_pi) * log_pi, axis=-1)


def value_errors_and_advantages(
    v_t: Array,
    r_t: Array,
    discount_t: Array,
    log_pi_a_t: Array,
    behaviour_logits_t: Array,
    a_t: Array,
    config: LossConfig,
) -> tuple[Array, Array]:
    """Value errors (target - V(s_t)) and policy-gradient advantages of one unroll, [T] each.

    'vtrace': IMPALA's off-policy targets, with importance weights pi_i / mu from the
    (stop-gradiented) log pi_i(a_t|s_t) and the behaviour logits; 'nstep': bootstrapped
    returns (`n_step_returns`), for which the advantage is the value error. `v_t` holds
    V(s_0..s_T); `discount_t` is the total discount (the config's times the environment's).
    """
    chex.assert_rank([v_t, r_t, discount_t, log_pi_a_t], 1)
    v_tm1, v_boot = v_t[:-1], v_t[1:]
    if config.returns == "vtrace":
        log_mu_a = rlax.batched_index(jax.nn.log_softmax(behaviour_logits_t), a_t)
        rho_tm1 = jnp.exp(jax.lax.stop_gradient(log_pi_a_t) - log_mu_a)
        vtrace = rlax.vtrace_td_error_and_advantage(
            v_tm1,
            v_boot,
            r_t,
            discount_t,
            rho_tm1,
            clip_rho_threshold=config.clip_rho,
            clip_pg_rho_threshold=config.clip_pg_rho,
        )
        return vtrace.errors, vtrace.pg_advantage
    targets = jax.lax.stop_gradient(n_step_returns(r_t, discount_t, v_boot, config.n_step))
    return targets - v_tm1, targets - v_tm1


def distral_loss(
    logits_t: Array,
    distilled_logits_t: Array,
    v_t: Array,
    a_t: Array,
    r_t: Array,
    discount_t: Array,
    behaviour_logits_t: Array,
    config: LossConfig,
) -> tuple[Array, LossMetrics]:
    """The learner loss of one unroll of one task, for any of the seven variants.

    Args:
      logits_t: [T+1, A] logits of pi_i at s_0..s_T.
      distilled_logits_t: [T+1, A] logits h of pi_0 at s_0..s_T (ignored without `distill`).
      v_t: [T+1] values V_i(s_0..s_T).
      a_t: [T] actions taken at s_0..s_{T-1}.
      r_t: [T] environment rewards received after a_t.
      discount_t: [T] environment discounts after a_t (0 at episode end).
      behaviour_logits_t: [T, A] logits of the policy that acted (for V-trace).
      config: the variant's coefficients.

    Returns:
      (scalar loss, LossMetrics).
    """
    chex.assert_rank([logits_t, distilled_logits_t, v_t, a_t, r_t, discount_t], [2, 2, 1, 1, 1, 1])
    chex.assert_rank(behaviour_logits_t, 2)
    chex.assert_type([a_t, r_t, discount_t], [int, float, float])
    chex.assert_equal_shape([logits_t, distilled_logits_t])
    chex.assert_equal_shape([a_t, r_t, discount_t])
    chex.assert_equal_shape_prefix([logits_t, v_t], 1)
    if logits_t.shape[0] != a_t.shape[0] + 1:
        raise ValueError(f"logits_t has {logits_t.shape[0]} steps, expected T+1={a_t.shape[0] + 1}")

    # REWARDS AND RETURNS
    pi_logits, h_logits = logits_t[:-1], distilled_logits_t[:-1]
    log_pi_a = cast(Array, rlax.batched_index(jax.nn.log_softmax(pi_logits), a_t))
    own_t = jnp.zeros_like(r_t)  # step t's expected regulariser, with its gradient
    if config.distill and config.regulariser == "expected":
        own_t = expected_regulariser(pi_logits, h_logits, config.alpha, config.beta)
        rewards = r_t + jax.lax.stop_gradient(own_t)
    elif config.distill:
        log_pi0_a = cast(Array, rlax.batched_index(jax.nn.log_softmax(h_logits), a_t))
        rewards = regularised_reward(r_t, log_pi0_a, log_pi_a, config.alpha, config.beta)
    else:
        rewards = r_t
    value_errors, advantages = value_errors_and_advantages(
        v_t, rewards, config.discount * discount_t, log_pi_a, behaviour_logits_t, a_t, config
    )

    # TERMS
    weights = jnp.ones_like(r_t)
    policy_loss = cast(Array, rlax.policy_gradient_loss(pi_logits, a_t, advantages, weights))
    value_loss = 0.5 * jnp.mean(jnp.square(value_errors))
    if config.distill:
        distill = distillation_loss(pi_logits, h_logits, config.alpha, config.beta)
    else:
        distill = jnp.zeros(())
    entropy_loss = cast(Array, rlax.entropy_loss(pi_logits, weights))  # -mean entropy.
    regulariser_loss = -jnp.mean(own_t)
    loss = policy_loss + config.value_cost * value_loss + distill + regulariser_loss
    if config.entropy_cost:
        loss = loss + config.entropy_cost * entropy_loss

    metrics = LossMetrics(
        policy_loss=policy_loss,
        value_loss=value_loss,
        distill_loss=distill,
        entropy_loss=entropy_loss,
        kl=jnp.mean(kl_divergence(pi_logits, h_logits)),
        entropy=jnp.mean(entropy(pi_logits)),
        distilled_entropy=jnp.mean(entropy(h_logits)),
        regularised_reward=jnp.mean(rewards),
        regulariser=jnp.mean(rewards - r_t),
        regulariser_loss=regulariser_loss,
        logit_spread=jnp.mean(jnp.max(pi_logits, -1) - jnp.min(pi_logits, -1)),
    )
    return loss, metrics
