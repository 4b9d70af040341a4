"""Read a local LLaVA-style conversation dataset (LLaVA-Video-178K, ShareGPT4Video, LLaVA).

A manifest (.json list or .jsonl) holds records such as
``{"id": ..., "video": "clip.mp4", "image": [...], "conversations": [{"from": "human",
"value": "<video>\\nWhat ...?"}, {"from": "gpt", "value": "..."}]}`` (or ``"messages"`` with
``role``/``content``). Relative media paths resolve against ``media_root``. A row that cannot
be used raises ``SampleError`` from ``load``; iterating the dataset skips such rows, counts
them by reason in ``skips`` and logs each one.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from sparrow_vllm.errors import MissingInput, UsageError
from sparrow_vllm.training.media import read_frames, read_image
from sparrow_vllm.training.skips import SampleError, SkipReport

logger = logging.getLogger(__name__)

VISUAL_MARKERS = ("<video>", "<image>")
_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant"}
_EXPECTED = ('"conversations": [{"from": "human"|"gpt", "value": str}, ...] or '
             '"messages": [{"role": "user"|"assistant", "content": str}, ...]')


@dataclass(frozen=True)
class Turn:
    role: str  # "user" or "assistant"
    text: str  # visual markers removed, whitespace stripped


@dataclass
class ConversationSample:
    sample_id: str
    turns: list[Turn]
    video: np.ndarray | None = None  # [T, H, W, 3] uint8 RGB
    images: list[np.ndarray] = field(default_factory=list)  # each [H, W, 3] uint8 RGB
    # how many seconds the video spans (the row's "video_seconds"); None = unknown, the
    # feature extractor then assumes its --video-fps for the frames
    video_seconds: float | None = None

    def messages(self, include_last_answer: bool = True) -> list[dict]:
        """HF/OpenAI chat messages; the first user message carries the media parts.

        include_last_answer=False drops a trailing assistant turn (for generation).
        """
        turns = self.turns
        if not include_last_answer and turns and turns[-1].role == "assistant":
            turns = turns[:-1]
        messages: list[dict] = []
        media_placed = False
        for turn in turns:
            if turn.role == "user" and not media_placed:
                media_placed = True
                parts: list[dict] = [{"type": "video"}] if self.video is not None else []
                parts += [{"type": "image"} for _ in self.images]
                parts.append({"type": "text", "text": turn.text})
                messages.append({"role": "user", "content": parts})
            else:
                messages.append({"role": turn.role, "content": turn.text})
        return messages


def _bad(message: str) -> SampleError:
    return SampleError("bad_record", message)


def parse_turns(record: dict[str, Any]) -> list[Turn]:
    """The turns of a manifest record (``conversations`` or ``messages``), visual markers
    removed; SampleError("bad_record") naming the expected layout when they cannot be read."""
    if "conversations" in record:
        entries, role_key, text_key = record["conversations"], "from", "value"
    elif "messages" in record:
        entries, role_key, text_key = record["messages"], "role", "content"
    else:
        raise _bad(f"record has keys {sorted(record)}; expected {_EXPECTED}")
    if not isinstance(entries, list) or not entries:
        raise _bad(f"conversation is {entries!r:.60}; expected a non-empty list: {_EXPECTED}")
    turns = []
    for i, entry in enumerate(entries):
        role = entry.get(role_key) if isinstance(entry, dict) else None
        text = entry.get(text_key) if isinstance(entry, dict) else None
        if not isinstance(role, str) or role.lower() not in _ROLES:
            raise _bad(f"turn {i} has {role_key}={role!r}; expected one of {sorted(_ROLES)}")
        if not isinstance(text, str):
            raise _bad(f"turn {i} has {text_key}={text!r:.60}; expected a string: {_EXPECTED}")
        for marker in VISUAL_MARKERS:
            text = text.replace(marker, "")
        turns.append(Turn(_ROLES[role.lower()], text.strip()))
    if not any(turn.role == "assistant" for turn in turns):
        raise _bad(f"no assistant turn ({role_key} 'gpt' or 'assistant'); add the answer")
    return turns


def media_paths(record: dict[str, Any]) -> tuple[str | None, list[str]]:
    """The record's video path (None without one) and image paths, as written (unresolved);
    SampleError("bad_record") when ``video`` or ``image`` is not a path or a list of them."""
    video = record.get("video")
    if video is not None and (not isinstance(video, str) or not video):
        raise _bad(f'"video" is {video!r:.60}; expected one path string')
    images = record.get("image", [])
    images = [images] if isinstance(images, str) else images
    if not isinstance(images, list) or not all(isinstance(p, str) and p for p in images):
        raise _bad(f'"image" is {images!r:.60}; expected a path string or a list of them')
    return video, images


def _video_seconds(record: dict) -> float | None:
    seconds = record.get("video_seconds")
    if seconds is not None and (isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or seconds <= 0):
        raise _bad(f'"video_seconds" is {seconds!r:.60}; expected a positive number (the clip\'s duration)')
    return None if seconds is None else float(seconds)


def read_manifest(path: Path) -> list[Any]:
    """The rows of a .json (a list of records) or .jsonl (a record per line) manifest. A
    .jsonl line that does not parse becomes a SampleError in its place, for the caller to
    skip; a missing file, an unparsable .json or another suffix raises."""
    if not path.is_file():
        raise MissingInput(f"manifest {path} does not exist; pass a .json or .jsonl file to --data")
    suffix = path.suffix.lower()
    if suffix == ".json":
        try:
            records = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise UsageError(f"{path} is not valid JSON ({exc}); fix it, or convert it to .jsonl "
                             "so that a bad row is skipped instead") from exc
        if not isinstance(records, list):
            raise UsageError(f"{path} holds a {type(records).__name__}; expected a list of records")
        return records
    if suffix == ".jsonl":
        rows: list[Any] = []
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                rows.append(_bad(f"line {number} of {path.name} is not valid JSON ({exc}); "
                                 "fix or delete the line"))
        return rows
    raise UsageError(f"manifest {path} must end in .json (a list of records) or .jsonl "
                     "(one record per line)")


def row_id(row: Any, index: int) -> str:
    """The sample id of manifest row `index`: its "id", else "row<index>"."""
    has_id = isinstance(row, dict) and row.get("id") is not None
    return str(row["id"]) if has_id else f"row{index}"


def resolve_media(media: str, media_root: Path) -> Path:
    """A media path as a manifest writes it: ``~`` expanded, a relative path under `media_root`."""
    path = Path(media).expanduser()
    return path if path.is_absolute() else media_root / path


class ConversationDataset:
    """Conversation samples with decoded media, one per manifest row."""

    def __init__(self, manifest: str | Path, media_root: str | Path | None = None,
                 num_frames: int | None = None, max_frames: int | None = None) -> None:
        for name, value in (("num_frames", num_frames), ("max_frames", max_frames)):
            if value is not None and value < 1:
                raise UsageError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
        self.manifest = Path(manifest)
        self.media_root = Path(media_root) if media_root is not None else self.manifest.parent
        self.num_frames = num_frames
        self.max_frames = max_frames
        self._rows = read_manifest(self.manifest)
        self.skips = SkipReport()  # the skips of the latest full pass of __iter__
        logger.info("%s: %d rows, media under %s", self.manifest, len(self._rows), self.media_root)

    def __len__(self) -> int:
        return len(self._rows)

    def media_limits(self) -> dict[str, int]:
        """The most videos and images one row holds, from the manifest alone (no decoding)."""
        limits: dict[str, int] = {}
        for row in self._rows:
            if not isinstance(row, dict):
                continue
            try:
                video, images = media_paths(row)
            except SampleError:
                continue
            if video is not None:
                limits["video"] = 1
            if images:
                limits["image"] = max(limits.get("image", 0), len(images))
        return limits

    def load(self, index: int) -> ConversationSample:
        """The sample of row ``index``; raises SampleError when the row cannot be used."""
        row = self._rows[index]
        if isinstance(row, SampleError):  # a JSONL line that did not parse
            raise SampleError(row.reason, str(row))
        if not isinstance(row, dict):
            raise _bad(f"row is a {type(row).__name__}; expected an object with {_EXPECTED}")
        turns = parse_turns(row)
        video_path, image_paths = media_paths(row)
        video = None
        if video_path is not None:
            video = read_frames(resolve_media(video_path, self.media_root), self.num_frames)
            if self.max_frames is not None and len(video) > self.max_frames:
                raise SampleError("too_long", f"{video_path} has {len(video)} frames, more than "
                                  f"max_frames={self.max_frames}; set num_frames <= max_frames "
                                  "to sample it down, or raise max_frames")
        images = [read_image(resolve_media(p, self.media_root)) for p in image_paths]
        return ConversationSample(row_id(row, index), turns, video, images, _video_seconds(row))

    def __iter__(self) -> Iterator[ConversationSample]:
        self.skips = SkipReport()
        for index in range(len(self)):
            try:
                sample = self.load(index)
            except SampleError as error:
                sample_id = row_id(self._rows[index], index)
                self.skips.add(sample_id, error)
                logger.warning("skipping %s (%s): %s", sample_id, error.reason, error)
                continue
            yield sample
        if self.skips.total():
            logger.warning("%s: %s", self.manifest, self.skips.summary())
