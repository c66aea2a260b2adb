"""Plain-Python references that tests compare the package against (not a test module).

Written from the papers' equations, one loop step at a time, without calling distral:
n-step returns, V-trace (Espeholt et al., 2018, arXiv:1802.01561, eq. 1) and the Distral
loss of a linear network (Teh et al., 2017, arXiv:1707.04175). A torso `mlp` with
`hidden_sizes=()` is the identity, so every head is `x @ w + b` and a network's outputs
can be written by hand from its parameters.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


def py_n_step_returns(r, d, v_next, n):
    """G_t = sum_{k<n} (prod d) r_{t+k} + (prod d) v(s_{t+n}); truncated at the end.

    `v_next[t]` is v(s_{t+1}): the value of the state after step t.
    """
    T = len(r)
    out = []
    for t in range(T):
        g, scale = 0.0, 1.0
        k = 0
        while k < n and t + k < T:
            g += scale * r[t + k]
            scale *= d[t + k]
            k += 1
        g += scale * v_next[t + k - 1]
        out.append(g)
    return np.array(out)


def py_vtrace(v_tm1, v_t, r, d, rho, clip_rho=1.0, clip_pg_rho=1.0):
    """IMPALA's V-trace targets v_s and policy-gradient advantages, by the sum of eq. 1.

    Works on numpy arrays and on JAX values (the loss reference differentiates through
    the caller's other terms; these targets are constants to it).
    """
    T = len(r)
    values = [*v_tm1, v_t[-1]]  # V(x_0..x_T)
    vs = []
    for s in range(T):
        total = values[s]
        c_prod = 1.0
        disc = 1.0
        for t in range(s, T):
            rho_bar = jnp.minimum(clip_rho, rho[t])
            delta = rho_bar * (r[t] + d[t] * values[t + 1] - values[t])
            total += disc * c_prod * delta
            c_prod *= jnp.minimum(1.0, rho[t])
            disc *= d[t]
        vs.append(total)
    vs_next = [*vs[1:], values[T]]
    adv = [
        jnp.minimum(clip_pg_rho, rho[t]) * (r[t] + d[t] * vs_next[t] - values[t]) for t in range(T)
    ]
    return jnp.stack(vs), jnp.stack(adv)


def _log_softmax(x):
    return x - jax.scipy.special.logsumexp(x, axis=-1, keepdims=True)


def linear_2col_vtrace_loss(
    params: Any,
    batch: Any,
    *,
    alpha: float,
    beta: float,
    column_scale: float,
    gamma: float,
    clip_rho: float = 1.0,
    clip_pg_rho: float = 1.0,
    value_cost: float = 0.5,
) -> tuple[Any, dict[str, Any]]:
    """The Distral loss of a linear 2col network on a batch of unrolls, written out.

    pi_i's logits are alpha * h + column_scale * f_i, h = x W_0 + b_0, f_i = x W_i + b_i,
    V_i = x U_i + c_i. Step t's regulariser is its expectation under pi_i,
    E_a[(alpha/beta) log pi_0(a) - (1/beta) log pi_i(a)] (with gradient into pi_i only),
    added to r_t as a reward; V-trace targets with importance weights
    pi_i(a_t|s_t) / mu(a_t|s_t), mu being the behaviour logits stored at step t. Returns
    the mean loss over unrolls and, per unroll, its terms and the kl / entropy /
    logit-spread metrics (means over the T steps).
    """
    sg = jax.lax.stop_gradient
    batch = jax.tree.map(np.asarray, batch)  # constants, also when the caller jits this
    h_head, tasks = params["distilled"]["policy"], params["tasks"]
    T = batch.action.shape[0] - 1
    parts = {k: [] for k in ("loss", "policy", "value", "kl", "entropy", "logit_spread")}
    for j in range(batch.action.shape[1]):
        i = int(batch.task_id[j])
        x = jnp.asarray(batch.observation[:, j]).reshape(T + 1, -1)
        h = x @ h_head["w"] + h_head["b"]
        f = x @ tasks["policy"]["w"][i] + tasks["policy"]["b"][i]
        v = (x @ tasks["value"]["w"][i] + tasks["value"]["b"][i])[:, 0]
        logits = alpha * h + column_scale * f
        log_pi, log_pi0 = _log_softmax(logits[:T]), _log_softmax(h[:T])
        pi = jnp.exp(log_pi)
        own = jnp.sum(pi * (alpha * sg(log_pi0) - log_pi), -1) / beta
        actions = np.asarray(batch.action[:T, j])
        log_pi_a = log_pi[np.arange(T), actions]
        log_mu = _log_softmax(jnp.asarray(batch.behaviour_logits[:T, j]))
        rho = jnp.exp(sg(log_pi_a) - log_mu[np.arange(T), actions])
        rewards = jnp.asarray(batch.reward[:T, j]) + sg(own)
        disc = gamma * jnp.asarray(batch.discount[:T, j])
        vs, adv = py_vtrace(sg(v[:T]), sg(v[1:]), rewards, disc, rho, clip_rho, clip_pg_rho)
        policy = -jnp.mean(log_pi_a * sg(adv))
        value = 0.5 * jnp.mean(jnp.square(sg(vs) - v[:T]))
        distill = -(alpha / beta) * jnp.mean(jnp.sum(sg(pi) * log_pi0, -1))
        parts["loss"].append(policy + value_cost * value + distill - jnp.mean(own))
        parts["policy"].append(policy)
        parts["value"].append(value)
        parts["kl"].append(jnp.mean(jnp.sum(pi * (log_pi - log_pi0), -1)))
        parts["entropy"].append(-jnp.mean(jnp.sum(pi * log_pi, -1)))
        parts["logit_spread"].append(jnp.mean(logits[:T].max(-1) - logits[:T].min(-1)))
    per_unroll = {k: jnp.stack(x) for k, x in parts.items()}
    return jnp.mean(per_unroll["loss"]), per_unroll
