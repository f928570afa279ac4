"""Bootstrap confidence intervals over inputs (the paper's figures have none; we add them)."""

from __future__ import annotations

import numpy as np


def bootstrap_ci(values, n_boot: int = 1000, level: float = 0.95, seed: int = 0,
                 statistic=np.mean) -> tuple[float, float, float]:
    """(estimate, low, high): ``statistic`` of ``values`` with a percentile bootstrap interval
    over the items (resampled with replacement). NaNs are dropped; an empty input gives NaNs."""
    x = np.asarray(values, dtype=float)
    x = x[~np.isnan(x)]
    if len(x) == 0:
        return float("nan"), float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(x), size=(n_boot, len(x)))
    boots = np.apply_along_axis(statistic, 1, x[idx])
    alpha = (1 - level) / 2
    return float(statistic(x)), float(np.quantile(boots, alpha)), float(np.quantile(boots, 1 - alpha))
