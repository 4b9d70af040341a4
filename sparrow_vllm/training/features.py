"""Target features for draft training, from an HF transformers target.

Per sample (a `FeatureRecord`, a dict of tensors):
    input_ids    [n] int64   prompt + answer, visual placeholders expanded
    positions    [n] int64   row 0 of M-RoPE (plain positions for text-only targets)
    visual_mask  [n] bool    tokens the draft treats as visual: placeholders, and with
                             frame_text="visual" the text between frames of one video
    features     [n, H]      the hidden state that feeds the draft (final pre-LM-head
                             state, or the layer the draft config names)
    bridge       [v, H]      layer-m* hidden states at the v visual positions (IVSB)
    target_next  [n] int64   the target's greedy next token at each position
    loss_start   []  int64   index of the first answer token

With --regenerate the answer is the target's own greedy output, so target_next agrees with
the answer tokens and the acceptance estimate is exact.

Offline, records are written as safetensors shards with an index.json, resumable: a
restarted run continues after the last complete shard. Online, the trainer calls
`FeatureExtractor.extract` inside the training step.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from sparrow_vllm.config import FrameText
from sparrow_vllm.training.data import ConversationDataset, ConversationSample
from sparrow_vllm.training.skips import SampleError, SkipReport
from sparrow_vllm.training.target import TargetFeatures

logger = logging.getLogger(__name__)

FeatureRecord = dict[str, torch.Tensor]
INDEX_FILE = "index.json"
_KEYS = ("input_ids", "positions", "visual_mask", "features", "bridge", "target_next")


@dataclass(frozen=True)
class FeatureSpec:
    """Which target states to record."""

    feature_layer: int | None  # HF output_hidden_states index; None = final pre-LM-head state
    bridge_layer: int | None  # m*; None = no visual states (training with --no-ivsb)
    max_seq_len: int = 32768
    # frame rate of the sampled frames, for M-RoPE time positions, where a row does not give
    # its video's duration ("video_seconds")
    video_fps: float = 2.0
    # what the draft does with text between the frames of one video (SparrowConfig.frame_text)
    frame_text: FrameText = "visual"


class FeatureExtractor:
    def __init__(self, target: TargetFeatures, processor: Any, spec: FeatureSpec) -> None:
        self.target, self.processor, self.spec = target, processor, spec

    def _inputs(self, sample: ConversationSample, with_answer: bool) -> tuple[dict[str, Any], int]:
        messages = sample.messages(include_last_answer=False)
        prompt = self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        answer = ""
        if with_answer:
            full = self.processor.apply_chat_template(sample.messages(), tokenize=False)
            if not full.startswith(prompt):
                raise ValueError("the chat template does not render the prompt as a prefix of the conversation")
            answer = full[len(prompt):]
        kwargs: dict[str, Any] = {"text": [prompt + answer], "return_tensors": "pt"}
        if sample.video is not None:
            frames = len(sample.video)
            seconds = sample.video_seconds or frames / self.spec.video_fps
            kwargs["videos"] = [sample.video]
            kwargs["video_metadata"] = [{
                "total_num_frames": frames, "fps": frames / seconds,
                "duration": seconds, "frames_indices": list(range(frames)),
            }]
            kwargs["do_sample_frames"] = False
        if sample.images:
            kwargs["images"] = sample.images
        inputs = dict(self.processor(**kwargs))
        n = inputs["input_ids"].shape[1]
        if n > self.spec.max_seq_len:
            raise SampleError(
                "too_long",
                f"{n} tokens > max_seq_len={self.spec.max_seq_len}; sample fewer frames "
                "(--num-frames) or raise --max-seq-len",
            )
        tokenizer = getattr(self.processor, "tokenizer", self.processor)
        answer_len = len(tokenizer(answer, add_special_tokens=False).input_ids) if answer else 0
        return inputs, n - answer_len

    def _positions(self, inputs: dict[str, Any]) -> torch.Tensor:
        n = inputs["input_ids"].shape[1]
        inner = getattr(self.target.model, "model", None)
        has_grid = any(inputs.get(k) is not None for k in ("image_grid_thw", "video_grid_thw"))
        if has_grid and hasattr(inner, "get_rope_index"):
            pos, _ = inner.get_rope_index(
                inputs["input_ids"], inputs.get("mm_token_type_ids"),
                image_grid_thw=inputs.get("image_grid_thw"), video_grid_thw=inputs.get("video_grid_thw"),
                second_per_grid_ts=inputs.get("second_per_grid_ts"), attention_mask=inputs.get("attention_mask"),
            )
            return pos[0, 0].long()
        return torch.arange(n)

    @torch.no_grad()
    def extract(self, sample: ConversationSample, regenerate_tokens: int | None = None) -> FeatureRecord:
        """The sample's record; with regenerate_tokens, its last answer is replaced by the
        target's own greedy answer (token for token, no detour through text)."""
        inputs, loss_start = self._inputs(sample, with_answer=not regenerate_tokens)
        if regenerate_tokens:
            out = self.target.model.generate(**inputs, max_new_tokens=regenerate_tokens, do_sample=False)
            inputs["input_ids"] = out
            inputs["attention_mask"] = torch.ones_like(out)
            if "mm_token_type_ids" in inputs:
                extra = out.shape[1] - inputs["mm_token_type_ids"].shape[1]
                pad = inputs["mm_token_type_ids"].new_zeros((1, extra))
                inputs["mm_token_type_ids"] = torch.cat((inputs["mm_token_type_ids"], pad), dim=1)
        ids = inputs["input_ids"][0]
        visual = torch.tensor(self.target.family.visual_token_mask(ids.tolist(), self.spec.frame_text))
        states = self.target.forward_states(inputs, self.spec.feature_layer, self.spec.bridge_layer)
        record = {
            "input_ids": ids.long(),
            "positions": self._positions(inputs),
            "visual_mask": visual,
            "features": states.features[0].float(),
            "target_next": states.logits[0].argmax(-1).long(),
            "loss_start": torch.tensor(loss_start),
        }
        if states.bridge is not None:
            record["bridge"] = states.bridge[0][visual].float()
        return record


def iter_records(
    extractor: FeatureExtractor, dataset: ConversationDataset, start: int = 0,
    regenerate_tokens: int | None = None, skips: SkipReport | None = None,
) -> Iterator[tuple[int, FeatureRecord]]:
    """(dataset row, record) for rows start.. ; bad rows are counted in `skips` and skipped."""
    skips = skips if skips is not None else dataset.skips
    for row in range(start, len(dataset)):
        try:
            yield row, extractor.extract(dataset.load(row), regenerate_tokens)
        except SampleError as error:
            skips.add(f"row{row}", error)
            logger.warning("skipping row %d: %s", row, error)


def _write_shard(path: Path, records: list[FeatureRecord]) -> None:
    tensors: dict[str, torch.Tensor] = {}
    for key in _KEYS:
        parts = [r[key] for r in records if key in r]
        if parts:
            tensors[key] = torch.cat(parts).contiguous()
    tensors["lengths"] = torch.tensor([len(r["input_ids"]) for r in records])
    tensors["visual_counts"] = torch.tensor([int(r["visual_mask"].sum()) for r in records])
    tensors["loss_start"] = torch.stack([r["loss_start"] for r in records])
    save_file(tensors, str(path))


def write_feature_shards(
    extractor: FeatureExtractor, dataset: ConversationDataset, out_dir: str | Path,
    shard_size: int = 256, regenerate_tokens: int | None = None, meta: dict[str, Any] | None = None,
) -> Path:
    """Extract features for every row of `dataset` into out_dir; resumes a partial run."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    index_path = out / INDEX_FILE
    index = {"shards": [], "next_row": 0, "skips": {}, "done": False, "meta": meta or {}}
    if index_path.exists():
        index = json.loads(index_path.read_text())
        if index.get("meta") != (meta or {}):
            raise ValueError(
                f"{out} holds features made with other settings ({index.get('meta')}); use a new --out"
            )
        logger.info("resuming feature extraction at row %d (%d shards done)", index["next_row"], len(index["shards"]))
    skips = SkipReport()
    pending: list[FeatureRecord] = []

    def flush(next_row: int) -> None:
        if pending:
            name = f"shard-{len(index['shards']):05d}.safetensors"
            _write_shard(out / name, pending)
            index["shards"].append({"file": name, "num_samples": len(pending)})
            pending.clear()
        index["next_row"] = next_row
        for reason, count in skips.counts.items():
            index["skips"][reason] = index["skips"].get(reason, 0) + count
        skips.counts.clear()
        index_path.write_text(json.dumps(index, indent=2) + "\n")

    for row, record in iter_records(extractor, dataset, index["next_row"], regenerate_tokens, skips):
        pending.append(record)
        if len(pending) == shard_size:
            flush(row + 1)
    index["done"] = True
    flush(len(dataset))
    if index["skips"]:
        logger.warning("feature extraction skipped rows: %s", index["skips"])
    return out


class FeatureShards:
    """Random access to the records of write_feature_shards' output."""

    def __init__(self, directory: str | Path) -> None:
        self.dir = Path(directory)
        index_path = self.dir / INDEX_FILE
        if not index_path.exists():
            raise FileNotFoundError(f"{index_path} not found; run `sparrow-vllm extract-features` first")
        self.index = json.loads(index_path.read_text())
        if not self.index.get("done"):
            logger.warning("%s is a partial extraction; rerun extract-features to finish it", self.dir)
        self._items: list[tuple[str, dict[str, tuple[int, int]], int]] = []
        for shard in self.index["shards"]:
            path = str(self.dir / shard["file"])
            with safe_open(path, "pt") as f:
                lengths = f.get_tensor("lengths").tolist()
                visual = f.get_tensor("visual_counts").tolist()
                loss_start = f.get_tensor("loss_start").tolist()
            tok, vis = 0, 0
            for n, v, s in zip(lengths, visual, loss_start, strict=True):
                self._items.append((path, {"tokens": (tok, tok + n), "visual": (vis, vis + v)}, s))
                tok, vis = tok + n, vis + v

    def __len__(self) -> int:
        return len(self._items)

    def __getitem__(self, i: int) -> FeatureRecord:
        path, spans, loss_start = self._items[i]
        record: FeatureRecord = {"loss_start": torch.tensor(loss_start)}
        with safe_open(path, "pt") as f:
            names = set(f.keys())
            for key in _KEYS:
                if key in names:
                    a, b = spans["visual" if key == "bridge" else "tokens"]
                    record[key] = f.get_slice(key)[a:b]
        return record
