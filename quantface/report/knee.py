"""The knee of a quality-against-budget curve: where more iterations stop earning their time.

Why a rule at all: every learned method's default budget is chosen from its own curve, and the
comparison is only fair if the same rule picks every one. The rule is Kneedle (Satopää et al.,
ICDCS-W 2011), measured from the zero-iteration point rather than the curve's minimum, with a
noise guard in front:

1. *Noise guard.* If no budget's per-image scores beat the zero-iteration point beyond noise
   (the 95% paired-bootstrap interval of the difference stays at or below 0: the tables' tie rule,
   `quantface.report.stats`), training buys nothing measurable and the knee is zero iterations.
2. *Kneedle* on the gain over zero iterations. Budgets are scaled to [0, 1] by the largest, and
   each point's mean gain over the zero point by the largest gain; the knee is the budget whose
   scaled gain lies farthest above the diagonal (on a rising curve, the chord from the first to
   the last point): the point of the largest gain still ahead of the cost. A curve with no point
   above the diagonal has not bent within the grid (its gains do not shrink): the knee is the
   best budget measured, and the grid should grow.

Budgets are on a linear axis because cost is linear in iterations. Kneedle depends on the range
of budgets measured, so a reported knee always names its grid.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from quantface.report.stats import lead_is_significant


def knee_index(budgets: Sequence[float], per_image: Sequence[np.ndarray], seed: int) -> int:
    """Index of the knee among points sorted by budget, the first being zero iterations.

    `per_image[i]`: point i's scores (higher is better), on the same images at every point.
    """
    x = np.asarray(budgets, dtype=np.float64)
    if len(x) != len(per_image) or len(x) < 2:
        raise ValueError("a knee needs at least two points, one score array per budget")
    if x[0] != 0 or np.any(np.diff(x) <= 0):
        raise ValueError(f"budgets must rise from 0: {list(x)}")
    zero = per_image[0]
    if not any(lead_is_significant(s, zero, True, seed) for s in per_image[1:]):
        return 0
    gain = np.array([np.mean(s) for s in per_image]) - np.mean(zero)
    above = gain / gain.max() - x / x[-1]
    return int(np.argmax(above)) if above.max() > 0 else int(np.argmax(gain))
