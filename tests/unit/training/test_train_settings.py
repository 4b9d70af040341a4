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


@pytest.mark.parametrize(
    "settings, budget, message",
    [
        (TrainSettings(visual_rows="full"), 64, "use --visual-rows text --visual-budget all"),
        (TrainSettings(visual_rows="full"), "all", "use --visual-rows text --visual-budget all"),
        (TrainSettings(ivsb=True), 64, "bridge-sourced kept rows are not supported yet; drop --ivsb"),
        (TrainSettings(ivsb=True), "all", "bridge-sourced kept rows are not supported yet; drop --ivsb"),
    ],
)
def test_visual_budget_is_refused_where_it_does_not_apply(settings, budget, message, tmp_path):
    from sparrow_vllm.draft.factory import new_draft
    from sparrow_vllm.errors import UsageError
    from sparrow_vllm.training.trainer import Trainer, check_draft_for_settings
    from tests.unit.helpers import text_family

    draft = new_draft(text_family(), visual_budget=budget)
    with pytest.raises(UsageError, match=message):
        Trainer(draft, None, None, [], settings, tmp_path)
    for fine in (TrainSettings(), TrainSettings(visual_rows="full"), TrainSettings(ivsb=True)):
        check_draft_for_settings(new_draft(text_family()), fine)
    check_draft_for_settings(draft, TrainSettings())
