"""Family adapters: resolution, placeholders, Qwen3-VL's frame text, and the drafter's use
of the family rule (rows the draft skips in serving are the rows training marks visual)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from sparrow_vllm.errors import SparrowConfigError
from sparrow_vllm.families import TargetFamily, resolve_family, supported_model_types
from sparrow_vllm.families.qwen import MAX_FRAME_GAP
from sparrow_vllm.serving.text_row_reuse import RequestContent
from sparrow_vllm.serving.visual_rows import VisualRows
from sparrow_vllm.training.attention import causal_text_attention
from tests.unit.helpers import vl_family
from tests.unit.serving.test_drafter import HIDDEN, Sequence, _check_cache, _draft, _drafter, _step

VIDEO, START, END, IMAGE = 60, 61, 62, 63
# vLLM's own model class for each family's architecture (what the engine asks about)
VLLM_CLASSES = {
    "qwen2": ("qwen2", "Qwen2ForCausalLM"),
    "qwen2_vl": ("qwen2_vl", "Qwen2VLForConditionalGeneration"),
    "qwen2_5_vl": ("qwen2_5_vl", "Qwen2_5_VLForConditionalGeneration"),
    "qwen3_vl": ("qwen3_vl", "Qwen3VLForConditionalGeneration"),
    "llava_onevision": ("llava_onevision", "LlavaOnevisionForConditionalGeneration"),
}


def qwen3() -> TargetFamily:
    return vl_family(VIDEO, IMAGE, START, END, model_type="qwen3_vl")


def frames(*timestamps: list[int], pads: int = 4) -> list[int]:
    """One Qwen3-VL video as vLLM expands it: per frame `<t seconds> <start> pads <end>`."""
    out: list[int] = []
    for ts in timestamps:
        out += [*ts, START, *[VIDEO] * pads, END]
    return out


def test_every_supported_family_resolves_and_unknown_ones_stop():
    assert supported_model_types() == sorted(VLLM_CLASSES)
    with pytest.raises(SparrowConfigError, match=r"model_type='llama'.*supported: llava_onevision, qwen2"):
        resolve_family(SimpleNamespace(model_type="llama", architectures=["LlamaForCausalLM"]))


def test_llava_onevision_placeholders_come_from_its_config():
    family = resolve_family(SimpleNamespace(model_type="llava_onevision", image_token_index=5,
                                            video_token_index=6, architectures=["X"]))
    assert family.placeholder_ids == {5, 6} and family.positions == "1d"
    assert family.visual_token_mask([1, 5, 5, 2, 6, 3]) == [False, True, True, False, True, False]


@pytest.mark.parametrize("name", sorted(VLLM_CLASSES))
def test_family_record_of_intermediate_layers_matches_vllm(name):
    import importlib

    from vllm.model_executor.models.interfaces import supports_eagle3

    module, cls = VLLM_CLASSES[name]
    vllm_cls = getattr(importlib.import_module(f"vllm.model_executor.models.{module}"), cls)
    family_cls = type(resolve_family(SimpleNamespace(model_type=name)))
    assert family_cls.vllm_aux_hidden_states == supports_eagle3(vllm_cls)


def test_feature_layer_the_family_cannot_return_stops_with_the_fix():
    family = resolve_family(SimpleNamespace(model_type="llava_onevision", image_token_index=5,
                                            video_token_index=6, architectures=["LlavaOnevisionForConditionalGeneration"]))
    family.check_feature_layer(None, "final")
    with pytest.raises(SparrowConfigError, match="--feature final"):
        family.check_feature_layer(27, "penultimate")


def test_qwen3_vl_frame_text_inside_one_video_is_visual():
    video = frames([1, 2, 3], [1, 4, 3], [1, 5, 3])
    tokens = [7, 8, *video, 9, START, *frames([1, 2, 3]), END, 10]
    mask = qwen3().visual_token_mask(tokens)
    first_pad = 2 + 3 + 1  # the first timestamp and <start> stay text
    end = 2 + len(video) - 1  # so does the video's last <end>
    assert mask == [first_pad <= i < end or t == VIDEO for i, t in enumerate(tokens)]
    # frame_text="text": only placeholders
    assert qwen3().visual_token_mask(tokens, "text") == [t == VIDEO for t in tokens]


def test_frame_gaps_do_not_join_two_videos_or_long_text():
    two_videos = [*frames([1]), END, START, *frames([2])]  # markers between: two videos
    long_gap = [START, VIDEO, END, *[5] * MAX_FRAME_GAP, START, VIDEO, END]
    for tokens in (two_videos, long_gap):
        assert qwen3().visual_token_mask(tokens) == [t == VIDEO for t in tokens]


def test_frame_text_is_cost_flat_in_video_length():
    """Text rows the draft keeps per video do not grow with the number of frames."""
    def text_rows(n_frames):
        tokens = [7, *frames(*[[1, 2, 3]] * n_frames), 8]
        return sum(not v for v in qwen3().visual_token_mask(tokens))

    assert text_rows(2) == text_rows(64) == 1 + 3 + 1 + 1 + 1  # text, first timestamp, markers, text


def test_visual_rows_keep_one_span_per_video():
    rows = VisualRows(qwen3(), "visual", torch.device("cpu"))
    video = frames([1, 2], [1, 3], [1, 4])
    # as transformers >= 5.10 renders it, each video inside its own <start> ... <end>
    rows.add_request("a", [7, START, *video, END, 8, START, *video, END])
    rows.add_request("b", [7, 8, 9])
    spans = rows.batch_spans(["b", "a"])
    assert spans.shape == (2, 2, 3)  # (start, end, kept): budget "none" keeps no row
    assert spans[0].tolist() == [[0, 0, 0], [0, 0, 0]]
    assert spans[1, 0].tolist() == [2 + 3, 2 + len(video) - 1, 0]
    assert rows.batch_spans(["b"]) is None


def _one_pass(model, seq, visual, end):
    rows = [i for i in range(end) if not visual[i + 1] or i == end - 1]
    out = model(model.embed_input_ids(seq.x[[i + 1 for i in rows]]), seq.h[rows], torch.tensor(rows),
                causal_text_attention(1, len(rows), None))
    return out[-1]


def test_drafter_skips_frame_text_across_chunks_and_matches_one_pass():
    model = _draft()
    drafter = _drafter(model)
    drafter.visual_rows = VisualRows(qwen3(), "visual", torch.device("cpu"))
    drafter.cache.visual_token_mask = drafter.visual_rows.token_mask
    a = Sequence(50, seed=3)
    video = torch.tensor(frames([1, 2, 3], [1, 4, 3], [1, 5, 3]))
    a.x[4 : 4 + len(video)] = video
    prompt = a.x[:40].tolist()
    drafter.on_requests_added({"a": RequestContent(tuple(prompt))})
    visual = qwen3().visual_token_mask(a.x.tolist())
    # chunk boundaries inside the frame text (row 9 carries token 10, inside a gap)
    _step(drafter, [("a", a, 0, 10, 10)])
    _step(drafter, [("a", a, 10, 14, 14)])
    _step(drafter, [("a", a, 24, 16, 16)])
    end = 40
    for nv in (2, 4, 1):
        _, hidden = _step(drafter, [("a", a, end, 4, nv)])
        end += nv
        torch.testing.assert_close(hidden[0], _one_pass(model, a, visual, end), atol=1e-5, rtol=1e-4)
    seq = drafter.cached_rows()["a"]["seq"]
    assert seq == [i for i in range(end) if not visual[i + 1]][: len(seq)]
    assert not any(visual[i + 1] for i in seq)
    _check_cache(drafter.cache)
    drafter.release("a")
    assert drafter.visual_rows.batch_spans(["a"]) is None
    assert HIDDEN == model.draft.layer_config.hidden_size


@pytest.mark.parametrize("arch", ["qwen2_vl", "llava_onevision"])
def test_a_draft_reading_a_layer_vllm_cannot_return_is_refused_when_made(tmp_path, arch, capsys):
    from sparrow_vllm.cli.main import main
    from sparrow_vllm.toy_targets import build_toy_target

    target = build_toy_target(arch, tmp_path / "t", num_layers=2)
    with pytest.raises(SystemExit) as exit_info:  # a SparrowConfigError, printed without traceback
        main(["init-draft", "--target", str(target), "--out", str(tmp_path / "d"), "--feature", "penultimate"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "error: The draft reads the target's layer feature 'penultimate'" in err and "--feature final" in err
    assert not (tmp_path / "d").exists()
    main(["init-draft", "--target", str(target), "--out", str(tmp_path / "d"), "--feature", "final"])
