"""The budget knee rule (quantface/report/knee.py): noise guard, then Kneedle."""

import numpy as np
import pytest

from quantface.report.knee import knee_index

RNG = np.random.default_rng(0)
NOISE = RNG.normal(0, 0.05, size=24)  # the images' own spread, shared by every point (paired)


def _points(means):
    return [m + NOISE + RNG.normal(0, 0.01, size=24) for m in means]


def test_a_saturating_curve_has_its_knee_at_the_bend_not_at_the_largest_budget():
    budgets = [0, 0.25, 0.5, 1, 2, 4]
    means = [30.0, 34.0, 36.0, 36.6, 36.8, 36.9]  # nearly flat past 0.5
    assert budgets[knee_index(budgets, _points(means), seed=0)] == 0.5


def test_a_curve_that_has_not_bent_yet_gets_the_largest_budget():
    budgets = [0, 1, 2]
    # gains grow with the budget: nothing lies above the chord, the knee is past the grid
    assert knee_index(budgets, _points([26.0, 26.1, 26.6]), seed=0) == 2


def test_training_that_buys_nothing_beyond_noise_puts_the_knee_at_zero():
    budgets = [0, 0.5, 1, 2]
    # the means fall a little and then rise back above zero's, within the images' noise
    flat = [26.2 + NOISE + RNG.normal(0, 0.2, size=24) + d for d in (0, -0.05, -0.1, 0.02)]
    assert knee_index(budgets, flat, seed=0) == 0
    # the same curve with a real gain at the end is no longer cut to zero
    flat[-1] = flat[-1] + 1.0
    assert knee_index(budgets, flat, seed=0) == 3


@pytest.mark.parametrize("budgets", [[0.5, 1, 2], [0, 2, 1], [0]])
def test_budgets_must_rise_from_zero(budgets):
    with pytest.raises(ValueError):
        knee_index(budgets, _points([1.0] * len(budgets)), seed=0)
