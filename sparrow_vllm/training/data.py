"""Read a local LLaVA-style conversation dataset (LLaVA-Video-178K, ShareGPT4Video, LLaVA).

A manifest (.json list or .jsonl) holds records such as
``{"id": ..., "video": "clip.mp4", "image": [...], "conversations": [{"from": "human",
"value": "<video>\\nWhat ...?"}, {"from": "gpt", "value": "..."}]}`` (or ``"messages"`` with
``role``/``content``). Relative media paths resolve against ``media_root``. A row that cannot
be used raises ``SampleError`` from ``load``; iterating the dataset skips such rows, counts
them by reason in ``skips`` and logs each one.
"""

from __future__ import annotations

import collections
import functools
import importlib.util
import json
import logging
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

logger = logging.getLogger(__name__)

VISUAL_MARKERS = ("<video>", "<image>")
SKIP_REASONS = ("bad_record", "missing_file", "unreadable_media", "too_long")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")
EXAMPLES_PER_REASON = 5
_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant"}
_EXPECTED = ('"conversations": [{"from": "human"|"gpt", "value": str}, ...] or '
             '"messages": [{"role": "user"|"assistant", "content": str}, ...]')


class SampleError(Exception):
    """A row that cannot be used; ``reason`` is one of SKIP_REASONS."""

    def __init__(self, reason: str, message: str) -> None:
        if reason not in SKIP_REASONS:
            raise ValueError(f"unknown skip reason {reason!r}; use one of {SKIP_REASONS}")
        super().__init__(message)
        self.reason = reason

    def __reduce__(self) -> tuple[Any, ...]:  # picklable across DataLoader workers
        return SampleError, (self.reason, str(self))


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


@dataclass
class SkipReport:
    counts: collections.Counter = field(default_factory=collections.Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)

    def add(self, sample_id: str, error: SampleError) -> None:
        self.counts[error.reason] += 1
        shown = self.examples.setdefault(error.reason, [])
        if len(shown) < EXAMPLES_PER_REASON:
            shown.append(f"{sample_id}: {error}")

    def total(self) -> int:
        return sum(self.counts.values())

    def summary(self) -> str:
        """One line, e.g. 'skipped 3 rows: missing_file 2 (e.g. ...), too_long 1 (e.g. ...)'."""
        parts = [f"{reason} {self.counts[reason]} (e.g. {self.examples[reason][0]})"
                 for reason in SKIP_REASONS if self.counts[reason]]
        return f"skipped {self.total()} rows" + (": " + ", ".join(parts) if parts else "")


def _module_available(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


def video_decoder() -> str:
    """The video decoder read_frames uses: 'pyav', else 'decord', else 'cv2'."""
    for decoder, module in (("pyav", "av"), ("decord", "decord"), ("cv2", "cv2")):
        if _module_available(module):
            return decoder
    raise ImportError("no video decoder; pip install av (or decord, or opencv-python-headless)")


@functools.cache
def _announce_decoder(decoder: str) -> None:
    logger.info("decoding videos with %s", decoder)


def _sample_indices(total: int, num_frames: int | None) -> np.ndarray:
    if num_frames is None or total <= num_frames:
        return np.arange(total)
    return np.linspace(0, total - 1, num_frames).round().astype(np.int64)


_Choose = Callable[[int], "set[int] | None"]  # reported frame count -> indices to keep


def _decode_cv2(path: Path, choose: _Choose) -> tuple[list[np.ndarray], int, set[int] | None]:
    import cv2

    capture = cv2.VideoCapture(str(path))
    keep = choose(int(capture.get(cv2.CAP_PROP_FRAME_COUNT)))
    frames, total = [], 0
    try:
        while capture.grab():
            if keep is None or total in keep:
                ok, bgr = capture.retrieve()
                if not ok:
                    raise RuntimeError(f"frame {total} could not be retrieved")
                frames.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
            total += 1
    finally:
        capture.release()
    return frames, total, keep


def _decode_pyav(path: Path, choose: _Choose) -> tuple[list[np.ndarray], int, set[int] | None]:
    import av

    frames, total = [], 0
    with av.open(str(path)) as container:
        keep = choose(int(container.streams.video[0].frames))
        for total, frame in enumerate(container.decode(video=0), start=1):
            if keep is None or total - 1 in keep:
                frames.append(frame.to_ndarray(format="rgb24"))
    return frames, total, keep


def _decode_decord(path: Path, choose: _Choose) -> tuple[list[np.ndarray], int, set[int] | None]:
    import decord

    reader = decord.VideoReader(str(path))
    total = len(reader)
    keep = choose(total)
    indices = list(range(total)) if keep is None else sorted(keep)
    return (list(reader.get_batch(indices).asnumpy()) if indices else []), total, keep


_DECODERS = {"pyav": _decode_pyav, "decord": _decode_decord, "cv2": _decode_cv2}


def _read_video(path: Path, num_frames: int | None) -> list[np.ndarray]:
    decoder = video_decoder()
    _announce_decoder(decoder)

    def choose(count: int) -> set[int] | None:
        return None if num_frames is None else set(_sample_indices(count, num_frames).tolist())

    try:
        frames, total, keep = _DECODERS[decoder](path, choose)
        if keep != choose(total):  # the container's frame count is missing or wrong
            logger.warning("%s: frame count in the container is wrong; %d frames decode, "
                           "decoding again to sample over them", path, total)
            frames = _DECODERS[decoder](path, lambda _: choose(total))[0]
        return frames
    except Exception as exc:  # decoders raise library-specific types; all mean unreadable
        raise SampleError("unreadable_media", f"cannot decode video {path} with {decoder}: "
                          f"{exc}; re-encode it (e.g. ffmpeg -i in -c:v libx264 out.mp4)") from exc


def _read_frame_folder(path: Path, num_frames: int | None) -> list[np.ndarray]:
    files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    return [read_image(files[i]) for i in _sample_indices(len(files), num_frames)]


def _read_array(path: Path, num_frames: int | None) -> np.ndarray:
    try:
        if path.suffix.lower() == ".npz":
            with np.load(path, allow_pickle=False) as archive:
                if not archive.files:
                    raise SampleError("unreadable_media", f"{path} holds no arrays; add a clip")
                array = archive[archive.files[0]]
        else:
            array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise SampleError("unreadable_media", f"cannot load {path}: {exc}; re-save it with "
                          "np.save / np.savez") from exc
    rgb_or_gray = array.ndim == 3 or (array.ndim == 4 and array.shape[-1] == 3)
    if array.dtype != np.uint8 or not rgb_or_gray:
        raise SampleError("unreadable_media", f"{path} holds a {array.dtype} array of shape "
                          f"{array.shape}; save it as uint8 [T, H, W, 3] (or [T, H, W] grayscale)")
    array = np.array(array[_sample_indices(len(array), num_frames)])
    return np.repeat(array[..., None], 3, axis=-1) if array.ndim == 3 else array


def _missing(path: Path) -> SampleError:
    return SampleError("missing_file", f"{path} does not exist; fix the path in the manifest "
                       "or point media_root at the folder that holds the media")


def read_frames(path: str | Path, num_frames: int | None = None) -> np.ndarray:
    """Frames [T, H, W, 3] uint8 RGB of a video file, image folder, .npy or .npz clip.

    Video files use PyAV if importable, else decord, else OpenCV. A directory is an image
    folder (files with IMAGE_SUFFIXES, in sorted name order: zero-pad the numbers). .npy is
    uint8 [T, H, W, 3] or [T, H, W] grayscale; .npz uses its first array. num_frames samples
    that many frames uniformly when there are more. Raises SampleError ('missing_file' or
    'unreadable_media').
    """
    path = Path(path)
    if num_frames is not None and num_frames < 1:
        raise ValueError(f"num_frames must be >= 1 or None, got {num_frames}")
    if not path.exists():
        raise _missing(path)
    if path.is_dir():
        frames = _read_frame_folder(path, num_frames)
    elif path.suffix.lower() in (".npy", ".npz"):
        frames = _read_array(path, num_frames)
    else:
        frames = _read_video(path, num_frames)
    if len(frames) == 0:
        fix = "re-encode or replace it"
        if path.is_dir():
            fix = f"add {'/'.join(IMAGE_SUFFIXES)} files"
        raise SampleError("unreadable_media", f"{path} yields 0 frames; {fix}")
    try:
        return np.stack(frames) if isinstance(frames, list) else frames
    except ValueError as exc:
        raise SampleError("unreadable_media", f"{path}: frames differ in size ({exc}); "
                          "resize them to one size") from exc


def read_image(path: str | Path) -> np.ndarray:
    """An image [H, W, 3] uint8 RGB via PIL; raises SampleError like read_frames."""
    path = Path(path)
    if not path.exists():
        raise _missing(path)
    try:
        with Image.open(path) as image:
            return np.array(image.convert("RGB"))
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise SampleError("unreadable_media", f"cannot read image {path}: {exc}; "
                          "replace or re-encode it") from exc


def _bad(message: str) -> SampleError:
    return SampleError("bad_record", message)


def _parse_turns(record: dict) -> list[Turn]:
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


def _media_paths(record: dict) -> tuple[str | None, list[str]]:
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


def _read_manifest(path: Path) -> list[Any]:
    if not path.is_file():
        raise FileNotFoundError(f"manifest {path} does not exist; pass a .json or .jsonl file")
    suffix = path.suffix.lower()
    if suffix == ".json":
        try:
            records = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path} is not valid JSON ({exc}); fix it, or convert it to .jsonl "
                             "so that a bad row is skipped instead") from exc
        if not isinstance(records, list):
            raise ValueError(f"{path} holds a {type(records).__name__}; expected a list of records")
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
    raise ValueError(f"manifest {path} must end in .json (a list of records) or .jsonl "
                     "(one record per line)")


class ConversationDataset:
    """Conversation samples with decoded media, one per manifest row."""

    def __init__(self, manifest: str | Path, media_root: str | Path | None = None,
                 num_frames: int | None = None, max_frames: int | None = None) -> None:
        for name, value in (("num_frames", num_frames), ("max_frames", max_frames)):
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1 or None, got {value}")
        self.manifest = Path(manifest)
        self.media_root = Path(media_root) if media_root is not None else self.manifest.parent
        self.num_frames = num_frames
        self.max_frames = max_frames
        self._rows = _read_manifest(self.manifest)
        self.skips = SkipReport()  # the skips of the latest full pass of __iter__
        logger.info("%s: %d rows, media under %s", self.manifest, len(self._rows), self.media_root)

    def __len__(self) -> int:
        return len(self._rows)

    def _sample_id(self, index: int) -> str:
        row = self._rows[index]
        has_id = isinstance(row, dict) and row.get("id") is not None
        return str(row["id"]) if has_id else f"row{index}"

    def _resolve(self, media: str) -> Path:
        path = Path(media).expanduser()
        return path if path.is_absolute() else self.media_root / path

    def load(self, index: int) -> ConversationSample:
        """The sample of row ``index``; raises SampleError when the row cannot be used."""
        row = self._rows[index]
        if isinstance(row, SampleError):  # a JSONL line that did not parse
            raise SampleError(row.reason, str(row))
        if not isinstance(row, dict):
            raise _bad(f"row is a {type(row).__name__}; expected an object with {_EXPECTED}")
        turns = _parse_turns(row)
        video_path, image_paths = _media_paths(row)
        video = None
        if video_path is not None:
            video = read_frames(self._resolve(video_path), self.num_frames)
            if self.max_frames is not None and len(video) > self.max_frames:
                raise SampleError("too_long", f"{video_path} has {len(video)} frames, more than "
                                  f"max_frames={self.max_frames}; set num_frames <= max_frames "
                                  "to sample it down, or raise max_frames")
        images = [read_image(self._resolve(p)) for p in image_paths]
        return ConversationSample(self._sample_id(index), turns, video, images, _video_seconds(row))

    def __iter__(self) -> Iterator[ConversationSample]:
        self.skips = SkipReport()
        for index in range(len(self)):
            try:
                sample = self.load(index)
            except SampleError as error:
                sample_id = self._sample_id(index)
                self.skips.add(sample_id, error)
                logger.warning("skipping %s (%s): %s", sample_id, error.reason, error)
                continue
            yield sample
        if self.skips.total():
            logger.warning("%s: %s", self.manifest, self.skips.summary())
