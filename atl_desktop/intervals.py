"""Confidence intervals for proportions, shared by the audit estimate and the model card.

Pure math: the bottom layer, importable from anywhere.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

Z95 = 1.959963984540054  # the standard normal's 97.5 % quantile


@dataclass(frozen=True)
class Interval:
    estimate: float
    lower: float
    upper: float

    @property
    def width(self) -> float:
        return self.upper - self.lower


def wilson_interval(correct: int, n: int, z: float = Z95) -> Interval:
    """The Wilson score interval for `correct` successes out of `n`."""
    if n < 1 or not 0 <= correct <= n:
        raise ValueError(f"need 0 <= correct <= n and n >= 1; got {correct} of {n}")
    p = correct / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    # The bounds are exactly 0 and 1 at the ends; the formula misses them by a rounding error.
    return Interval(p, 0.0 if correct == 0 else max(0.0, centre - half),
                    1.0 if correct == n else min(1.0, centre + half))
