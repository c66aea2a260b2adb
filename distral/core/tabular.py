"""Tabular Distral: soft value iteration, soft Q-learning and distillation.

Section 2 of "Distral: Robust Multitask Reinforcement Learning" (Teh et al., NeurIPS 2017,
arXiv:1707.04175). With a distilled policy pi_0 fixed, each task i solves the regularised MDP

    V_i(s) = (1/beta) log sum_a pi_0(a|s)^alpha exp(beta Q_i(s,a)),
    Q_i(s,a) = R_i(s,a) + g E_{s'}[V_i(s')],
    pi_i(a|s) = pi_0(a|s)^alpha exp(beta (Q_i(s,a) - V_i(s))),

and with the pi_i fixed, pi_0(a|s) is proportional to sum_i sum_t g^t P_i(s_t=s, a_t=a).

Conventions. One task is a `TabularMDP` with `transitions` [S, A, S] = P(s'|s,a), `rewards`
[S, A], `initial` [S], scalar `discount` and an optional boolean `terminal` [S] (None means no
terminal state). Reaching a terminal state ends the episode: its value is zero and it is never
acted in. Several tasks are the same NamedTuple with a leading task axis (vmap over it).
Policies are probabilities [S, A]; pi_0 is passed as `log_pi0` [S, A]. With alpha = 0 the
prior term alpha log pi_0 is taken as 0 even where pi_0 = 0 (the convention 0^0 = 1).
Every function is pure and unbatched; integer sizes (`num_rollouts`, `length`, `num_states`,
`num_actions`) must be static under `jax.jit`. Only `random_mdp` is jitted here.
"""

from typing import NamedTuple, TypedDict, Unpack

import chex
import jax
import jax.numpy as jnp
from jax import lax
from jax.typing import ArrayLike

Array = jax.Array
Scalar = chex.Numeric


class TabularMDP(NamedTuple):
    transitions: Array  # [S, A, S], P(s'|s, a)
    rewards: Array  # [S, A]
    initial: Array  # [S], start distribution
    discount: Array  # scalar
    terminal: Array | None = None  # [S] bool; None: no terminal state
    next_state: Array | None = None  # [S, A] int32 for a deterministic MDP (O(1) sampling)


class SoftValues(NamedTuple):
    q: Array  # [S, A]
    v: Array  # [S], zero at terminal states
    pi: Array  # [S, A]


class Transitions(NamedTuple):
    """Rollouts, each field [R, L] (or any leading shape); time runs along the last axis."""

    state: Array
    action: Array
    reward: Array  # zero on invalid steps
    next_state: Array
    done: Array  # next_state is terminal, or the episode had already ended
    t: Array  # time index within the episode
    valid: Array  # False once the episode has ended


class DistralState(NamedTuple):
    q: Array  # [N, S, A], one soft Q table per task
    log_pi0: Array  # [S, A], distilled policy
    counts: Array  # [S, A], discounted state-action counts behind the last distillation


class ExactDistralStep(NamedTuple):
    log_pi0: Array  # [S, A], pi_0 distilled from the new task policies
    pis: Array  # [N, S, A], exact soft-optimal task policies under the previous pi_0
    objective: Array  # J = sum_i policy_value(pi_i, new pi_0)


class _FixedPoint(NamedTuple):
    q: Array
    delta: Array
    iteration: Array


class _RolloutCarry(NamedTuple):
    state: Array
    ended: Array


# MDP CONSTRUCTION


def make_mdp(
    transitions: ArrayLike,
    rewards: ArrayLike,
    initial: ArrayLike,
    discount: Scalar,
    terminal: ArrayLike | None = None,
    next_state: ArrayLike | None = None,
) -> TabularMDP:
    """Builds one task, checking shapes; `terminal` defaults to all-False.

    `next_state` [S, A] (deterministic MDPs only, where transitions[s, a] is one-hot at it)
    lets `rollout` step in O(1) instead of O(S); it is checked against `transitions` here.
    """
    transitions, rewards, initial = map(jnp.asarray, (transitions, rewards, initial))
    num_states, num_actions = rewards.shape
    chex.assert_shape(transitions, (num_states, num_actions, num_states))
    chex.assert_shape(initial, (num_states,))
    if terminal is None:
        terminal = jnp.zeros((num_states,), dtype=bool)
    terminal = jnp.asarray(terminal, dtype=bool)
    chex.assert_shape(terminal, (num_states,))
    discount = jnp.asarray(discount, dtype=rewards.dtype)
    if next_state is not None:
        next_state = jnp.asarray(next_state, dtype=jnp.int32)
        chex.assert_shape(next_state, (num_states, num_actions))
        one_hot = jax.nn.one_hot(next_state, num_states, dtype=transitions.dtype)
        if not bool(jnp.all(one_hot == transitions)):
            raise ValueError("next_state disagrees with transitions (or they are not one-hot)")
    return TabularMDP(transitions, rewards, initial, discount, terminal, next_state)


def stack_mdps(mdps: list[TabularMDP]) -> TabularMDP:
    """Stacks tasks along a new leading axis (all must agree on whether `terminal` is set)."""
    return jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *mdps)


def _random_mdp(
    key: chex.PRNGKey, num_states: int, num_actions: int, discount: float = 0.9, dtype=float
) -> TabularMDP:
    """A random dense MDP: Dirichlet(1) transitions and start, uniform [0, 1) rewards."""
    k_p, k_r, k_i = jax.random.split(key, 3)

    def flat_dirichlet(key: chex.PRNGKey, shape: tuple[int, ...]) -> Array:
        x = jax.random.exponential(key, shape, dtype)  # normalised: Dirichlet(1, ..., 1)
        return x / jnp.sum(x, axis=-1, keepdims=True)

    transitions = flat_dirichlet(k_p, (num_states, num_actions, num_states))
    rewards = jax.random.uniform(k_r, (num_states, num_actions), dtype)
    return make_mdp(transitions, rewards, flat_dirichlet(k_i, (num_states,)), discount)


random_mdp = jax.jit(_random_mdp, static_argnames=("num_states", "num_actions", "dtype"))


def _keep(mdp: TabularMDP) -> Array:
    """1.0 for non-terminal states, 0.0 for terminal ones, in the rewards' dtype."""
    if mdp.terminal is None:
        return jnp.ones(mdp.rewards.shape[0], mdp.rewards.dtype)
    return 1.0 - mdp.terminal.astype(mdp.rewards.dtype)


def _log_prior(log_pi0: Array, alpha: Scalar) -> Array:
    """alpha * log pi_0, with 0 * (-inf) := 0 (alpha = 0 ignores pi_0)."""
    return jnp.where(jnp.isneginf(log_pi0) & (alpha == 0), 0.0, alpha * log_pi0)


# SOFT BACKUP AND EXACT DYNAMIC PROGRAMMING


def soft_backup(q: Array, log_pi0: Array, alpha: Scalar, beta: Scalar) -> tuple[Array, Array]:
    """V = (1/beta) log sum_a pi_0^alpha exp(beta Q) and pi = pi_0^alpha exp(beta (Q - V)).

    Works on any leading shape (actions on the last axis); stable for large beta.
    """
    chex.assert_equal_shape([q, log_pi0])
    logits = _log_prior(log_pi0, alpha) + beta * q
    log_z = jax.nn.logsumexp(logits, axis=-1, keepdims=True)
    return jnp.squeeze(log_z, -1) / beta, jnp.exp(logits - log_z)


def _iterate_q(mdp: TabularMDP, state_value, num_iterations: int, tol: float | None) -> Array:
    """Iterates Q <- R + g P (keep * state_value(Q)) until the contraction bound on the error,
    g/(1-g) max|Q_k+1 - Q_k|, is at most tol * max(1, max|Q|) (or `num_iterations` is reached).
    """
    chex.assert_rank([mdp.transitions, mdp.rewards, mdp.initial], [3, 2, 1])
    dtype = mdp.rewards.dtype
    tol = 100.0 * jnp.finfo(dtype).eps if tol is None else tol
    keep = _keep(mdp)

    def body(fp: _FixedPoint) -> _FixedPoint:
        v = state_value(fp.q) * keep
        q = (mdp.rewards + mdp.discount * (mdp.transitions @ v)).astype(dtype)
        return _FixedPoint(q, jnp.max(jnp.abs(q - fp.q)), fp.iteration + 1)

    def cond(fp: _FixedPoint) -> Array:
        scale = jnp.maximum(1.0, jnp.max(jnp.abs(fp.q)))
        converged = mdp.discount * fp.delta <= tol * scale * (1.0 - mdp.discount)
        return (fp.iteration < num_iterations) & ~converged

    init = _FixedPoint(mdp.rewards, jnp.array(jnp.inf, dtype), jnp.array(0))
    return lax.while_loop(cond, body, init).q


def soft_value_iteration(
    mdp: TabularMDP,
    log_pi0: Array,
    alpha: Scalar,
    beta: Scalar,
    *,
    num_iterations: int = 10_000,
    tol: float | None = None,
) -> SoftValues:
    """Exact soft value iteration with a known model.

    `tol` bounds the relative error of Q (None: 100 machine epsilons of the rewards' dtype).
    """
    q = _iterate_q(mdp, lambda q: soft_backup(q, log_pi0, alpha, beta)[0], num_iterations, tol)
    v, pi = soft_backup(q, log_pi0, alpha, beta)
    return SoftValues(q=q, v=v * _keep(mdp), pi=pi)


def value_iteration(
    mdp: TabularMDP, *, num_iterations: int = 10_000, tol: float | None = None
) -> tuple[Array, Array]:
    """Ordinary (hard max) value iteration; returns (Q [S, A], V [S])."""
    q = _iterate_q(mdp, lambda q: jnp.max(q, axis=-1), num_iterations, tol)
    return q, jnp.max(q, axis=-1) * _keep(mdp)


def discounted_occupancy(mdp: TabularMDP, pi: Array) -> Array:
    """d(s,a) = sum_t g^t P(s_t=s, a_t=a) from `initial`, by solving (I - g K P_pi^T) d = K mu.

    K zeroes terminal states (episodes stop there). Without terminals, d sums to 1/(1-g).
    """
    chex.assert_equal_shape([pi, mdp.rewards])
    keep = _keep(mdp)
    p_pi = jnp.einsum("sa,sat->st", pi, mdp.transitions)
    system = jnp.eye(keep.shape[0], dtype=p_pi.dtype) - mdp.discount * keep[:, None] * p_pi.T
    d_state = jnp.linalg.solve(system, keep * mdp.initial)
    return d_state[:, None] * pi


def policy_value(mdp: TabularMDP, pi: Array, log_pi0: Array, alpha: Scalar, beta: Scalar) -> Array:
    """E_pi[sum_t g^t (R + (alpha/beta) log pi_0 - (1/beta) log pi)] from `initial` (exact)."""
    chex.assert_equal_shape([pi, log_pi0, mdp.rewards])
    d = discounted_occupancy(mdp, pi)
    reward = mdp.rewards + (_log_prior(log_pi0, alpha) - jnp.log(pi)) / beta
    return jnp.sum(jnp.where(d > 0, d * reward, 0.0))


# DISTILLATION


def counts_to_log_policy(counts: Array) -> Array:
    """log pi_0(a|s) proportional to counts [S, A]; a state with no mass gets uniform."""
    chex.assert_rank(counts, 2)
    mass = jnp.sum(counts, axis=-1, keepdims=True)
    uniform = jnp.full_like(counts, 1.0 / counts.shape[-1])
    return jnp.log(jnp.where(mass > 0, counts / jnp.where(mass > 0, mass, 1.0), uniform))


def distil_exact(occupancies: Array) -> Array:
    """pi_0 from exact occupancies [N, S, A]: the ML fit to their mixture."""
    chex.assert_rank(occupancies, 3)
    return counts_to_log_policy(jnp.sum(occupancies, axis=0))


def discounted_counts(
    transitions: Transitions, discount: Scalar, num_states: int, num_actions: int
) -> Array:
    """sum over valid steps of g^t [s_t=s, a_t=a], over all leading axes -> [S, A]."""
    weights = jnp.where(transitions.valid, jnp.power(discount, transitions.t), 0.0)
    counts = jnp.zeros((num_states, num_actions), jnp.result_type(weights))
    return counts.at[transitions.state.ravel(), transitions.action.ravel()].add(weights.ravel())


def distil_from_counts(
    transitions: Transitions,
    discount: Scalar,
    num_states: int,
    num_actions: int,
    prior_counts: Scalar = 0.0,
) -> Array:
    """pi_0 proportional to prior_counts + discounted state-action counts of all rollouts."""
    counts = discounted_counts(transitions, discount, num_states, num_actions)
    return counts_to_log_policy(counts + prior_counts)


# SAMPLE-BASED SOFT Q-LEARNING


def rollout(
    key: chex.PRNGKey, mdp: TabularMDP, pi: Array, num_rollouts: int, length: int
) -> Transitions:
    """Samples `num_rollouts` episodes of `length` steps of pi; fields are [R, L]."""
    chex.assert_equal_shape([pi, mdp.rewards])
    keep = _keep(mdp)
    num_states, num_actions = mdp.rewards.shape
    log_pi = jnp.log(pi)
    cdf = jnp.cumsum(mdp.transitions, axis=-1)
    # All noise is drawn up front (one random-bits call per kind instead of calls inside the
    # scan body, which XLA compiles 2-5x faster): Gumbel-max for actions, and one uniform per
    # step inverted through the next-state CDF, or a table look-up for a deterministic MDP
    # (Gumbel noise over the S next states made the 265-state grid world's roll-outs ~10x
    # slower; see BUILD_NOTES.md).
    key_start, key_a, key_s = jax.random.split(key, 3)
    start = jax.random.categorical(key_start, jnp.log(mdp.initial), shape=(num_rollouts,))
    noise_a = jax.random.gumbel(key_a, (num_rollouts, length, num_actions), log_pi.dtype)
    noise_s = jax.random.uniform(key_s, (num_rollouts, length), cdf.dtype)

    def next_state(s: Array, a: Array, u: Array) -> Array:
        if mdp.next_state is not None:
            return mdp.next_state[s, a]
        row = cdf[s, a]  # P(s' <= k | s, a); s' = the first k with u * total < row[k]
        return jnp.minimum(jnp.sum(row <= u * row[-1]), num_states - 1)

    def episode(start: Array, noise_a: Array, noise_s: Array) -> Transitions:
        def step(carry: _RolloutCarry, xs) -> tuple[_RolloutCarry, Transitions]:
            t, g_a, u_s = xs
            valid = ~carry.ended
            a = jnp.argmax(log_pi[carry.state] + g_a)
            s_next = jnp.where(valid, next_state(carry.state, a, u_s), carry.state)
            done = carry.ended | (keep[s_next] == 0)
            r = jnp.where(valid, mdp.rewards[carry.state, a], 0.0)
            out = Transitions(carry.state, a, r, s_next, done, t, valid)
            return _RolloutCarry(state=s_next, ended=done), out

        init = _RolloutCarry(state=start, ended=keep[start] == 0)
        return lax.scan(step, init, (jnp.arange(length), noise_a, noise_s))[1]

    return jax.vmap(episode)(start, noise_a, noise_s)


def soft_q_learning(
    q: Array,
    transitions: Transitions,
    log_pi0: Array,
    alpha: Scalar,
    beta: Scalar,
    discount: Scalar,
    learning_rate: Scalar,
) -> Array:
    """Sequential soft Q-learning over the transitions in rollout order (row-major).

    target = r + g (1 - done) V(s') with V from `soft_backup`; Q(s,a) += lr (target - Q(s,a)).
    Invalid steps leave Q unchanged.
    """
    chex.assert_equal_shape([q, log_pi0])
    flat = jax.tree_util.tree_map(jnp.ravel, transitions)

    def update(q: Array, tr: Transitions) -> tuple[Array, None]:
        v_next, _ = soft_backup(q[tr.next_state], log_pi0[tr.next_state], alpha, beta)
        target = tr.reward + discount * jnp.where(tr.done, 0.0, v_next)
        td = target - q[tr.state, tr.action]
        return q.at[tr.state, tr.action].add(jnp.where(tr.valid, learning_rate * td, 0.0)), None

    return lax.scan(update, q, flat)[0]


# ALTERNATING DISTRAL


def init_distral_state(
    num_tasks: int, num_states: int, num_actions: int, dtype=jnp.float32
) -> DistralState:
    """Zero Q tables, uniform pi_0, zero counts."""
    return DistralState(
        q=jnp.zeros((num_tasks, num_states, num_actions), dtype),
        log_pi0=jnp.full((num_states, num_actions), -jnp.log(num_actions), dtype),
        counts=jnp.zeros((num_states, num_actions), dtype),
    )


def distral_iteration(
    state: DistralState,
    key: chex.PRNGKey,
    mdps: TabularMDP,
    alpha: Scalar,
    beta: Scalar,
    learning_rate: Scalar,
    num_rollouts: int,
    length: int,
    *,
    separately: bool | Array = False,
    prior_counts: Scalar = 0.1,
    counts_decay: Scalar = 0.0,
) -> tuple[DistralState, dict[str, Array]]:
    """One round of sample-based tabular Distral over N tasks (`mdps` has a task axis).

    Each task rolls out its Boltzmann policy pi_i = soft_backup(Q_i, pi_0) and runs soft
    Q-learning on those rollouts; then pi_0 is re-distilled from prior_counts + counts, where
    counts = counts_decay * old counts + this round's discounted counts. The pseudo-count keeps
    pi_0 > 0: a zero would lock pi_i out of an action for good when alpha > 0.
    `separately` is the no-coupling baseline: pi_0 and counts are never updated (pi_0 stays as
    initialised: uniform from `init_distral_state`). It may be traced, so one compiled step
    serves both arms. Metrics, per task [N]: mean undiscounted return and mean length.
    """
    num_tasks, num_states, num_actions = state.q.shape
    chex.assert_shape(state.log_pi0, (num_states, num_actions))

    def task_step(q: Array, key: chex.PRNGKey, mdp: TabularMDP) -> tuple[Array, Transitions]:
        _, pi = soft_backup(q, state.log_pi0, alpha, beta)
        batch = rollout(key, mdp, pi, num_rollouts, length)
        q = soft_q_learning(q, batch, state.log_pi0, alpha, beta, mdp.discount, learning_rate)
        return q, batch

    q, batch = jax.vmap(task_step)(state.q, jax.random.split(key, num_tasks), mdps)
    metrics = {
        "mean_return": jnp.mean(jnp.sum(batch.reward, axis=-1), axis=-1),
        "mean_length": jnp.mean(jnp.sum(batch.valid, axis=-1), axis=-1),
    }
    per_task = jax.vmap(discounted_counts, in_axes=(0, 0, None, None))(
        batch, mdps.discount, num_states, num_actions
    )
    counts = (state.counts * counts_decay + jnp.sum(per_task, axis=0)).astype(state.counts.dtype)
    log_pi0 = counts_to_log_policy(counts + prior_counts).astype(state.log_pi0.dtype)
    distilled = DistralState(q=q, log_pi0=log_pi0, counts=counts)
    new_state = jax.tree_util.tree_map(
        lambda kept, new: jnp.where(separately, kept, new), state._replace(q=q), distilled
    )
    return new_state, metrics


class SolverOptions(TypedDict, total=False):
    """`soft_value_iteration`'s keyword options, passed on by `exact_distral_iteration`."""

    num_iterations: int
    tol: float | None


def exact_distral_iteration(
    log_pi0: Array, mdps: TabularMDP, alpha: Scalar, beta: Scalar, **solver: Unpack[SolverOptions]
) -> ExactDistralStep:
    """Exact coordinate ascent on J: soft VI per task under pi_0, then `distil_exact`.

    `solver` goes to each task's `soft_value_iteration` (its defaults when empty). The
    returned objective is J(pis, new pi_0), so it never decreases from one call to the next.
    """

    def solve(mdp: TabularMDP) -> Array:
        return soft_value_iteration(mdp, log_pi0, alpha, beta, **solver).pi

    pis = jax.vmap(solve)(mdps)
    new_log_pi0 = distil_exact(jax.vmap(discounted_occupancy)(mdps, pis))
    values = jax.vmap(policy_value, in_axes=(0, 0, None, None, None))(
        mdps, pis, new_log_pi0, alpha, beta
    )
    return ExactDistralStep(log_pi0=new_log_pi0, pis=pis, objective=jnp.sum(values))
