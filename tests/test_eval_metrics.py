"""endorm.eval.metrics: the RM-Bench 3x3 arithmetic, the tie rule and the best-of-N tie split."""

import math

import pytest

from endorm.eval import metrics as M


def test_rmbench_matrix_and_levels_by_hand():
    # two prompts; margins[p][i][j] = score(chosen i) - score(rejected j)
    p1 = [[1, 1, 1],
          [1, 1, -1],
          [1, 1, 1]]
    p2 = [[1, -1, -1],
          [1, 0, -1],   # the diagonal tie counts as wrong
          [1, 1, -1]]
    mat = M.rmbench_matrix([p1, p2])
    assert mat == [[1.0, 0.5, 0.5],
                   [1.0, 0.5, 0.0],
                   [1.0, 1.0, 0.5]]
    lv = M.rmbench_levels(mat)
    assert lv["easy"] == pytest.approx((1.0 + 1.0 + 1.0) / 3)  # M[1][0], M[2][0], M[2][1]
    assert lv["normal"] == pytest.approx((1.0 + 0.5 + 0.5) / 3)  # diagonal
    assert lv["hard"] == pytest.approx((0.5 + 0.5 + 0.0) / 3)  # M[0][1], M[0][2], M[1][2]
    assert lv["avg"] == pytest.approx((lv["easy"] + lv["normal"] + lv["hard"]) / 3)


def test_levels_use_the_right_triangles():
    # only the lower triangle (chosen more styled than rejected) is right -> easy 1, others 0
    mat = [[0, 0, 0], [1, 0, 0], [1, 1, 0]]
    assert M.rmbench_levels(mat) == {"easy": 1.0, "normal": 0.0, "hard": 0.0, "avg": pytest.approx(1 / 3)}


def test_tie_rule():
    assert M.correct(0.1) and not M.correct(0.0) and not M.correct(-0.1)
    assert not M.correct(float("nan")) and not M.correct(None)
    assert M.accuracy([1.0, 0.0, -2.0, 3.0]) == 0.5
    assert "tie" in M.TIE_RULE and "wrong" in M.TIE_RULE
    assert math.isnan(M.margin(float("nan"), 1.0))


def test_best_of_n_tie_split():
    assert M.best_of_n_credit([3.0, 1.0, 2.0, 0.0], best=0) == 1.0
    assert M.best_of_n_credit([3.0, 3.0, 2.0, 0.0], best=0) == 0.5
    assert M.best_of_n_credit([3.0, 3.0, 3.0, 3.0], best=2) == 0.25
    assert M.best_of_n_credit([1.0, 3.0, 2.0, 0.0], best=0) == 0.0
    assert M.best_of_n_credit([float("nan"), 1.0], best=0) == 0.0  # NaN never wins
    assert M.best_of_n_credit([2.0, float("nan")], best=0) == 1.0


def test_standard_error():
    assert M.standard_error([0.0, 1.0]) == pytest.approx(0.5)
    assert math.isnan(M.standard_error([1.0]))
