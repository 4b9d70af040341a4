"""The benchmarks' arithmetic and parsing: acceptance, speedups, /metrics, chat timings."""

from __future__ import annotations

import pytest

from sparrow_vllm.bench.chat_load import ChatResult, load_summary
from sparrow_vllm.bench.server import (
    ALL_FRAMES_ARGS,
    CPU_SERVE_ARGS,
    check_server_saw_videos,
    parse_metrics,
    video_serve_args,
)
from sparrow_vllm.bench.speedup import (
    PER_POSITION,
    acceptance,
    counter_delta,
    counter_sum,
    speedups,
)
from sparrow_vllm.bench.toy_requests import ToyQuestion

METRICS = """\
# HELP vllm:spec_decode_num_drafts_total Number of spec decoding drafts.
# TYPE vllm:spec_decode_num_drafts_total counter
vllm:spec_decode_num_drafts_total{engine="0",model_name="m"} 10.0
vllm:spec_decode_num_draft_tokens_total{engine="0",model_name="m"} 40.0
vllm:spec_decode_num_accepted_tokens_total{engine="0",model_name="m"} 25.0
vllm:spec_decode_num_accepted_tokens_per_pos_total{engine="0",model_name="m",position="1"} 7.0
vllm:spec_decode_num_accepted_tokens_per_pos_total{engine="0",model_name="m",position="0"} 9.0
vllm:spec_decode_num_accepted_tokens_per_pos_total{engine="0",model_name="m",position="3"} 3.0
vllm:spec_decode_num_accepted_tokens_per_pos_total{engine="0",model_name="m",position="2"} 6.0
vllm:num_requests_running{engine="0",model_name="m"} 0.0
"""


def test_parse_metrics_orders_positions_and_drops_total_suffix():
    m = parse_metrics(METRICS)
    assert m["vllm:spec_decode_num_drafts"] == 10.0
    assert m[PER_POSITION] == [9.0, 7.0, 6.0, 3.0]
    assert m["vllm:num_requests_running"] == 0.0


def test_acceptance_is_vllms_definition():
    stats = acceptance(parse_metrics(METRICS))
    assert stats["acceptance_length"] == pytest.approx(1 + 25 / 10)
    assert stats["per_position_rate"] == pytest.approx([0.9, 0.7, 0.6, 0.3])
    assert acceptance({})["acceptance_length"] is None


def test_counter_delta_subtracts_scalars_and_vectors():
    before = {"vllm:spec_decode_num_drafts": 4.0, PER_POSITION: [3.0, 1.0]}
    after = parse_metrics(METRICS)
    delta = counter_delta(before, after)
    assert delta["vllm:spec_decode_num_drafts"] == 6.0
    assert delta["vllm:spec_decode_num_accepted_tokens"] == 25.0
    assert delta[PER_POSITION] == [6.0, 6.0, 6.0, 3.0]


def test_counter_sum_adds_requests_and_pads_positions():
    a = {"vllm:spec_decode_num_drafts": 2.0, "vllm:spec_decode_num_accepted_tokens": 3.0, PER_POSITION: [2.0, 1.0]}
    b = {"vllm:spec_decode_num_drafts": 3.0, "vllm:spec_decode_num_accepted_tokens": 5.0,
         PER_POSITION: [3.0, 1.0, 1.0]}
    total = counter_sum([a, b])
    assert total["vllm:spec_decode_num_drafts"] == 5.0 and total[PER_POSITION] == [5.0, 2.0, 1.0]
    assert acceptance(total)["acceptance_length"] == pytest.approx(1 + 8 / 5)
    assert counter_sum([])[PER_POSITION] == []


def test_video_serve_args_hold_one_whole_video_and_every_frame():
    spec = {"method": "sparrow", "model": "d", "num_speculative_tokens": 4}
    args = video_serve_args(8192, 4, spec)
    assert args[args.index("--max-model-len") + 1] == args[args.index("--max-num-batched-tokens") + 1] == "8704"
    assert args[args.index("--max-num-seqs") + 1] == "4"
    assert '"method": "sparrow"' in args[args.index("--speculative-config") + 1]
    assert args[args.index(ALL_FRAMES_ARGS[0]) + 1] == ALL_FRAMES_ARGS[1]
    assert args[-len(CPU_SERVE_ARGS):] == CPU_SERVE_ARGS
    plain = video_serve_args(512, 1, extra=["--dtype", "bfloat16"])
    assert "--speculative-config" not in plain and plain[-2:] == ["--dtype", "bfloat16"]
    assert "--enforce-eager" not in plain


def test_check_server_saw_videos_names_the_fix():
    check_server_saw_videos([600, 1600], [512, 1536])
    with pytest.raises(RuntimeError, match="ALL_FRAMES_ARGS.*vllm serve"):
        check_server_saw_videos([600, 80], [512, 1536])


def test_speedups_sum_over_requests():
    base = [{"prefill_s": 1.0, "decode_s": 4.0}, {"prefill_s": 1.0, "decode_s": 2.0}]
    spec = [{"prefill_s": 1.0, "decode_s": 2.0}, {"prefill_s": 1.0, "decode_s": 1.0}]
    out = speedups(base, spec)
    assert out["dsr"] == pytest.approx(6 / 3)
    assert out["esr"] == pytest.approx(8 / 5)
    with pytest.raises(ValueError, match="same requests"):
        speedups(base, spec[:1])


def test_load_summary_tpot_skips_one_token_answers():
    results = [ChatResult("a b c", 100, 5, ttft_s=1.0, total_s=3.0), ChatResult("x", 50, 1, ttft_s=0.5, total_s=0.5)]
    s = load_summary(results, wall_s=4.0)
    assert s["output_tokens"] == 6 and s["output_tokens_per_s"] == 1.5 and s["prompt_tokens_mean"] == 75
    assert s["tpot_mean_ms"] == pytest.approx(500.0)
    assert s["ttft_mean_s"] == pytest.approx(0.75)


def test_toy_question_mp4_round_trip_keeps_frames_and_duration(tmp_path):
    import base64

    import cv2

    from sparrow_vllm.toy_world.target import CLIP_SECONDS

    question = ToyQuestion(seed=1, index=0, frames=24, question="count")
    url = question.chat_messages()[0]["content"][0]["video_url"]["url"]
    path = tmp_path / "clip.mp4"
    path.write_bytes(base64.b64decode(url.split(",", 1)[1]))
    cap = cv2.VideoCapture(str(path))
    frames, fps = int(cap.get(cv2.CAP_PROP_FRAME_COUNT)), cap.get(cv2.CAP_PROP_FPS)
    cap.release()
    assert frames == 24
    assert frames / fps == pytest.approx(CLIP_SECONDS, rel=1e-3)
    assert question.truth == question.truth.strip() and question.truth
    assert question.visual_tokens == 24 * 8
