"""A dataset for vLLM's own load benchmark, `vllm bench serve`, against a Sparrow server
with video requests: toy-world clips, or the rows of a user's LLaVA-style manifest.

The file is vLLM's ShareGPT format (`--dataset-name sharegpt`), which is already the
LLaVA layout: a JSON list of ``{"id", "conversations": [{"from": "human", "value":
question}, {"from": "gpt", "value": answer}], "video": "/abs/clip.mp4"}`` (or ``"image"``).
vLLM 0.32's ShareGPTDataset (vllm/benchmarks/datasets/datasets.py) is the only dataset of
`vllm bench serve` that reads a video from a local file (`custom` is text, `custom_image`
images only); it sends the first turn as the question, takes the second as the answer (for
its length only), and one ``"image"`` or ``"video"`` per entry, a local path as a file://
URL that the server reads only under ``--allowed-local-media-path``. With ``--backend
openai-chat`` the question and the video go as one user message, the question first. The
toy-world target was trained on the video first and, asked the other way round, often
stops after its first sentence: its server gets the target's chat template with media
parts moved before text parts (OUT/chat_template.jinja, `--chat-template`).

vLLM drops an entry whose question is under 4 or over 1024 tokens and, unless told
``--no-oversample``, repeats others to make up ``--num-prompts``: the printed command passes
``--no-oversample`` so a dropped entry shows as fewer successful requests.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from sparrow_vllm.bench.server import video_serve_args
from sparrow_vllm.errors import MissingInput, UsageError
from sparrow_vllm.training.data import (
    media_paths,
    parse_turns,
    read_manifest,
    resolve_media,
    row_id,
)
from sparrow_vllm.training.skips import SampleError, SkipReport

logger = logging.getLogger(__name__)

TOY_WORLD = Path(__file__).resolve().parents[2] / "models" / "toy-world"
DATASET_FILE = "dataset.json"
CHAT_TEMPLATE_FILE = "chat_template.jinja"
# the toy-world target's chat template walks a message's parts in order; the served copy
# walks its media parts first
_PARTS_LOOP = "{% for part in message['content'] %}"
_MEDIA_FIRST_LOOP = ("{% for part in (message['content'] | rejectattr('type', 'equalto', 'text') | list)"
                     " + (message['content'] | selectattr('type', 'equalto', 'text') | list) %}")
DEFAULT_TOY_NUM = 16
ToyQuestionName = Literal["describe", "count", "number", "first"]  # sparrow_vllm/toy_world/scene.py: QUESTIONS


class BenchDatasetSettings(BaseModel):
    """What `sparrow-vllm bench-dataset` writes and the commands it prints."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    toy_world: bool = Field(False, description="Write toy-world clips (mp4) and their questions.")
    manifest: str | None = Field(None, description="Convert this LLaVA-style manifest (.json or .jsonl, "
                                 "as extract-features reads it) instead; its media stay where they are.")
    media_root: str | None = Field(None, description="With --manifest: the directory relative media paths "
                                   "resolve against (default: the manifest's directory).")
    num: int | None = Field(None, ge=1, description="Requests to write: toy-world clips (default "
                            f"{DEFAULT_TOY_NUM}), or the first this many usable manifest rows (default all).")
    visual_tokens: int = Field(512, ge=16, description="Toy world: video tokens per clip (8 per 112x112 "
                               "frame; the frame count is rounded to an even number).")
    question: ToyQuestionName = Field("describe", description="Toy world: the question every request asks.")
    seed: int = Field(3, description="Toy world: scene seed (0 trained the target and its draft).")
    output_len: int = Field(64, ge=1, description="Most tokens per answer: the printed command's "
                            "--sharegpt-output-len.")
    temperature: float = Field(0.0, ge=0, description="Sampling temperature of the printed command (0: greedy).")
    max_concurrency: int = Field(4, ge=1, description="Requests in flight in the printed commands "
                                 "(bench --max-concurrency; the server's --max-num-seqs for the toy world).")
    base_url: str = Field("http://127.0.0.1:8000", description="The server the printed bench command asks.")
    target: str | None = Field(None, description="The target for the printed `vllm serve` (toy world: "
                               "models/toy-world/target).")
    draft: str | None = Field(None, description="The Sparrow draft for the printed `vllm serve` (toy world: "
                              "models/toy-world/sparrow-draft).")
    num_speculative_tokens: int = Field(4, ge=1, description="K of the printed `vllm serve`.")

    @model_validator(mode="after")
    def _one_source(self) -> BenchDatasetSettings:
        if self.toy_world == (self.manifest is not None):
            raise ValueError("give exactly one of --toy-world and --manifest PATH")
        if self.toy_world and self.media_root is not None:
            raise ValueError("--media-root goes with --manifest, not --toy-world")
        return self


@dataclass
class BenchDataset:
    """A written dataset: where it is, what it holds, and what the server must be told."""

    path: Path
    entries: list[dict[str, Any]]
    media_dir: Path | None  # every media file lies under it: the server's --allowed-local-media-path
    toy_visual_tokens: int | None = None  # toy world: video tokens of each clip
    chat_template: Path | None = None  # toy world: the target's template, media parts first
    skips: SkipReport = field(default_factory=SkipReport)
    later_turns_dropped: int = 0  # rows whose turns past the first exchange vLLM does not send

    def media_counts(self) -> dict[str, int]:
        return {kind: sum(kind in entry for entry in self.entries) for kind in ("video", "image")}


def write_bench_dataset(out: str | Path, settings: BenchDatasetSettings) -> BenchDataset:
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    dataset = _toy_world(out, settings) if settings.toy_world else _from_manifest(out, settings)
    dataset.path.write_text(json.dumps(dataset.entries, indent=1) + "\n")
    logger.info("wrote %d requests to %s", len(dataset.entries), dataset.path)
    return dataset


def _toy_world(out: Path, settings: BenchDatasetSettings) -> BenchDataset:
    from sparrow_vllm.bench.toy_requests import ToyQuestion
    from sparrow_vllm.toy_world.dataset import frames_for_visual_tokens, write_clip
    from sparrow_vllm.toy_world.target import CLIP_SECONDS

    frames = frames_for_visual_tokens(settings.visual_tokens)
    videos = out / "videos"
    videos.mkdir(exist_ok=True)
    entries = []
    for index in range(settings.num or DEFAULT_TOY_NUM):
        question = ToyQuestion(settings.seed, index, frames, settings.question)
        clip = write_clip(videos / f"{index:04d}", question.clip(), "mp4")
        entries.append({
            "id": f"toy-{settings.seed}-{index}",
            "conversations": [{"from": "human", "value": question.text}, {"from": "gpt", "value": question.truth}],
            "video": str(clip),
            "video_seconds": CLIP_SECONDS,  # so the file is also a manifest extract-features reads
        })
    tokens = ToyQuestion(settings.seed, 0, frames, settings.question).visual_tokens
    if tokens != settings.visual_tokens:
        logger.info("toy world: %d frames per clip, %d video tokens (asked %d)", frames, tokens,
                    settings.visual_tokens)
    target = Path(settings.target) if settings.target else TOY_WORLD / "target"
    template = out / CHAT_TEMPLATE_FILE
    template.write_text(media_first_chat_template((target / CHAT_TEMPLATE_FILE).read_text()))
    return BenchDataset(out / DATASET_FILE, entries, videos, toy_visual_tokens=tokens, chat_template=template)


def media_first_chat_template(template: str) -> str:
    """The toy-world target's chat template with each message's media parts rendered
    before its text parts, whatever order a client sends them in."""
    if template.count(_PARTS_LOOP) != 1:
        raise UsageError(f"the toy-world chat template does not walk message parts with {_PARTS_LOOP!r} once; "
                         "media_first_chat_template (sparrow_vllm/bench/bench_dataset.py) needs updating")
    return template.replace(_PARTS_LOOP, _MEDIA_FIRST_LOOP)


def _from_manifest(out: Path, settings: BenchDatasetSettings) -> BenchDataset:
    assert settings.manifest is not None
    manifest = Path(settings.manifest)
    media_root = Path(settings.media_root) if settings.media_root is not None else manifest.parent
    skips, entries, later_turns = SkipReport(), [], 0
    for index, row in enumerate(read_manifest(manifest)):
        if settings.num is not None and len(entries) == settings.num:
            break
        sample_id = row_id(row, index)
        try:
            entry, dropped = _entry(row, sample_id, media_root)
        except SampleError as error:
            skips.add(sample_id, error)
            logger.warning("skipping %s (%s): %s", sample_id, error.reason, error)
            continue
        entries.append(entry)
        later_turns += dropped
    if skips.total():
        logger.warning("%s: %s", manifest, skips.summary())
    if later_turns:
        logger.warning("%d rows have more than one exchange: vLLM's ShareGPT loader sends the first question "
                       "only", later_turns)
    if not entries:
        raise MissingInput(f"{manifest}: no usable row ({skips.summary()})")
    media = [Path(entry[kind]) for entry in entries for kind in ("video", "image") if kind in entry]
    media_dir = Path(os.path.commonpath([str(p.parent) for p in media])) if media else None
    if media_dir is not None and media_dir == Path(media_dir.anchor):
        logger.warning("the media share no directory below %s: the server's --allowed-local-media-path %s "
                       "lets requests read any local file", media_dir, media_dir)
    return BenchDataset(out / DATASET_FILE, entries, media_dir, skips=skips, later_turns_dropped=later_turns)


def _entry(row: Any, sample_id: str, media_root: Path) -> tuple[dict[str, Any], int]:
    """One manifest row as a ShareGPT entry (media path absolute), and 1 if the row has
    turns past its first exchange; SampleError when vLLM could not send it as it is."""
    if isinstance(row, SampleError):  # a JSONL line that did not parse
        raise row
    if not isinstance(row, dict):
        raise SampleError("bad_record", f"row is a {type(row).__name__}; expected an object")
    turns = parse_turns(row)  # visual markers removed
    if len(turns) < 2 or (turns[0].role, turns[1].role) != ("user", "assistant"):
        raise SampleError("bad_record", "the first two turns are not a question and its answer, which is all "
                          "vLLM's ShareGPT loader reads")
    if not turns[0].text:
        raise SampleError("bad_record", "the question is empty once <video>/<image> are removed")
    video, images = media_paths(row)
    if (video is not None) + len(images) > 1:
        raise SampleError("bad_record", f"{'a video and ' if video else ''}{len(images)} images: vLLM's "
                          "ShareGPT loader sends one image or one video per request")
    entry: dict[str, Any] = {"id": sample_id, "conversations": [
        {"from": "human", "value": turns[0].text}, {"from": "gpt", "value": turns[1].text}]}
    for kind, media in (("video", video), ("image", images[0] if images else None)):
        if media is None:
            continue
        path = resolve_media(media, media_root).resolve()
        if not path.is_file():
            raise SampleError("missing_file", f"{kind} {path} does not exist")
        entry[kind] = str(path)
    if "video_seconds" in row:
        entry["video_seconds"] = row["video_seconds"]
    return entry, int(len(turns) > 2)


def speculative_config(settings: BenchDatasetSettings) -> dict[str, Any]:
    draft = settings.draft or (str(TOY_WORLD / "sparrow-draft") if settings.toy_world else "<draft dir>")
    return {"method": "sparrow", "model": draft, "num_speculative_tokens": settings.num_speculative_tokens}


def serve_command(dataset: BenchDataset, settings: BenchDatasetSettings) -> list[str]:
    """`vllm serve` for the dataset: the toy world's video arguments (every frame of a clip
    kept, sizes for its clips), or a user's target with the media the manifest names."""
    target = settings.target or (str(TOY_WORLD / "target") if settings.toy_world else "<target dir>")
    spec = speculative_config(settings)
    if dataset.toy_visual_tokens is not None:
        args = video_serve_args(dataset.toy_visual_tokens, settings.max_concurrency, spec, extra=[])
        assert dataset.chat_template is not None
        args += ["--chat-template", str(dataset.chat_template), "--chat-template-content-format", "openai"]
    else:
        limits = {kind: 1 for kind, count in dataset.media_counts().items() if count}
        args = ["--speculative-config", json.dumps(spec)]
        args += ["--limit-mm-per-prompt", json.dumps(limits)] if limits else []
    if dataset.media_dir is not None:
        args += ["--allowed-local-media-path", str(dataset.media_dir)]
    return ["vllm", "serve", target, *args]


def bench_command(dataset: BenchDataset, settings: BenchDatasetSettings) -> list[str]:
    """`vllm bench serve` over every entry of the dataset, as chat requests."""
    return ["vllm", "bench", "serve", "--backend", "openai-chat", "--endpoint", "/v1/chat/completions",
            "--base-url", settings.base_url, "--dataset-name", "sharegpt", "--dataset-path", str(dataset.path),
            "--num-prompts", str(len(dataset.entries)), "--no-oversample",
            "--sharegpt-output-len", str(settings.output_len), "--temperature", f"{settings.temperature:g}",
            "--max-concurrency", str(settings.max_concurrency)]


def summary(dataset: BenchDataset, settings: BenchDatasetSettings) -> str:
    counts = dataset.media_counts()
    parts = [f"{n} with a {kind}" for kind, n in counts.items() if n]
    text_only = len(dataset.entries) - sum(counts.values())
    parts += [f"{text_only} text only"] if text_only else []
    lines = [f"wrote {len(dataset.entries)} requests ({', '.join(parts)}) to {dataset.path}"]
    if dataset.toy_visual_tokens is not None:
        lines[0] += f"; clips of {dataset.toy_visual_tokens} video tokens in {dataset.media_dir}"
    if dataset.skips.total():
        lines.append(dataset.skips.summary())
    cpu = " (on a CPU add --dtype float32 --enforce-eager)" if settings.toy_world else ""
    lines += [f"serve the target with Sparrow{cpu}:", "  " + shlex.join(serve_command(dataset, settings)),
              "then run vLLM's benchmark (its 'Speculative Decoding' block is Sparrow's acceptance):",
              "  " + shlex.join(bench_command(dataset, settings))]
    return "\n".join(lines)
