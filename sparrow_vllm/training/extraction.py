"""`sparrow-vllm extract-features`: run the target over a manifest and write feature shards,
in one process or over N Ray workers (`ray_extraction.py`), resumable row by row.

The manifest is cut into shards of `shard_size` rows (`ShardStore`). A worker takes a
shard, and for each batch of its rows: loads the samples, regenerates their answers (vLLM
or HF, `regenerate.py`) when asked, runs the HF target for the features, and stages each
row's record on disk as soon as it is made. A shard is written once all its rows are staged.
A rerun (after a crash of a worker, the driver or a node) skips finished shards and
staged rows, and reuses staged answers, so no row is done twice and none is lost.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from sparrow_vllm.errors import UsageError
from sparrow_vllm.training.data import ConversationDataset, ConversationSample
from sparrow_vllm.training.features import FeatureExtractor, FeatureSpec
from sparrow_vllm.training.regenerate import (
    RegenerateWith,
    Regenerator,
    make_regenerator,
    vllm_engine_args,
)
from sparrow_vllm.training.shard_store import ShardStore
from sparrow_vllm.training.skips import SampleError

logger = logging.getLogger(__name__)

# vLLM's server samples this many frames of a video unless --media-io-kwargs says otherwise
VLLM_SERVER_VIDEO_FRAMES = 32


@dataclass(frozen=True)
class ExtractionJob:
    """Everything a worker needs to extract features (picklable: sent to Ray actors)."""

    target: str
    data: str
    out: str
    spec: FeatureSpec
    media_root: str | None = None
    num_frames: int | None = None
    max_frames: int | None = None
    regenerate_tokens: int | None = None
    regenerate_with: RegenerateWith = "vllm"
    regenerate_batch: int = 32
    shard_size: int = 64
    engine_args: dict[str, Any] = field(default_factory=dict)

    def meta(self) -> dict[str, Any]:
        """What the records depend on: a rerun must match it to resume."""
        spec = self.spec
        return {
            "target": str(Path(self.target).resolve()), "data": str(Path(self.data).resolve()),
            "feature_layer": "final" if spec.feature_layer is None else spec.feature_layer,
            "bridge_layer": spec.bridge_layer, "num_frames": self.num_frames,
            "max_frames": self.max_frames, "max_seq_len": spec.max_seq_len,
            "regenerate_tokens": self.regenerate_tokens,
            "regenerate_with": self.regenerate_with if self.regenerate_tokens else None,
            "video_fps": spec.video_fps, "frame_text": spec.frame_text,
        }

    def dataset(self) -> ConversationDataset:
        return ConversationDataset(self.data, media_root=self.media_root, num_frames=self.num_frames,
                                   max_frames=self.max_frames)

    def store(self, num_rows: int) -> ShardStore:
        return ShardStore(self.out, num_rows, self.shard_size, self.meta())


class ExtractionWorker:
    """One target replica (and with --regenerate one vLLM engine) working through shards."""

    def __init__(self, job: ExtractionJob) -> None:
        from sparrow_vllm.training.target import load_hf_target

        self.job = job
        self.dataset = job.dataset()
        self.store = job.store(len(self.dataset))
        cuda = torch.cuda.is_available()
        target = load_hf_target(job.target, device="cuda" if cuda else "cpu",
                                dtype=torch.bfloat16 if cuda else torch.float32)
        self.extractor = FeatureExtractor(target, target.processor, job.spec)
        self._regenerator: Regenerator | None = None

    def regenerator(self) -> Regenerator:
        if self._regenerator is None:
            max_len = self.job.spec.max_seq_len + (self.job.regenerate_tokens or 0)
            limit = getattr(self.extractor.target.family.text_config, "max_position_embeddings", None)
            max_len = min(max_len, limit) if limit else max_len
            args = vllm_engine_args(self.job.target, max_len, self.dataset.media_limits(), self.job.engine_args)
            self._regenerator = make_regenerator(self.job.regenerate_with, self.extractor,
                                                 self.job.regenerate_tokens or 0, args)
        return self._regenerator

    def _load(self, shard: int, row: int) -> ConversationSample | None:
        """The row's sample, or None after staging why it is skipped."""
        try:
            sample = self.dataset.load(row)
            if self.job.regenerate_tokens:
                self.extractor.prompt_inputs(sample)  # too long for the engine: skip it here
            return sample
        except SampleError as error:
            logger.warning("skipping row %d: %s", row, error)
            self.store.stage_skip(shard, row, error)
            return None

    def _answers(self, shard: int, samples: dict[int, ConversationSample]) -> dict[int, list[int]]:
        answers = {row: self.store.staged_answer(shard, row) for row in samples}
        missing = [row for row, answer in answers.items() if answer is None]
        if missing:
            fresh = self.regenerator().answers([samples[row] for row in missing])
            for row, tokens in zip(missing, fresh, strict=True):
                self.store.stage_answer(shard, row, tokens)
                answers[row] = tokens
        return answers  # type: ignore[return-value]

    def sees(self, path: str) -> bool:
        """Whether this worker sees `path` (on Ray: whether OUT is on a shared filesystem)."""
        return Path(path).exists()

    @staticmethod
    def _row_done(on_row: Callable[[], None] | None) -> None:
        if on_row is not None:
            on_row()

    def process_shard(self, shard: int, on_row: Callable[[], None] | None = None) -> dict[str, Any]:
        """Extract the shard's rows not yet staged, then write the shard."""
        staged = self.store.staged_rows(shard)
        todo = [row for row in self.store.shard_rows(shard) if row not in staged]
        for start in range(0, len(todo), self.job.regenerate_batch):
            samples: dict[int, ConversationSample] = {}
            for row in todo[start : start + self.job.regenerate_batch]:
                sample = self._load(shard, row)
                if sample is None:
                    self._row_done(on_row)
                else:
                    samples[row] = sample
            answers = self._answers(shard, samples) if self.job.regenerate_tokens else {}
            for row, sample in samples.items():
                try:
                    self.store.stage_record(shard, row, self.extractor.extract(sample, answers.get(row)))
                except SampleError as error:
                    logger.warning("skipping row %d: %s", row, error)
                    self.store.stage_skip(shard, row, error)
                self._row_done(on_row)
        return self.store.finish_shard(shard)


def server_video_flag(num_frames: int | None) -> str:
    """The `vllm serve` flag under which the server sees the frames extraction used."""
    frames = -1 if num_frames is None else num_frames
    loader = json.dumps({"video": {"video_backend": "opencv", "num_frames": frames}})
    return f"--media-io-kwargs '{loader}'"


def _announce_frames(job: ExtractionJob, dataset: ConversationDataset) -> None:
    """Say how the server must load videos to see the frames training sees."""
    if "video" not in dataset.media_limits():
        return
    used = "every frame of each video" if job.num_frames is None else f"up to {job.num_frames} frames per video"
    logger.warning(
        "extraction uses %s; vLLM's server samples videos its own way unless told (2 frames per "
        "second for Qwen2/2.5-VL, %d frames for others): serve with %s so that the draft trains "
        "on the frames the server sees", used, VLLM_SERVER_VIDEO_FRAMES, server_video_flag(job.num_frames))


def _announce_resume(store: ShardStore, pending: list[int]) -> None:
    done = store.rows_done()
    if not done:
        return
    if not pending:
        logger.info("%s: extraction already finished (%d rows); nothing to do", store.out, store.num_rows)
        return
    first = min(min(set(store.shard_rows(k)) - store.staged_rows(k), default=store.num_rows) for k in pending)
    logger.info("resuming extraction in %s: %d of %d rows already done (%d of %d shards finished); "
                "continuing from row %d", store.out, done, store.num_rows,
                store.num_shards - len(pending), store.num_shards, first)


def _progress_bar(store: ShardStore) -> Any:
    from tqdm import tqdm

    return tqdm(total=store.num_rows, initial=store.rows_done(), unit="sample", desc="extract-features",
                dynamic_ncols=True)


def run_extraction(job: ExtractionJob, workers: int = 1, ray_address: str | None = None) -> Path:
    """Extract features for every manifest row into job.out (resuming a partial run) with
    `workers` workers: in this process for 1 without --ray-address, else on Ray."""
    if workers < 1:
        raise UsageError(f"--workers must be >= 1, got {workers}")
    if job.regenerate_batch < 1:
        raise UsageError(f"--regenerate-batch must be >= 1, got {job.regenerate_batch}")
    dataset = job.dataset()
    store = job.store(len(dataset))
    store.open()
    pending = store.pending_shards()
    _announce_resume(store, pending)
    _announce_frames(job, dataset)
    started = time.perf_counter()
    with _progress_bar(store) as bar:
        if pending and workers == 1 and ray_address is None:
            worker = ExtractionWorker(job)
            for shard in pending:
                worker.process_shard(shard, on_row=lambda: bar.update(1))
        elif pending:
            from sparrow_vllm.training.ray_extraction import run_on_ray

            def refresh() -> None:
                bar.update(store.rows_done() - bar.n)

            run_on_ray(job, pending, workers, ray_address, refresh)
            refresh()
    index = store.write_index(done=True)
    logger.info("features of %d samples in %s (%d shards, %.1f s)", sum(s["num_samples"] for s in index["shards"]),
                store.out, len(index["shards"]), time.perf_counter() - started)
    if index["skips"]:
        examples = "; ".join(shown[0] for shown in index["skip_examples"].values() if shown)
        logger.warning("skipped rows: %s (e.g. %s)", index["skips"], examples)
    return store.out
