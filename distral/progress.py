"""Progress output of long runs: a tqdm bar on a terminal; one plain line per log row
when stderr is a file, a pipe or a CI log (no carriage-return updates in logs)."""

from __future__ import annotations

import sys


class Progress:
    """Progress of a run measured in env steps per task."""

    def __init__(self, desc: str, total: int, initial: int, *, enabled: bool = True) -> None:
        from tqdm import tqdm

        self.desc = desc
        self.total = total
        self.enabled = enabled
        self.interactive = enabled and sys.stderr.isatty()
        self._bar = tqdm(
            total=total,
            initial=initial,
            unit="step",
            unit_scale=True,
            desc=desc,
            disable=not self.interactive,
            dynamic_ncols=True,
        )

    def update(self, env_steps: int, steps: int, mean_return: float, optimal: float, sps: float):
        """Advances by `steps` to `env_steps`: the bar's postfix, or one plain line."""
        self._bar.update(steps)
        self._bar.set_postfix(ret=f"{mean_return:.2f}", opt=f"{optimal:.2f}", sps=f"{sps:,.0f}")
        if self.enabled and not self.interactive:
            print(
                f"{self.desc}: {env_steps:,}/{self.total:,} env steps per task, return "
                f"{mean_return:.2f} (optimum {optimal:.2f}), {sps:,.0f} env steps/s",
                file=sys.stderr,
                flush=True,
            )

    def write(self, line: str) -> None:
        """A line (a warning) that does not break the bar."""
        from tqdm import tqdm

        tqdm.write(line, file=sys.stderr)

    def close(self) -> None:
        self._bar.close()
