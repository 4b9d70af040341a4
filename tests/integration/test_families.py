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
from sparrow_vllm.serving.vllm.runners import RUNNERS
from tests.toy_models import FAMILY_ARCHES, runner_env

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
    assert report.adapter == RUNNERS[runner].adapter and report.drafted_on == runner


@pytest.mark.parametrize("arch", FAMILY_ARCHES)
def test_draft_cache_holds_no_visual_rows_after_a_video_prefill(reports, arch):
    report = reports[arch]
    assert report.visual_rows_in_draft_cache == 0 and report.text_rows_in_draft_cache > 0
    assert report.draft_cache["num_blocks"] > 0 and report.draft_cache["bytes"] > 0


# ---- training features equal what vLLM hands the drafter ---------------------------------

# (arch, runner): every family on V1; Qwen3-VL's interleaved M-RoPE also on V2, whose
# positions come from its own rope state
PARITY_CASES = [(arch, "v1") for arch in ("qwen2_5_vl", *FAMILY_ARCHES)] + [("qwen3_vl", "v2")]


def _pair(arch, toy_models, family_models):
    if arch == "qwen2_5_vl":
        return toy_models["vl_target"], toy_models["vl_draft"]
    return family_models[arch]["target"], family_models[arch]["draft"]


def _served_rows(result: dict) -> dict[str, dict[int, object]]:
    """Target index -> the token, position and hidden state vLLM handed the drafter for it."""
    rows: dict[str, dict[int, object]] = {"token": {}, "position": {}, "hidden": {}}
    for step in result["step_inputs"]:
        start, end = step["query_start"][0], step["query_start"][1]
        for local in range(end - start):
            index = step["seq_start"][0] + local
            if index not in rows["token"]:
                rows["token"][index] = step["token_ids"][start + local]
                rows["position"][index] = step["positions"][start + local]
                rows["hidden"][index] = step["hidden_states"][start + local]
    return rows


@pytest.mark.parametrize("arch, engine_runner", PARITY_CASES)
def test_training_features_equal_what_serving_hands_the_draft(toy_models, family_models, tmp_path, arch, engine_runner):
    import torch

    from sparrow_vllm.check.prompts import TEXT, VIDEO_FPS, synthetic_video
    from sparrow_vllm.draft.checkpoint import read_draft_config
    from sparrow_vllm.training.data import ConversationSample, Turn
    from sparrow_vllm.training.features import FeatureExtractor, FeatureSpec
    from sparrow_vllm.training.target import load_hf_target
    from tests.toy_models import run_engine_job, sparrow

    target, draft = _pair(arch, toy_models, family_models)
    job = {"target": str(target), "speculative_config": sparrow(draft), "max_tokens": 4,
           "engine": {"max_model_len": 2048, "limit_mm_per_prompt": {"video": 1, "image": 1}},
           "prompts": [{"chat": "video", "seed": 0}], "record_step_inputs": True}
    served = run_engine_job(job, tmp_path, runner=engine_runner)
    prompt = served["prompt_token_ids"][0]
    rows = _served_rows(served)

    _, sparrow_config = read_draft_config(draft)
    hf = load_hf_target(target)
    frames, _ = synthetic_video(0)
    sample = ConversationSample("s", [Turn("user", TEXT), Turn("assistant", "ab")], video=frames,
                                video_seconds=len(frames) / VIDEO_FPS)
    spec = FeatureSpec(feature_layer=sparrow_config.aux_layer_index(), bridge_layer=None,
                       frame_text=sparrow_config.frame_text)
    record = FeatureExtractor(hf, hf.processor, spec).extract(sample)
    # the prompt's last token is left out: the toy chat template ends the prompt with a space
    # that the answer's first word absorbs when training tokenizes prompt + answer together
    n = len(prompt) - 1
    assert record["input_ids"][:n].tolist() == prompt[:n]
    assert sorted(rows["token"])[: n] == list(range(n))
    assert [rows["token"][i] for i in range(n)] == prompt[:n]
    assert record["positions"][:n].tolist() == [rows["position"][i] for i in range(n)]
    served_hidden = torch.tensor([rows["hidden"][i] for i in range(n)])
    torch.testing.assert_close(record["features"][:n], served_hidden, atol=2e-3, rtol=2e-3)
    assert record["visual_mask"][:n].tolist() == hf.family.visual_token_mask(prompt, sparrow_config.frame_text)[:n]


def test_unknown_family_stops_start_up_naming_the_supported_ones(toy_models, tmp_path):
    """A target vLLM serves but Sparrow has no adapter for (a tiny Llama) stops the engine
    before any model loads; it is not run with a guessed placeholder rule."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from sparrow_vllm.toy_targets.tokenizer import write_tokenizer
    from tests.toy_models import run_engine_job, sparrow

    target = tmp_path / "llama"
    vocab = write_tokenizer(target)
    config = LlamaConfig(vocab_size=len(vocab), hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                         eos_token_id=vocab["<|im_end|>"], bos_token_id=vocab["<|endoftext|>"])
    LlamaForCausalLM(config).save_pretrained(target)
    job = {"target": str(target), "speculative_config": sparrow(toy_models["text_draft"]),
           "engine": {"max_model_len": 512}, "prompts": [{"text": " ab cd"}]}
    with pytest.raises(AssertionError) as failure:
        run_engine_job(job, tmp_path, timeout=300)
    message = str(failure.value)
    assert "does not know the target family model_type='llama'" in message
    assert "supported: llava_onevision, qwen2, qwen2_5_vl, qwen2_vl, qwen3_vl" in message
