"""TrainSettings' IVSB schedule: which sequences of a step carry bridge rows."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from sparrow_vllm.training.settings import TrainSettings


def test_without_ivsb_every_sequence_trains_its_serving_rows():
    assert TrainSettings(ivsb=False).step_row_modes(0, 3) == ["text"] * 3
    assert TrainSettings(ivsb=False, visual_rows="full").step_row_modes(5, 2) == ["full"] * 2


def test_ivsb_fraction_ends_the_bridge_phase():
    settings = TrainSettings(ivsb=True, steps=90, ivsb_fraction=1 / 3)
    assert settings.step_row_modes(0, 4) == ["bridge"] * 4
    assert settings.step_row_modes(29, 4) == ["bridge"] * 4
    assert settings.step_row_modes(30, 4) == ["text"] * 4


def test_bridge_dropout_is_seeded_per_step_and_drops_about_its_share():
    settings = TrainSettings(ivsb=True, bridge_dropout=0.5, seed=3)
    draws = [settings.step_row_modes(step, 16) for step in range(50)]
    assert draws == [settings.step_row_modes(step, 16) for step in range(50)]  # a resumed run draws the same
    dropped = sum(mode == "text" for modes in draws for mode in modes) / (50 * 16)
    assert 0.4 < dropped < 0.6
    assert TrainSettings(ivsb=True, bridge_dropout=1.0).step_row_modes(0, 5) == ["text"] * 5


@pytest.mark.parametrize("field", [{"bridge_dropout": 0.5}, {"ivsb_fraction": 0.5}])
def test_bridge_options_without_ivsb_are_refused(field):
    with pytest.raises(ValidationError, match="add --ivsb or drop them"):
        TrainSettings(ivsb=False, **field)
