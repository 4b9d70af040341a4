"""Every supported VLM family end to end in vLLM, through `sparrow-vllm check`.

For Qwen2-VL, Qwen3-VL and LLaVA-OneVision toy targets with briefly self-distilled drafts
(Qwen2.5-VL has its own tests in test_video_target.py), on both model runners: one batch of
text, image, video and video+image prompts gives the same greedy tokens with Sparrow as
with the target alone, the draft accepts more than nothing (so equality is not trivial), and
after a video prefill the draft cache holds no visual row by the family's own rule.
"""

from __future__ import annotations

import pytest

from sparrow_vllm.check import CheckSettings, run_check
from tests.toy_models import ADAPTER, FAMILY_ARCHES, runner_env

SETTINGS = {"max_model_len": 2048, "max_tokens": 24, "num_speculative_tokens": 3}


@pytest.fixture(scope="module")
def reports(family_models, runner, tmp_path_factory):
    """arch -> the check report of its toy pair on `runner` (engines run one at a time)."""
    mp = pytest.MonkeyPatch()
    for name, value in {**runner_env(runner), "VLLM_ENABLE_V1_MULTIPROCESSING": "0"}.items():
        mp.setenv(name, value)
    try:
        return {
            arch: run_check(models["target"], models["draft"], CheckSettings(runner=runner, **SETTINGS),
                            workdir=tmp_path_factory.mktemp(f"check-{arch}"))
            for arch, models in family_models.items()
        }
    finally:
        mp.undo()


@pytest.mark.parametrize("arch", FAMILY_ARCHES)
def test_family_keeps_greedy_output_on_every_prompt_kind(reports, runner, arch):
    report = reports[arch]
    assert report.passed, report.summary()
    assert [p.kind for p in report.prompts] == ["text", "image", "video", "video+image"]
    assert all(p.equal for p in report.prompts)
    assert report.acceptance_length > 1.0, report.summary()
    assert report.adapter == ADAPTER[runner] and report.drafted_on == runner


@pytest.mark.parametrize("arch", FAMILY_ARCHES)
def test_draft_cache_holds_no_visual_rows_after_a_video_prefill(reports, arch):
    report = reports[arch]
    assert report.visual_rows_in_draft_cache == 0 and report.text_rows_in_draft_cache > 0
    assert report.draft_cache["num_blocks"] > 0 and report.draft_cache["bytes"] > 0
