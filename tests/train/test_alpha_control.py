"""The alpha controller of --target-token-ratio."""

import pytest

from effreason.train.alpha_control import AlphaController


def test_alpha_rises_while_too_long_and_falls_when_too_short():
    controller = AlphaController(target_ratio=0.6, alpha=0.1)
    controller.update(100.0)  # the reference length
    alphas = [controller.update(100.0) for _ in range(3)]
    assert alphas == sorted(alphas) and alphas[-1] > 0.1
    falling = [controller.update(30.0) for _ in range(6)]
    assert falling[-1] < falling[0]
    assert all(0.0 <= a <= 1.0 for a in alphas + falling)


def test_state_round_trip_and_validation():
    controller = AlphaController(target_ratio=0.5, alpha=0.2)
    controller.update(50.0)
    restored = AlphaController.from_state_dict(controller.state_dict())
    assert restored.update(40.0) == controller.update(40.0)
    with pytest.raises(ValueError, match="mean_length"):
        controller.update(0.0)
