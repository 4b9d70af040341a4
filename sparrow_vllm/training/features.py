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

With --regenerate the answer is the target's own greedy output (from vLLM or HF generate,
`regenerate.py`), so target_next agrees with the answer tokens and the acceptance estimate
is exact.

Offline, `extraction.py` writes records into safetensors shards with an index.json
(`shard_store.py`), resumable row by row; `FeatureShards` reads them. Online, the trainer
calls `FeatureExtractor.extract` inside the training step.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from sparrow_vllm.draft.config import FrameText
from sparrow_vllm.errors import UsageError
from sparrow_vllm.training.data import ConversationSample
from sparrow_vllm.training.shard_store import INDEX_FILE, RECORD_KEYS, FeatureRecord
from sparrow_vllm.training.skips import SampleError
from sparrow_vllm.training.target import TargetFeatures

logger = logging.getLogger(__name__)

__all__ = ["INDEX_FILE", "FeatureExtractor", "FeatureRecord", "FeatureShards", "FeatureSpec"]


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

    def prompt_text(self, sample: ConversationSample) -> str:
        """The chat-templated prompt up to the last answer (what a server is sent)."""
        messages = sample.messages(include_last_answer=False)
        return self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)

    def video_metadata(self, sample: ConversationSample) -> dict[str, Any] | None:
        """How the sampled frames are laid out in time: the row's video_seconds, else
        --video-fps; frames are used as given (no further sampling)."""
        if sample.video is None:
            return None
        frames = len(sample.video)
        seconds = sample.video_seconds or frames / self.spec.video_fps
        return {"total_num_frames": frames, "fps": frames / seconds, "duration": seconds,
                "frames_indices": list(range(frames))}

    def _inputs(self, sample: ConversationSample, with_answer: bool) -> tuple[dict[str, Any], int]:
        prompt = self.prompt_text(sample)
        answer = ""
        if with_answer:
            full = self.processor.apply_chat_template(sample.messages(), tokenize=False)
            if not full.startswith(prompt):
                raise ValueError("the chat template does not render the prompt as a prefix of the conversation")
            answer = full[len(prompt):]
        kwargs: dict[str, Any] = {"text": [prompt + answer], "return_tensors": "pt"}
        if sample.video is not None:
            kwargs["videos"] = [sample.video]
            kwargs["video_metadata"] = [self.video_metadata(sample)]
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
        device = self.target.model.device
        inputs = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}
        return inputs, n - answer_len

    def prompt_inputs(self, sample: ConversationSample) -> dict[str, Any]:
        """Processor outputs of the prompt alone; raises SampleError('too_long')."""
        return self._inputs(sample, with_answer=False)[0]

    @torch.no_grad()
    def hf_greedy_answer(self, sample: ConversationSample, max_new_tokens: int) -> list[int]:
        """The target's greedy answer with HF generate (token ids, EOS included)."""
        inputs = self.prompt_inputs(sample)
        out = self.target.model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
        return out[0, inputs["input_ids"].shape[1]:].tolist()

    @staticmethod
    def _append_answer(inputs: dict[str, Any], answer_tokens: list[int]) -> None:
        ids = inputs["input_ids"]
        answer = torch.tensor([answer_tokens], dtype=ids.dtype, device=ids.device)
        inputs["input_ids"] = torch.cat((ids, answer), dim=1)
        inputs["attention_mask"] = torch.ones_like(inputs["input_ids"])
        if "mm_token_type_ids" in inputs:
            pad = inputs["mm_token_type_ids"].new_zeros((1, len(answer_tokens)))
            inputs["mm_token_type_ids"] = torch.cat((inputs["mm_token_type_ids"], pad), dim=1)

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

    def conversation_inputs(
        self, sample: ConversationSample, answer_tokens: list[int] | None = None
    ) -> tuple[dict[str, Any], int]:
        """(processor outputs of the whole conversation, index of the first answer token).
        With answer_tokens (a regenerated answer), the last answer is replaced by those
        tokens (token for token, no detour through text)."""
        if answer_tokens is None:
            return self._inputs(sample, with_answer=True)
        inputs, loss_start = self._inputs(sample, with_answer=False)
        self._append_answer(inputs, answer_tokens)
        return inputs, loss_start

    @torch.no_grad()
    def extract(self, sample: ConversationSample, answer_tokens: list[int] | None = None) -> FeatureRecord:
        """The sample's record (see conversation_inputs for answer_tokens)."""
        inputs, loss_start = self.conversation_inputs(sample, answer_tokens)
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
            record["bridge"] = states.bridge[0][visual.to(states.bridge.device)].float()
        return {k: v.cpu() for k, v in record.items()}


class FeatureShards:
    """Random access to the records `sparrow-vllm extract-features` wrote."""

    def __init__(self, directory: str | Path) -> None:
        self.dir = Path(directory)
        index_path = self.dir / INDEX_FILE
        if not index_path.exists():
            raise UsageError(f"{index_path} not found: {self.dir} holds no features; run "
                             "`sparrow-vllm extract-features --out DIR` and pass that DIR")
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
            for key in RECORD_KEYS:
                if key in names:
                    a, b = spans["visual" if key == "bridge" else "tokens"]
                    record[key] = f.get_slice(key)[a:b]
        return record
