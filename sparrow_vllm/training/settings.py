"""Draft training settings: one pydantic schema for the trainer and `sparrow-vllm train`."""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator


class TrainSettings(BaseModel):
    """How `sparrow-vllm train` trains a draft (the draft's own shape is SparrowConfig)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    steps: int = Field(1000, ge=1, description="Optimizer steps.")
    batch_size: int = Field(8, ge=1, description="Sequences per step, over all processes.")
    lr: float = Field(1e-3, gt=0, description="Peak AdamW learning rate.")
    warmup: int = Field(50, ge=0, description="Linear warm-up steps before the cosine decay.")
    min_lr_ratio: float = Field(0.1, ge=0, le=1, description="Final LR as a fraction of the peak.")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    grad_clip: float = Field(1.0, gt=0, description="Gradient-norm clipping threshold.")
    ce_weight: float = Field(
        0.1, ge=0, description="lambda: weight of the cross-entropy against the target's next "
        "token beside the SmoothL1 feature loss (EAGLE-1 uses 0.1).",
    )
    mtp_steps: int = Field(
        1, ge=0, description="Multi-token prediction: extra recursive steps that feed the "
        "draft its own predicted hidden states at text rows (0 = off).",
    )
    mtp_decay: float = Field(
        0.8, gt=0, description="Loss weight of MTP step k is mtp_decay**k (1.0, 0.8, ...)."
    )
    ivsb: bool = Field(
        False, description="Intermediate visual state bridging (the paper's IVSB): visual rows "
        "carry the target's layer-m* states during training (dropped at inference). Off by "
        "default: on the toy world every IVSB recipe tried costs acceptance against text rows "
        "only (benchmarks/results/ivsb_study_toy_world.md), and `sparrow-vllm analyze` shows why "
        "there: the toy target's text rows read the video up to its last layer. Turn it on for "
        "a target whose text rows internalize the video early (see `sparrow-vllm analyze`) and "
        "check it with benchmarks/ablation.py.",
    )
    bridge_dropout: float = Field(
        0.0, ge=0, le=1, description="IVSB: chance that a training sequence, in a step, drops "
        "its bridge rows and trains on text rows only (as at inference), so text rows learn "
        "to work with and without them.",
    )
    ivsb_fraction: float = Field(
        1.0, gt=0, le=1, description="IVSB: bridge rows in the first this fraction of the "
        "steps, text rows only after.",
    )
    visual_rows: Literal["text", "full"] = Field(
        "text", description="'text': a Sparrow draft, visual rows dropped at inference "
        "(VATA). 'full': an EAGLE/MSD-style draft that keeps visual rows, trained with the "
        "inputs vLLM's built-in `eagle` method feeds it and saved in that method's form.",
    )
    val_every: int = Field(200, ge=1, description="Validate every this many steps.")
    val_samples: int = Field(
        32, ge=0, description="Validation sequences, at most: the first this many of "
        "--val-features, or without it the last min(this, N // 2) of the N training "
        "sequences, held out of training.",
    )
    val_k: int = Field(4, ge=1, description="Draft chain length K of the acceptance estimate.")
    save_every: int = Field(200, ge=1, description="Write a resumable trainer state this often.")
    seed: int = Field(0, description="Seed of initialisation and data order.")
    bf16: bool = Field(True, description="bf16 autocast on CUDA (ignored on CPU).")

    @model_validator(mode="after")
    def _full_rows_have_no_bridge(self) -> TrainSettings:
        if self.visual_rows == "full" and self.ivsb:
            raise ValueError(
                "--visual-rows full trains the inputs vLLM's eagle method feeds at visual "
                "rows, so IVSB does not apply; add --no-ivsb"
            )
        return self

    @model_validator(mode="after")
    def _bridge_options_need_ivsb(self) -> TrainSettings:
        if not self.ivsb and (self.bridge_dropout > 0 or self.ivsb_fraction < 1):
            raise ValueError("--bridge-dropout and --ivsb-fraction shape IVSB training; add --ivsb or drop them")
        return self

    def step_weights(self) -> tuple[float, ...]:
        return tuple(self.mtp_decay**k for k in range(self.mtp_steps + 1))

    def train_row_mode(self) -> str:
        if self.visual_rows == "full":
            return "full"
        return "bridge" if self.ivsb else "text"

    def step_row_modes(self, step: int, count: int) -> list[str]:
        """Row mode of each of `count` sequences of training step `step`: the train mode,
        with IVSB's bridge rows dropped per bridge_dropout and after ivsb_fraction of the
        steps (seeded by (seed, step), so a resumed run draws the same)."""
        mode = self.train_row_mode()
        if mode != "bridge":
            return [mode] * count
        if step >= self.ivsb_fraction * self.steps:
            return ["text"] * count
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + step + 7_919)
        drop = torch.rand(count, generator=generator) < self.bridge_dropout
        return ["text" if d else "bridge" for d in drop.tolist()]

    def eval_row_mode(self) -> str:
        return "full" if self.visual_rows == "full" else "text"
