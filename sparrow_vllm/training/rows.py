"""Draft rows of one training sequence, and the attention rule over them.

The pairing is serving's (vLLM EAGLE's): row i pairs the embedding of token x_{i+1} with
the target's hidden state h_i at position pos(i), and its output predicts h_{i+1} and the
target's next token after x_{i+1}. A row is visual iff x_{i+1} is a visual placeholder.
What happens to visual rows is the `RowMode`:

- "text": visual rows are dropped (VATA; the Sparrow drafter at serving time), except
  those the draft's visual budget keeps (`draft.visual_budget`: none, all or N per image
  or video): a kept visual row is an FC row like a text row (no loss on it, never fed by
  multi-token prediction) and counts in the window like any cached row.
- "bridge": visual rows carry the target's layer-m* state of x_{i+1}, not through FC
  (IVSB; training only). Text rows attend to them; the text window counts the other rows.
- "full": every row is FC([embed(x_{i+1}); h_i]), a visual row embedding the placeholder
  token, as vLLM's built-in `eagle` method feeds a draft; no window.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from sparrow_vllm.draft.visual_budget import VisualBudget, kept_token_mask

RowMode = Literal["text", "bridge", "full"]


@dataclass
class DraftRows:
    # [R] int64 token x_{i+1} each row embeds
    token_ids: torch.Tensor
    # [R, H] target hidden state h_i
    hidden: torch.Tensor
    # [R, H] layer-m* state of x_{i+1} at bridge rows (zeros elsewhere)
    bridge: torch.Tensor
    # [R] bool rows whose token x_{i+1} is a visual placeholder
    is_visual: torch.Tensor
    # [R] bool rows that carry a bridge state instead of FC([embed; h])
    is_bridge: torch.Tensor
    # [R] int64 position pos(i) (row 0 of M-RoPE)
    positions: torch.Tensor
    # [R] int64 sequence index i of the row
    source: torch.Tensor
    # [R, H] h_{i+1}, what the row's output regresses to
    feature_target: torch.Tensor
    # [R] int64 the target's greedy token after x_{i+1}
    token_target: torch.Tensor
    # [R] bool rows that count in the loss (text rows whose next token is text)
    loss_mask: torch.Tensor

    def __len__(self) -> int:
        return int(self.token_ids.shape[0])


def build_rows(record: dict[str, torch.Tensor], mode: RowMode, keep: VisualBudget = "none") -> DraftRows:
    """Draft rows of a feature record (see features.FeatureRecord keys); in "text" mode the
    visual rows whose token the budget `keep` keeps stay (row i carries token i + 1)."""
    ids, visual = record["input_ids"], record["visual_mask"].bool()
    features = record["features"]
    n = int(ids.shape[0])
    src = torch.arange(n - 1)
    row_visual = visual[1:]
    bridge = torch.zeros_like(features[:-1])
    if mode == "bridge":
        if "bridge" not in record:
            raise ValueError(
                "IVSB needs the target's layer-m* visual states; extract features with a "
                "bridge layer (the default) or train with --no-ivsb"
            )
        bridge[row_visual] = record["bridge"].to(features.dtype)
    is_bridge = row_visual if mode == "bridge" else torch.zeros_like(row_visual)
    loss_mask = ~row_visual & ~visual[torch.clamp(src + 2, max=n - 1)] & (src + 2 <= n - 1)
    rows = DraftRows(
        token_ids=ids[1:],
        hidden=features[:-1],
        bridge=bridge,
        is_visual=row_visual,
        is_bridge=is_bridge,
        positions=record["positions"][:-1],
        source=src,
        feature_target=features[1:],
        token_target=record["target_next"][1:],
        loss_mask=loss_mask,
    )
    if mode == "text":
        kept = ~row_visual
        if keep != "none":
            kept |= torch.tensor(kept_token_mask(visual.tolist(), keep)[1:], dtype=torch.bool)
        rows = DraftRows(**{k: v[kept] for k, v in vars(rows).items()})
    return rows


def attention_mask(rows: DraftRows, window: int | None) -> torch.Tensor:
    """[R, R] bool, True where row q may attend to row k: k <= q and, for FC keys (text
    rows and kept visual rows), within the last `window` of them (bridge keys are always
    visible)."""
    r = len(rows)
    q_idx = torch.arange(r)[:, None]
    k_idx = torch.arange(r)[None, :]
    mask = k_idx <= q_idx
    if window is not None:
        rank = torch.cumsum((~rows.is_bridge).long(), 0)
        near = rank[:, None] - rank[None, :] < window
        mask &= near | rows.is_bridge[None, :]
    return mask


def previous_text_row(rows: DraftRows) -> torch.Tensor:
    """[R] bool: row i is a text row right after a text row (source i-1), so multi-token
    prediction may feed it the draft's own output of the row before."""
    prev_adjacent = torch.zeros(len(rows), dtype=torch.bool)
    if len(rows) > 1:
        prev_adjacent[1:] = (rows.source[1:] == rows.source[:-1] + 1) & ~rows.is_visual[:-1]
    return prev_adjacent & ~rows.is_visual
