"""The seven algorithms of Distral (Teh et al., 2017, arXiv:1707.04175), as data, and
the gated sub-policies beside them.

Table 1 / Figure 2 of the paper compare seven ways of training n related tasks. Each is a
choice of architecture (how pi_i and pi_0 are parameterised), of the coefficients alpha and
beta, of whether the KL-to-pi_0 regulariser and its distillation term are on, and of the
A3C entropy bonus. The names below are part of the public API (DESIGN.md 1.3).

`gated` and `gated_task` (DESIGN.md 3a, `distral.core.gated`) train K gated sub-policies
on one torso with the same A3C loss as the A3C rows, so that a comparison with them
isolates the architecture; `gated_task` also gives the task id to the gates.

    alpha = c_KL / (c_KL + c_Ent),   beta = 1 / (c_KL + c_Ent)

This module is pure data and validation: no JAX, no files.
"""

from __future__ import annotations

import dataclasses
from typing import Literal, TypedDict

Architecture = Literal["independent", "shared", "1col", "2col", "gated"]

#: Default beta of the Distral rows (inverse total regularisation strength,
#: c_KL + c_Ent = 1 / beta = 1/30). Our default, not the paper's (the paper sweeps beta);
#: see BUILD_NOTES.md.
DEFAULT_BETA = 30.0
#: A3C entropy-bonus cost (Mnih et al., 2016, arXiv:1602.01783, used 0.01).
DEFAULT_ENTROPY_COST = 0.01


class VariantError(ValueError):
    """A bad variant name or coefficient. The message is one line, for the CLI."""


@dataclasses.dataclass(frozen=True)
class Variant:
    """One resolved algorithm: everything the network and the loss need to know."""

    name: str
    """Public name, one of `VARIANTS`."""
    architecture: Architecture
    """independent (f_i only), shared (h only), 1col (f_i and a separate h), 2col (mixed),
    gated (K gated sub-policies on one torso: pi_i = pi_0, as shared)."""
    alpha: float | None
    """KL share alpha = c_KL / (c_KL + c_Ent); None where it has no meaning (A3C rows)."""
    beta: float | None
    """Inverse regularisation strength 1 / (c_KL + c_Ent); None for the A3C rows."""
    distill: bool
    """Whether the regularised reward and the distillation term into pi_0 are on."""
    entropy_cost: float
    """Cost of the A3C entropy bonus in the loss (0 for Distral rows: entropy is in r_reg)."""
    description: str
    alpha_overridable: bool
    beta_overridable: bool
    task_gates: bool = False
    """'gated' architecture: whether the gates see the task id (a gate bias per task)."""

    @property
    def mix(self) -> tuple[float, float]:
        """Coefficients (a, b) of the 2col logits a * h + b * f_i (1col/independent: (0, 1))."""
        if self.architecture == "2col":
            if self.distill:
                assert self.alpha is not None and self.beta is not None
                return self.alpha, self.beta
            return 1.0, 1.0  # a3c_2col: h + f_i.
        if self.architecture == "shared":
            return 1.0, 0.0
        return 0.0, 1.0

    @property
    def c_kl(self) -> float:
        """Cost of KL(pi_i || pi_0) in the objective (0 without distillation)."""
        if not self.distill:
            return 0.0
        assert self.alpha is not None and self.beta is not None
        return self.alpha / self.beta

    @property
    def c_ent(self) -> float:
        """Cost of the entropy term of the objective; the A3C rows use `entropy_cost`."""
        if not self.distill:
            return 0.0
        assert self.alpha is not None and self.beta is not None
        return (1.0 - self.alpha) / self.beta


class _Regulariser(TypedDict):
    """The `Variant` fields of the pi_0 regulariser."""

    alpha: float | None
    beta: float | None
    distill: bool
    alpha_overridable: bool
    beta_overridable: bool


_NO_REGULARISER: _Regulariser = {
    "alpha": None,
    "beta": None,
    "distill": False,
    "alpha_overridable": False,
    "beta_overridable": False,
}


def _a3c(
    name: str, architecture: Architecture, description: str, task_gates: bool = False
) -> Variant:
    """An A3C row: no pi_0 regulariser (alpha and beta have no meaning), the entropy bonus."""
    return Variant(
        name=name,
        architecture=architecture,
        entropy_cost=DEFAULT_ENTROPY_COST,
        description=description,
        task_gates=task_gates,
        **_NO_REGULARISER,
    )


def _distral(name: str, architecture: Architecture, alpha: float, description: str) -> Variant:
    return Variant(
        name=name,
        architecture=architecture,
        alpha=alpha,
        beta=DEFAULT_BETA,
        distill=True,
        entropy_cost=0.0,
        description=description,
        # alpha = 1 is what makes a KL-only row KL-only; the KL+ent rows take any alpha.
        alpha_overridable=alpha < 1.0,
        beta_overridable=True,
    )


_TABLE: tuple[Variant, ...] = (
    _a3c("a3c", "independent", "A3C per task, independent networks"),
    _a3c("a3c_multitask", "shared", "one A3C policy for all tasks (no task id)"),
    _a3c("a3c_2col", "2col", "A3C with logits h + f_i, no KL"),
    _distral("kl_1col", "1col", 1.0, "Distral, KL only, pi_i = f_i, pi_0 = h"),
    _distral("kl_2col", "2col", 1.0, "Distral, KL only, alpha h + beta f_i"),
    _distral("kl_ent_1col", "1col", 0.5, "Distral, KL + entropy, pi_i = f_i"),
    _distral("kl_ent_2col", "2col", 0.5, "Distral, KL + entropy, alpha h + beta f_i"),
    _a3c("gated", "gated", "A3C, K gated sub-policies, no task id (supertask)"),
    _a3c("gated_task", "gated", "A3C, K gated sub-policies, task id into the gates", True),
)

VARIANTS: dict[str, Variant] = {v.name: v for v in _TABLE}
"""Every variant under its public name, with default coefficients: the paper's seven
(`PAPER_VARIANTS`) and the gated sub-policies."""

PAPER_VARIANTS: tuple[str, ...] = tuple(v.name for v in _TABLE if v.architecture != "gated")
"""The seven rows of the paper's Table 1 / Figure 2, in its order."""


class _Overrides(TypedDict, total=False):
    """The `Variant` fields that `get_variant` may override."""

    alpha: float
    beta: float
    entropy_cost: float


def get_variant(
    name: str,
    *,
    alpha: float | None = None,
    beta: float | None = None,
    entropy_cost: float | None = None,
) -> Variant:
    """Resolves a variant by name, applying the overrides the variant allows.

    Raises:
      VariantError: unknown name, alpha outside [0, 1], beta <= 0, a negative entropy
        cost, or an override the variant does not allow (one-line message).
    """
    if name not in VARIANTS:
        raise VariantError(f"unknown variant {name!r}; valid choices: {', '.join(VARIANTS)}")
    variant = VARIANTS[name]
    changes: _Overrides = {}
    if alpha is not None:
        if not 0.0 <= alpha <= 1.0:
            raise VariantError(f"alpha={alpha!r} is outside [0, 1]")
        if not variant.alpha_overridable:
            fixed = "has no alpha" if variant.alpha is None else f"fixes alpha={variant.alpha:g}"
            raise VariantError(
                f"variant {name!r} {fixed}; alpha can be set for: {', '.join(_settable('alpha'))}"
            )
        changes["alpha"] = float(alpha)
    if beta is not None:
        if not beta > 0.0:
            raise VariantError(f"beta={beta!r} must be > 0")
        if not variant.beta_overridable:
            raise VariantError(
                f"variant {name!r} has no beta; beta can be set for: {', '.join(_settable('beta'))}"
            )
        changes["beta"] = float(beta)
    if entropy_cost is not None:
        if not entropy_cost >= 0.0:
            raise VariantError(f"entropy_cost={entropy_cost!r} must be >= 0")
        if variant.distill:
            raise VariantError(
                f"variant {name!r} has no entropy bonus (entropy enters through alpha and "
                f"beta); entropy_cost can be set for: {', '.join(_settable('entropy_cost'))}"
            )
        changes["entropy_cost"] = float(entropy_cost)
    return dataclasses.replace(variant, **changes)


def _settable(field: str) -> list[str]:
    if field == "alpha":
        return [v.name for v in _TABLE if v.alpha_overridable]
    if field == "beta":
        return [v.name for v in _TABLE if v.beta_overridable]
    return [v.name for v in _TABLE if not v.distill]


def format_table() -> str:
    """The variants and their parameters as a plain-text table."""
    header = ("name", "architecture", "pi_i logits", "alpha", "beta", "KL+distil", "entropy")
    logits = {"independent": "f_i", "shared": "h", "1col": "f_i", "2col": "alpha h + beta f_i"}
    logits["gated"] = "sum_k sigma_k f_k"
    rows = [header]
    for v in _TABLE:
        pi_logits = "h + f_i" if v.name == "a3c_2col" else logits[v.architecture]
        if v.task_gates:
            pi_logits += " (sigma_k sees i)"
        if v.distill:
            entropy = "in r_reg" if v.alpha is not None and v.alpha < 1 else "none"
        else:
            entropy = f"bonus {v.entropy_cost:g}"
        rows.append(
            (
                v.name,
                v.architecture,
                pi_logits,
                "-" if v.alpha is None else f"{v.alpha:g}",
                "-" if v.beta is None else f"{v.beta:g}",
                "yes" if v.distill else "no",
                entropy,
            )
        )
    widths = [max(len(r[c]) for r in rows) for c in range(len(header))]
    lines = [
        "  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip() for r in rows
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
