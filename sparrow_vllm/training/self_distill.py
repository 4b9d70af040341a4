"""Brief self-distillation of a draft on its target's own greedy text outputs.

A quick way to get a draft that accepts tokens, for tests and demos on CPU: random word
prompts, the target's greedy continuations, then EAGLE-style training (SmoothL1 feature
regression + ce_weight x cross-entropy) with the same pairing and attention rule as
serving. ce_weight defaults to 1.0, not EAGLE-1's 0.1: agreement with the target's next
token is what acceptance measures, and on a toy target it raised top-1 agreement after
500 steps from 31% to 45%. The full pipeline for video data (IVSB, MTP, feature
extraction) builds on the same pieces.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from sparrow_vllm.checkpoint import check_draft_for_target, load_draft_weights, save_draft
from sparrow_vllm.training.attention import causal_text_attention
from sparrow_vllm.training.target import TargetFeatures, load_hf_target

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SelfDistillSettings:
    num_prompts: int = 64
    prompt_len: int = 16
    new_tokens: int = 48
    steps: int = 400
    batch_size: int = 16
    lr: float = 3e-3
    ce_weight: float = 1.0
    seed: int = 0


def _random_prompts(tokenizer: Any, settings: SelfDistillSettings) -> torch.Tensor:
    generator = torch.Generator().manual_seed(settings.seed)
    word_ids = [i for t, i in tokenizer.get_vocab().items() if len(t) == 3 and t[0] == "\u0120"]
    words = torch.tensor(sorted(word_ids))
    pick = torch.randint(len(words), (settings.num_prompts, settings.prompt_len), generator=generator)
    return words[pick]


@torch.no_grad()
def _greedy_sequences(target: TargetFeatures, prompts: torch.Tensor, new_tokens: int) -> torch.Tensor:
    seqs = []
    for chunk in prompts.split(16):
        out = target.model.generate(
            input_ids=chunk,
            attention_mask=torch.ones_like(chunk),
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            do_sample=False,
        )
        seqs.append(out)
    return torch.cat(seqs)


def _loss(
    draft: torch.nn.Module,
    target: TargetFeatures,
    ids: torch.Tensor,
    features: torch.Tensor,
    window: int | None,
    ce_weight: float,
) -> tuple[torch.Tensor, float]:
    """EAGLE-1 loss on a batch of equal-length sequences ([B, n] ids, [B, n, H] features),
    and the draft's top-1 agreement with the target's next token."""
    b, n = ids.shape
    inputs = ids[:, 1:]  # row i carries x_{i+1}
    h_in = features[:, :-1]
    positions = torch.arange(n - 1).repeat(b)
    embeds = target.embed(inputs).reshape(b * (n - 1), -1)
    out = draft(
        embeds,
        h_in.reshape(b * (n - 1), -1),
        positions,
        causal_text_attention(b, n - 1, window),
    ).view(b, n - 1, -1)
    # row i predicts feature h_{i+1} and token x_{i+2}
    pred, goal = out[:, :-1], features[:, 1:-1]
    feature_loss = F.smooth_l1_loss(pred, goal)
    logits = target.lm_head(pred)
    ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 2:].reshape(-1))
    accuracy = (logits.argmax(-1) == ids[:, 2:]).float().mean().item()
    return feature_loss + ce_weight * ce, accuracy


def self_distill(
    target_dir: Path, draft_dir: Path, out_dir: Path, settings: SelfDistillSettings
) -> Path:
    torch.manual_seed(settings.seed)
    target = load_hf_target(target_dir)
    checkpoint = check_draft_for_target(draft_dir, target.config, target_supports_aux_hidden_states=True)
    draft, _ = load_draft_weights(checkpoint, torch.float32, "cpu")
    prompts = _random_prompts(target.tokenizer, settings)
    sequences = _greedy_sequences(target, prompts, settings.new_tokens)
    features = target.features(sequences, checkpoint.sparrow.aux_layer_index())
    optimizer = torch.optim.AdamW(draft.parameters(), lr=settings.lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, settings.steps)
    generator = torch.Generator().manual_seed(settings.seed)
    draft.train()
    for step in range(settings.steps):
        pick = torch.randint(len(sequences), (settings.batch_size,), generator=generator)
        loss, accuracy = _loss(
            draft, target, sequences[pick], features[pick], checkpoint.sparrow.window,
            settings.ce_weight,
        )
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(draft.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        if step % 100 == 0 or step == settings.steps - 1:
            logger.info(
                "self-distill step %d loss %.4f top-1 %.3f", step, loss.item(), accuracy
            )
    draft.eval()
    return save_draft(out_dir, draft, command=sys.argv)
