"""`sparrow-vllm analyze`: the per-layer visual cut against an explicit removal of the visual
rows on every family's tiny target, and on the committed toy-world target the claims a user
reads off the curve (cut L is the full model; cut 0 leaves a video-only question at chance;
a target that reads its video to the last layer gets a visual budget)."""

from __future__ import annotations

import collections
import json
from pathlib import Path

import pytest
import torch

from sparrow_vllm.analysis.internalization import (
    AnalyzeSettings,
    InternalizationProbe,
    analyze,
    internalization_layer,
    suggested_bridge_layer,
)
from sparrow_vllm.analysis.visual_cutoff import VisualCutoff, cutoff_mask, decoder_layers
from sparrow_vllm.cli.main import main
from sparrow_vllm.errors import UsageError
from sparrow_vllm.toy_targets import VLM_ARCHES, build_toy_target
from sparrow_vllm.toy_world.dataset import write_dataset
from sparrow_vllm.toy_world.scene import WORDS, sample_scene
from sparrow_vllm.training.data import ConversationDataset
from sparrow_vllm.training.target import load_hf_target

TOY_WORLD = Path(__file__).resolve().parents[2] / "models" / "toy-world" / "target"


def removed_reference(target, inputs: dict, visual: torch.Tensor, cut: int) -> torch.Tensor:
    """[t, V] logits of the text rows when decoder layers cut.. run on the text rows alone:
    the full model's states entering layer `cut`, sliced to text rows, then the remaining
    layers called one by one with the text rows' own rotary embeddings and a causal mask."""
    layers = decoder_layers(target.model)
    captured: dict = {}

    def grab(_m, _args, kwargs):
        captured.update(kwargs)

    handle = layers[0].register_forward_pre_hook(grab, with_kwargs=True)
    try:
        out = target.model(**inputs, output_hidden_states=True)
    finally:
        handle.remove()
    text = (~visual).nonzero().squeeze(1)
    hidden = out.hidden_states[cut][:, text]
    cos, sin = captured["position_embeddings"]
    rotary = (cos[..., text, :], sin[..., text, :])
    n = len(text)
    mask = torch.ones(n, n, dtype=torch.bool).tril()[None, None]
    for layer in layers[cut:]:
        result = layer(hidden, attention_mask=mask, position_embeddings=rotary)
        hidden = result[0] if isinstance(result, tuple) else result
    text_model = getattr(target.model.model, "language_model", target.model.model)
    return target.lm_head(text_model.norm(hidden))[0]


@pytest.fixture(scope="module")
def clip_manifest(tmp_path_factory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("clips"), num=2, frames=[4], questions=["describe"])


@pytest.mark.parametrize("arch", VLM_ARCHES)
def test_cut_equals_removing_the_visual_rows(arch, clip_manifest, tmp_path):
    target_dir = build_toy_target(arch, tmp_path / arch, words=WORDS, num_layers=3, seed=5)
    target = load_hf_target(target_dir, attn_implementation="sdpa")
    probe = InternalizationProbe(target, AnalyzeSettings())
    sample = ConversationDataset(clip_manifest).load(0)
    inputs, _ = probe.extractor.conversation_inputs(sample)
    visual = probe._visual(inputs)
    assert visual.any() and (~visual).any()
    text = ~visual
    with torch.no_grad(), VisualCutoff(target.model) as cutoff:
        full = target.model(**inputs).logits[0]
        with cutoff.at(cutoff.num_layers, visual):
            torch.testing.assert_close(target.model(**inputs).logits[0], full, rtol=0, atol=0)
        for cut in (0, 1, 2):
            with cutoff.at(cut, visual):
                cut_logits = target.model(**inputs).logits[0]
            torch.testing.assert_close(cut_logits[text], removed_reference(target, inputs, visual, cut),
                                       rtol=1e-4, atol=1e-4)
            # a cut below L changes the text rows (the random target reads its visual rows)
            assert (cut_logits[text] - full[text]).abs().max() > 1e-3
        # outside .at() the model is the full model again
        torch.testing.assert_close(target.model(**inputs).logits[0], full, rtol=0, atol=0)


def test_cutoff_mask_hides_visual_keys_from_text_queries_only():
    visual = torch.tensor([False, True, True, False, False])
    allowed = cutoff_mask(visual, "sdpa", torch.float32)[0, 0]
    assert allowed[3].tolist() == [True, False, False, True, False]  # text sees text, causally
    assert allowed[2].tolist() == [True, True, True, False, False]  # visual rows keep their view
    additive = cutoff_mask(visual, "eager", torch.float32)[0, 0]
    assert (additive[3, 1:3] == torch.finfo(torch.float32).min).all() and additive[3, 3] == 0


def test_a_target_without_a_maskable_attention_is_refused(tmp_path):
    target = load_hf_target(build_toy_target("qwen2_5_vl", tmp_path / "t", num_layers=2))
    target.model.config.get_text_config()._attn_implementation = "flash_attention_2"
    with pytest.raises(UsageError, match="cannot be cut per layer"):
        VisualCutoff(target.model)


def test_internalization_layer_is_the_start_of_the_unchanged_tail():
    assert internalization_layer([0.5, 0.995, 0.9, 0.995, 1.0], 0.01) == 3
    assert internalization_layer([1.0, 1.0, 1.0], 0.01) == 0
    assert internalization_layer([0.2, 0.5, 0.9, 1.0], 0.01) == 3
    assert suggested_bridge_layer(3) == 2 and suggested_bridge_layer(0) is None


def test_toy_world_target_cut_at_zero_leaves_a_video_only_question_at_chance(tmp_path):
    """'what is the number ?' is answered from the digit in the frames alone (10 answers).
    The toy target reads its video to the last layer (x* = L), so analyze recommends a visual
    budget: the smallest N of the ladder within budget_tolerance of the full model. On these
    8-frame clips (64 visual rows) 32 rows leave the text rows no better than no video; 60 do
    not change them (a budget probe over 4 clips: one cut-0 forward per clip and rung)."""
    manifest = write_dataset(tmp_path / "data", num=16, frames=[8], questions=["number"], seed=4)
    target = load_hf_target(TOY_WORLD, attn_implementation="sdpa")
    settings = AnalyzeSettings(budget_ladder=(32, 60), budget_samples=4)
    result = analyze(target, ConversationDataset(manifest), settings)
    curves, layers = result["curves"], result["num_layers"]
    assert result["samples"] == 16 and layers == 8 and len(curves) == 9
    full, zero = curves[layers], curves[0]
    assert full["agreement"] == 1.0 and full["kl"] == pytest.approx(0.0, abs=1e-6)
    assert full["accuracy"] >= 0.9  # the target reads the digit
    # without the video every clip's text rows are the same, so the answer is one guess:
    # no better than always naming the most frequent digit of these clips
    digits = collections.Counter(sample_scene(4, i).digit for i in range(16))
    assert zero["accuracy"] <= max(digits.values()) / 16 < 0.5
    assert zero["kl"] > 0.1 and zero["agreement"] < full["agreement"]
    assert result["internalization_layer"] == layers
    budgets = {p["budget"]: p for p in result["budget_curve"]}
    assert list(budgets) == [32, 60] and result["budget_ladder_stopped_at"] is None
    assert all(p["samples"] == 4 and p["positions"] > 0 for p in budgets.values())
    assert result["recommended_visual_budget"] == 60, result["recommendation_reason"]
    assert budgets[60]["agreement"] >= 1 - settings.budget_tolerance
    assert budgets[32]["agreement"] < 1 - settings.budget_tolerance


def test_analyze_command_writes_json_and_plot_and_refuses_text_targets(tmp_path, capsys):
    manifest = write_dataset(tmp_path / "data", num=3, frames=[4], questions=["count"], seed=4)
    out = tmp_path / "analysis"
    main(["analyze", "--target", str(TOY_WORLD), "--data", str(manifest), "--out", str(out), "--samples", "2",
          "--budget-ladder", "64", "16"])
    result = json.loads((out / "analysis.json").read_text())
    assert result["samples"] == 2 and result["family"] == "qwen2_5_vl"
    # 4-frame clips have 32 visual rows: N = 16 is measured, the ladder stops at 64
    assert [(p["budget"], p["samples"]) for p in result["budget_curve"]] == [(16, 2)]
    assert result["budget_ladder_stopped_at"] == 64 and result["settings"]["budget_ladder"] == [16, 64]
    assert result["recommended_visual_budget"] in ("none", 16, 64) and result["recommendation_reason"]
    assert [c["layer"] for c in result["curves"]] == list(range(9))
    assert result["provenance"]["command"] and (out / "analysis.png").stat().st_size > 0
    text_target = build_toy_target("qwen2", tmp_path / "text")
    with pytest.raises(SystemExit) as exit_info:
        main(["analyze", "--target", str(text_target), "--data", str(manifest), "--out", str(tmp_path / "x")])
    assert exit_info.value.code == 2
    assert "text-only target" in capsys.readouterr().err
