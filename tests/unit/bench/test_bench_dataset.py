"""`sparrow-vllm bench-dataset`: the dataset file vLLM's `vllm bench serve` reads (its
ShareGPT loader, run here without an engine), the toy-world clips, a user's manifest
converted, and the printed commands parsed by vLLM's own parser."""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import get_args

import cv2
import pytest

from sparrow_vllm.bench.bench_dataset import (
    TOY_WORLD,
    BenchDatasetSettings,
    ToyQuestionName,
    bench_command,
    media_first_chat_template,
    serve_command,
    write_bench_dataset,
)
from sparrow_vllm.bench.server import ALL_FRAMES_ARGS
from sparrow_vllm.bench.toy_requests import ToyQuestion
from sparrow_vllm.cli.main import main
from sparrow_vllm.errors import MissingInput, UsageError
from sparrow_vllm.toy_world.scene import QUESTIONS
from sparrow_vllm.toy_world.target import CLIP_SECONDS
from sparrow_vllm.training.data import ConversationDataset
from tests.unit.helpers import LoggerRecords


def _toy(tmp_path: Path, **fields):
    settings = BenchDatasetSettings(toy_world=True, num=3, visual_tokens=64, **fields)
    return write_bench_dataset(tmp_path / "bench", settings), settings


def _frames_and_fps(path: str) -> tuple[int, float]:
    capture = cv2.VideoCapture(path)
    count, fps = int(capture.get(cv2.CAP_PROP_FRAME_COUNT)), capture.get(cv2.CAP_PROP_FPS)
    capture.release()
    return count, fps


def test_toy_world_clips_and_questions(tmp_path):
    dataset, _ = _toy(tmp_path, question="count", seed=5)
    on_disk = json.loads(dataset.path.read_text())
    assert on_disk == dataset.entries and len(on_disk) == 3
    assert dataset.toy_visual_tokens == 64 and dataset.media_dir == tmp_path.resolve() / "bench" / "videos"
    for index, entry in enumerate(on_disk):
        question = ToyQuestion(5, index, 8, "count")
        assert entry["conversations"] == [{"from": "human", "value": question.text},
                                          {"from": "gpt", "value": question.truth}]
        assert Path(entry["video"]).is_absolute() and Path(entry["video"]).parent == dataset.media_dir
        # the clip's own frame rate gives the toy world's duration, as the mp4 data URLs do
        frames, fps = _frames_and_fps(entry["video"])
        assert frames == 8 and fps == pytest.approx(8 / CLIP_SECONDS)
    assert len({Path(e["video"]).read_bytes() for e in on_disk}) == 3  # a scene per request


def test_the_toy_dataset_is_also_a_manifest_extract_features_reads(tmp_path):
    dataset, _ = _toy(tmp_path)
    sample = ConversationDataset(dataset.path).load(1)
    assert sample.video.shape == (8, 112, 112, 3) and sample.video_seconds == CLIP_SECONDS
    assert [t.role for t in sample.turns] == ["user", "assistant"]


def test_vllm_sharegpt_loader_reads_every_entry_as_a_video_chat(tmp_path):
    """vLLM 0.32's own loader and chat-message builder, as `vllm bench serve --dataset-name
    sharegpt --backend openai-chat` calls them."""
    from transformers import AutoTokenizer
    from vllm.benchmarks.datasets.datasets import ShareGPTDataset
    from vllm.benchmarks.lib.endpoint_request_func import RequestFuncInput, _get_chat_messages

    dataset, settings = _toy(tmp_path)
    tokenizer = AutoTokenizer.from_pretrained(TOY_WORLD / "target")
    samples = ShareGPTDataset(dataset_path=str(dataset.path), random_seed=0).sample(
        tokenizer=tokenizer, num_requests=len(dataset.entries), output_len=settings.output_len, no_oversample=True)
    assert len(samples) == 3  # none dropped by vLLM's 4-token minimum
    by_url = {s.multi_modal_data["video_url"]["url"]: s for s in samples}
    assert set(by_url) == {"file://" + e["video"] for e in dataset.entries}
    sample = by_url["file://" + dataset.entries[0]["video"]]
    assert sample.expected_output_len == settings.output_len
    request = RequestFuncInput(prompt=sample.prompt, api_url="http://x/v1/chat/completions",
                               prompt_len=sample.prompt_len, output_len=sample.expected_output_len,
                               model="m", multi_modal_content=sample.multi_modal_data)
    [message] = _get_chat_messages(request)
    assert message == {"role": "user", "content": [
        {"type": "text", "text": QUESTIONS["describe"]},
        {"type": "video_url", "video_url": {"url": "file://" + dataset.entries[0]["video"]}}]}


def test_printed_commands(tmp_path):
    from vllm.benchmarks.serve import add_cli_args
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    dataset, settings = _toy(tmp_path, max_concurrency=2, base_url="http://127.0.0.1:9", output_len=32)
    command = bench_command(dataset, settings)
    assert command[:3] == ["vllm", "bench", "serve"]
    parser = FlexibleArgumentParser()
    add_cli_args(parser)
    args = parser.parse_args(command[3:])  # every flag is one vLLM 0.32's bench serve has
    assert (args.backend, args.endpoint, args.dataset_name) == ("openai-chat", "/v1/chat/completions", "sharegpt")
    assert (args.dataset_path, args.num_prompts, args.no_oversample) == (str(dataset.path), 3, True)
    assert (args.sharegpt_output_len, args.temperature, args.max_concurrency) == (32, 0.0, 2)
    assert args.base_url == "http://127.0.0.1:9"

    serve = serve_command(dataset, settings)
    assert serve[:3] == ["vllm", "serve", str(TOY_WORLD / "target")]
    text = shlex.join(serve)
    assert shlex.join(ALL_FRAMES_ARGS) in text  # every frame of a clip, as the demo's server
    assert "--max-num-seqs 2" in text and "--max-model-len 576" in text
    assert serve[serve.index("--allowed-local-media-path") + 1] == str(dataset.media_dir)
    spec = json.loads(serve[serve.index("--speculative-config") + 1])
    assert spec == {"method": "sparrow", "model": str(TOY_WORLD / "sparrow-draft"), "num_speculative_tokens": 4}
    assert serve[serve.index("--chat-template") + 1] == str(dataset.chat_template)
    assert serve[serve.index("--chat-template-content-format") + 1] == "openai"


def test_toy_server_template_puts_the_video_first_as_the_target_was_trained(tmp_path):
    """vLLM's ShareGPT loader sends the question, then the video; the served template
    renders them as the toy world's training prompt (video, then question)."""
    from transformers import AutoTokenizer

    from sparrow_vllm.toy_world.target import prompt_messages

    dataset, _ = _toy(tmp_path)
    tokenizer = AutoTokenizer.from_pretrained(TOY_WORLD / "target")
    trained = tokenizer.apply_chat_template(prompt_messages("describe"), add_generation_prompt=True, tokenize=False)
    sent = [{"role": "user", "content": [{"type": "text", "text": QUESTIONS["describe"]},
                                         {"type": "video_url", "video_url": {"url": "file:///v.mp4"}}]}]
    assert tokenizer.apply_chat_template(sent, add_generation_prompt=True, tokenize=False) != trained
    served = tokenizer.apply_chat_template(sent, add_generation_prompt=True, tokenize=False,
                                           chat_template=dataset.chat_template.read_text())
    assert served == trained
    with pytest.raises(UsageError, match="needs updating"):
        media_first_chat_template("{% for c in message.content %}{% endfor %}")


def _write_manifest(root: Path, rows: list) -> Path:
    (root / "media" / "clips").mkdir(parents=True)
    (root / "media" / "pics").mkdir()
    for name in ("clips/a.mp4", "clips/b.mp4", "pics/c.png"):
        (root / "media" / name).write_bytes(b"x")
    manifest = root / "meta" / "train.jsonl"
    manifest.parent.mkdir()
    manifest.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return manifest


def _row(question: str, answer: str = "an answer", **media) -> dict:
    return {"conversations": [{"from": "human", "value": question}, {"from": "gpt", "value": answer}], **media}


def test_manifest_rows_become_entries_with_absolute_media(tmp_path):
    multi_turn = _row("<video>\nfirst question ?", video="clips/b.mp4")
    multi_turn["conversations"] += [{"from": "human", "value": "and then ?"}, {"from": "gpt", "value": "more"}]
    rows = [
        {"id": "v1", **_row("<video>\nwhat happens ?", "a cat runs", video="clips/a.mp4", video_seconds=12.5)},
        multi_turn,
        {"id": "missing", **_row("<video> where ?", video="clips/gone.mp4")},
        {"id": "both", **_row("<video> <image> ?", video="clips/a.mp4", image="pics/c.png")},
        {"id": "empty", **_row("<video>", video="clips/a.mp4")},
        {"id": "answer-first", "conversations": [{"from": "gpt", "value": "x"}, {"from": "human", "value": "y"}]},
        "{not json",
        {"id": "pic", "messages": [{"role": "user", "content": "<image>\nwhat colour ?"},
                                   {"role": "assistant", "content": "red"}], "image": ["pics/c.png"]},
        {"id": "text", **_row("just a text question here")},
    ]
    manifest = _write_manifest(tmp_path, rows)
    settings = BenchDatasetSettings(manifest=str(manifest), media_root=str(tmp_path / "media"))
    with LoggerRecords("sparrow_vllm.bench.bench_dataset") as records:
        dataset = write_bench_dataset(tmp_path / "out", settings)
    media = (tmp_path / "media").resolve()
    assert json.loads(dataset.path.read_text()) == [
        {"id": "v1", "conversations": [{"from": "human", "value": "what happens ?"},
                                       {"from": "gpt", "value": "a cat runs"}],
         "video": str(media / "clips" / "a.mp4"), "video_seconds": 12.5},
        {"id": "row1", "conversations": [{"from": "human", "value": "first question ?"},
                                         {"from": "gpt", "value": "an answer"}],
         "video": str(media / "clips" / "b.mp4")},
        {"id": "pic", "conversations": [{"from": "human", "value": "what colour ?"}, {"from": "gpt", "value": "red"}],
         "image": str(media / "pics" / "c.png")},
        {"id": "text", "conversations": [{"from": "human", "value": "just a text question here"},
                                         {"from": "gpt", "value": "an answer"}]},
    ]
    assert dataset.later_turns_dropped == 1
    assert dict(dataset.skips.counts) == {"missing_file": 1, "bad_record": 4}
    logged = " ".join(records.messages)
    assert "skipped 5 rows" in logged and "sends the first question only" in logged
    assert dataset.media_dir == media  # the one directory the server must allow
    serve = serve_command(dataset, settings)
    assert serve[:3] == ["vllm", "serve", "<target dir>"]
    assert json.loads(serve[serve.index("--limit-mm-per-prompt") + 1]) == {"video": 1, "image": 1}
    assert serve[serve.index("--allowed-local-media-path") + 1] == str(media)
    assert "--media-io-kwargs" not in serve  # a real target keeps vLLM's own video sampling

    first_two = write_bench_dataset(tmp_path / "two", BenchDatasetSettings(
        manifest=str(manifest), media_root=str(tmp_path / "media"), num=2))
    assert [e["id"] for e in first_two.entries] == ["v1", "row1"]


def test_manifest_media_resolve_against_the_manifest_directory_by_default(tmp_path):
    manifest = _write_manifest(tmp_path, [_row("<video> what ?", video="../media/clips/a.mp4")])
    dataset = write_bench_dataset(tmp_path / "out", BenchDatasetSettings(manifest=str(manifest)))
    assert dataset.entries[0]["video"] == str((tmp_path / "media" / "clips" / "a.mp4").resolve())


def test_a_manifest_without_a_usable_row_is_refused(tmp_path):
    manifest = _write_manifest(tmp_path, [_row("<video> what ?", video="gone.mp4")])
    with pytest.raises(MissingInput, match="no usable row.*missing_file 1"):
        write_bench_dataset(tmp_path / "out", BenchDatasetSettings(manifest=str(manifest)))


def test_cli_writes_and_prints_the_commands(tmp_path, capsys):
    main(["bench-dataset", "--toy-world", "--num", "2", "--visual-tokens", "32", "--out", str(tmp_path / "o"),
          "--base-url", "http://127.0.0.1:9"])
    out = capsys.readouterr().out
    [bench] = [line.strip() for line in out.splitlines() if line.strip().startswith("vllm bench serve")]
    [serve] = [line.strip() for line in out.splitlines() if line.strip().startswith("vllm serve")]
    assert "--dataset-path " + str((tmp_path / "o" / "dataset.json").resolve()) in bench
    assert shlex.split(serve)[2] == str(TOY_WORLD / "target")
    assert len(list((tmp_path / "o" / "videos").glob("*.mp4"))) == 2
    assert sorted(json.loads((tmp_path / "o" / "dataset.json").read_text())[0]) == [
        "conversations", "id", "video", "video_seconds"]


@pytest.mark.parametrize("argv, message", [
    ([], "give exactly one of --toy-world and --manifest PATH"),
    (["--toy-world", "--manifest", "m.json"], "give exactly one of --toy-world and --manifest PATH"),
    (["--toy-world", "--media-root", "r"], "--media-root goes with --manifest"),
    (["--toy-world", "--num", "0"], "--num: Input should be greater than or equal to 1"),
])
def test_cli_refuses_what_does_not_fit(tmp_path, capsys, argv, message):
    with pytest.raises(SystemExit) as exit_info:
        main(["bench-dataset", "--out", str(tmp_path / "o"), *argv])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_question_choices_are_the_toy_worlds():
    assert get_args(ToyQuestionName) == tuple(QUESTIONS)


def test_bench_serve_reads_vllms_counters_beside_sparrows_own():
    """`vllm bench serve` sums every `vllm:spec_decode*_total` sample whose name holds
    `num_drafts`, `num_accepted_tokens`, ...: Sparrow's own metrics on the same /metrics
    must not be among them."""
    import asyncio

    from vllm.benchmarks.serve import fetch_spec_decode_metrics

    from sparrow_vllm.serving.vllm.metrics import METRICS

    labels = '{engine="0",model_name="m"}'
    text = "\n".join([
        f"vllm:spec_decode_num_drafts_total{labels} 10.0",
        f"vllm:spec_decode_num_draft_tokens_total{labels} 40.0",
        f"vllm:spec_decode_num_accepted_tokens_total{labels} 25.0",
        *(f'vllm:spec_decode_num_accepted_tokens_per_pos_total{{engine="0",model_name="m",position="{p}"}} {n}'
          for p, n in enumerate((9.0, 7.0, 6.0, 3.0))),
        *(f"{name}{labels} 1000.0" for metric in METRICS for name in metric.exposed_names()),
    ])

    class Response:
        status = 200

        async def text(self) -> str:
            return text

        async def __aenter__(self) -> Response:
            return self

        async def __aexit__(self, *exc: object) -> None:
            return None

    class Session:
        def get(self, url: str) -> Response:
            return Response()

    metrics = asyncio.run(fetch_spec_decode_metrics("http://x", Session()))
    assert (metrics.num_drafts, metrics.num_draft_tokens, metrics.num_accepted_tokens) == (10, 40, 25)
    assert metrics.accepted_per_pos == {0: 9, 1: 7, 2: 6, 3: 3}
