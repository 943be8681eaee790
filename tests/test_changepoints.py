"""Change points in a metric's history: known level shifts are found, noise and small shifts are not."""
from bench.gate.changepoints import change_points


def test_a_level_shift_is_found_where_it_starts():
    assert change_points([10.0, 10.1, 9.9, 10.0, 11.0, 11.1, 10.9, 11.0]) == [4]


def test_two_shifts_are_both_found():
    assert change_points([10, 10.1, 9.9, 12, 12.1, 11.9, 14, 14.1, 13.9]) == [3, 6]


def test_noise_and_shifts_below_the_minimum_effect_are_not_change_points():
    assert change_points([10.0, 10.2, 9.8, 10.1, 9.9, 10.2, 9.8]) == []
    assert change_points([10.0, 10.0, 10.0, 10.3, 10.3, 10.3]) == []  # 3 % < 5 % minimum effect
    assert change_points([10.0, 10.0, 12.0]) == []  # too few runs for two segments of two
