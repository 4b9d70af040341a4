"""`sparrow-vllm train`: train a Sparrow (or full-visual EAGLE-style) draft on target features.

One process on CPU, or N processes under torchrun (DDP; gloo on CPU, NCCL on CUDA).
Each step takes the global batch `batch_size` drawn from a generator seeded by (seed,
step), so a resumed run sees the same batches as an uninterrupted one; rank r trains on
every world_size-th sequence of it. Rank 0 validates, logs and writes checkpoints.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from sparrow_vllm.draft.checkpoint import save_draft
from sparrow_vllm.draft.eagle_export import save_eagle_draft
from sparrow_vllm.draft.model import SparrowDraftModel
from sparrow_vllm.errors import UsageError
from sparrow_vllm.training.acceptance import AcceptanceStats, answer_rows, chain_drafts, simulate
from sparrow_vllm.training.features import FeatureRecord
from sparrow_vllm.training.objective import DraftObjective
from sparrow_vllm.training.rows import RowMode, build_rows
from sparrow_vllm.training.settings import TrainSettings

logger = logging.getLogger(__name__)
STATE_FILE = "trainer_state.pt"
VALIDATION_FILE = "validation.json"


class RecordSource(Protocol):
    def __len__(self) -> int: ...
    def __getitem__(self, index: int) -> FeatureRecord | None: ...


@dataclass(frozen=True)
class Distributed:
    rank: int
    world: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup_distributed() -> Distributed:
    """Join the torchrun process group when WORLD_SIZE > 1 (gloo on CPU, NCCL on CUDA)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    cuda = torch.cuda.is_available()
    local = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device(f"cuda:{local}" if cuda else "cpu")
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if cuda else "gloo")
    if cuda:
        torch.cuda.set_device(device)
    return Distributed(rank=int(os.environ.get("RANK", "0")), world=world, device=device)


def warmup_cosine(step: int, steps: int, warmup: int, min_ratio: float) -> float:
    """LR factor: linear warm-up over `warmup` steps, then cosine decay to min_ratio."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def lr_factor(step: int, settings: TrainSettings) -> float:
    return warmup_cosine(step, settings.steps, settings.warmup, settings.min_lr_ratio)


def batch_indices(step: int, settings: TrainSettings, num_train: int, env: Distributed) -> list[int]:
    generator = torch.Generator().manual_seed(settings.seed * 1_000_003 + step)
    picks = torch.randint(num_train, (settings.batch_size,), generator=generator).tolist()
    return picks[env.rank :: env.world]


@torch.no_grad()
def validate(
    draft: SparrowDraftModel, embed: Any, lm_head: Any, records: list[FeatureRecord],
    mode: RowMode, k: int, per_sequence: list[list[int]] | None = None,
) -> AcceptanceStats:
    """Acceptance length of greedy K-chains over the answers of `records`; per_sequence,
    when given, receives [drafts, accepted] of each record."""
    was_training = draft.training
    draft.eval()
    total = AcceptanceStats(k=k)
    window = draft.sparrow_config.window if mode != "full" else None
    budget = draft.sparrow_config.visual_budget
    for record in records:
        rows = build_rows(record, mode, budget)
        starts = answer_rows(rows, int(record["loss_start"]))
        drafts = chain_drafts(draft, embed, lm_head, rows, window, k, starts)
        stats = simulate(rows, starts, drafts, record["target_next"], int(record["loss_start"]))
        total.add(stats)
        if per_sequence is not None:
            per_sequence.append([stats.drafts, stats.accepted])
    draft.train(was_training)
    return total


def check_draft_for_settings(draft: SparrowDraftModel, settings: TrainSettings) -> None:
    """Refuse training settings the draft's own fields rule out."""
    config = draft.sparrow_config
    if settings.visual_rows == "full" and config.window is not None:
        raise UsageError("--visual-rows full makes a draft for vLLM's eagle method, which has no window; drop --window")
    if settings.visual_rows == "full" and config.visual_budget != "none":
        raise UsageError(
            f"--visual-rows full saves vLLM's eagle form, which has no visual budget, but the draft has "
            f"--visual-budget {config.visual_budget}; for a Sparrow draft that keeps visual rows use "
            "--visual-rows text --visual-budget all (or N), or drop --visual-budget for an EAGLE-form draft"
        )
    if settings.ivsb and config.visual_budget != "none":
        raise UsageError(
            f"--ivsb with --visual-budget {config.visual_budget}: kept visual rows are FC rows, and "
            "bridge-sourced kept rows are not supported yet; drop --ivsb, or use --visual-budget none"
        )


class Trainer:
    def __init__(
        self, draft: SparrowDraftModel, embed: Any, lm_head: Any, source: RecordSource,
        settings: TrainSettings, out_dir: str | Path, env: Distributed | None = None,
        val_source: RecordSource | None = None,
    ) -> None:
        self.settings, self.source, self.out = settings, source, Path(out_dir)
        self.env = env or Distributed(0, 1, torch.device("cpu"))
        check_draft_for_settings(draft, settings)
        torch.manual_seed(settings.seed)
        self.objective = DraftObjective(draft, embed, lm_head).to(self.env.device)
        self.model: Any = self.objective
        if self.env.world > 1:
            self.model = DistributedDataParallel(self.objective)
        params = [p for p in draft.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=settings.lr, weight_decay=settings.weight_decay)
        self.schedule = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda s: lr_factor(s, settings))
        self.val_source, self.num_train, self.val_indices = self._split(source, val_source)
        self.step = 0
        self.history: list[dict[str, Any]] = []

    def _split(self, source: RecordSource, val_source: RecordSource | None) -> tuple[RecordSource, int, list[int]]:
        """(validation source, training records, validation indices): up to val_samples
        records of val_source and all of source, or without val_source the last
        min(val_samples, N // 2) records of source held out of training."""
        n_val_max = self.settings.val_samples
        if val_source is not None:
            return val_source, len(source), list(range(min(n_val_max, len(val_source))))
        n_val = min(n_val_max, len(source) // 2)
        if self.env.is_main:
            logger.info("validating on %d of the %d training sequences, held out of training "
                        "(--val-features DIR validates on a separate feature set instead)", n_val, len(source))
        return source, len(source) - n_val, list(range(len(source) - n_val, len(source)))

    @property
    def draft(self) -> SparrowDraftModel:
        return self.objective.draft

    def state_path(self) -> Path:
        return self.out / STATE_FILE

    def save_state(self) -> None:
        if not self.env.is_main:
            return
        self.out.mkdir(parents=True, exist_ok=True)
        state = {
            "step": self.step, "draft": self.draft.state_dict(),
            "optimizer": self.optimizer.state_dict(), "schedule": self.schedule.state_dict(),
            "settings": self.settings.model_dump(), "history": self.history,
        }
        tmp = self.state_path().with_suffix(".tmp")
        torch.save(state, tmp)
        tmp.replace(self.state_path())

    def resume(self) -> None:
        path = self.state_path()
        if not path.exists():
            raise UsageError(f"--resume: {path} not found; start without --resume")
        state = torch.load(path, map_location=self.env.device, weights_only=False)
        changed = {k for k, v in state["settings"].items() if self.settings.model_dump().get(k) != v}
        if changed - {"steps", "val_every", "save_every"}:
            raise UsageError(f"--resume with different settings {sorted(changed)}; use the original ones")
        self.draft.load_state_dict(state["draft"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["schedule"])
        self.step, self.history = state["step"], state["history"]
        logger.info("resumed from %s at step %d", path, self.step)

    def _records(self, indices: list[int], source: RecordSource | None = None) -> list[FeatureRecord]:
        source = self.source if source is None else source
        return [r for r in (source[i] for i in indices) if r is not None]

    def train_step(self) -> dict[str, float]:
        s = self.settings
        # row modes are drawn for the global batch, so each sequence's draw is its own on any rank
        modes = s.step_row_modes(self.step, s.batch_size)[self.env.rank :: self.env.world]
        indices = batch_indices(self.step, s, self.num_train, self.env)
        pairs = [(self.source[i], mode) for i, mode in zip(indices, modes, strict=True)]
        budget = self.draft.sparrow_config.visual_budget
        rows = [build_rows(record, mode, budget) for record, mode in pairs if record is not None]
        autocast = self.env.device.type == "cuda" and s.bf16
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
            loss, metrics = self.model(rows, self.draft.sparrow_config.window, s.step_weights(), s.ce_weight)
        self.optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.draft.parameters(), s.grad_clip)
        self.optimizer.step()
        self.schedule.step()
        self.step += 1
        return metrics

    def validate(self) -> dict[str, Any]:
        records = self._records(self.val_indices, self.val_source)
        stats = validate(self.draft, self.objective.embed, self.objective.lm_head, records,
                         self.settings.eval_row_mode(), self.settings.val_k)
        entry = {"step": self.step, "mode": self.settings.eval_row_mode(), "sequences": len(records),
                 **stats.as_dict()}
        self.history.append(entry)
        logger.info("validation step %d: acceptance length %.3f per position %s", self.step,
                    entry["acceptance_length"], [round(x, 3) for x in entry["per_position_rate"]])
        return entry

    def fit(self, until: int | None = None) -> list[dict[str, Any]]:
        """Train to step `until` (default settings.steps, the schedule's length); returns
        the per-step metrics of this call."""
        from tqdm import tqdm

        s = self.settings
        if self.env.is_main:
            logger.info("training a %s draft (%s rows, visual budget %s) on %d process(es), %d train / %d "
                        "validation sequences", s.visual_rows, s.train_row_mode(),
                        self.draft.sparrow_config.visual_budget, self.env.world, self.num_train,
                        len(self.val_indices))
        log: list[dict[str, float]] = []
        bar = tqdm(total=s.steps, initial=self.step, disable=not self.env.is_main, desc="train", file=sys.stderr,
                   mininterval=0.1 if sys.stderr.isatty() else 30.0)
        end = s.steps if until is None else min(until, s.steps)
        while self.step < end:
            metrics = self.train_step()
            log.append({"step": self.step, **metrics})
            bar.update(1)
            bar.set_postfix(loss=f"{metrics['loss']:.3f}", top1=f"{metrics['step0_top1']:.2f}")
            if self.env.is_main and self.val_indices and (self.step % s.val_every == 0 or self.step == s.steps):
                self.validate()
            if self.step % s.save_every == 0 or self.step == s.steps:
                self.save_state()
        bar.close()
        return log

    def save_draft(self, command: list[str] | None = None) -> Path | None:
        """The trained draft in the form its method loads (Sparrow, or vLLM eagle for
        visual_rows='full'), with provenance and the validation history."""
        if not self.env.is_main:
            return None
        draft = self.draft.float().cpu()
        if self.settings.visual_rows == "full":
            out = save_eagle_draft(draft, self.out, command)
        else:
            out = save_draft(self.out, draft, command=command)
        (self.out / VALIDATION_FILE).write_text(json.dumps(self.history, indent=2) + "\n")
        return out
