"""Which rows of a step the draft commits: text rows, and the visual rows its visual budget keeps.

A row is visual when its input token is: a visual placeholder (every family), or text the
family writes inside a video segment (Qwen3-VL's per-frame timestamps and markers) when the
draft's frame_text is "visual". A visual row is committed (run on, cached) only when the
draft's `visual_budget` keeps it (`draft/visual_budget.py`, the rule training uses: "none"
keeps none, the paper's Sparrow). A row is committed when its input token is text, or a
visual token the budget keeps.

Placeholders are recognised on the device by token id. Frame text looks like any other
text, and the kept rows depend on each segment's bounds, so both are found once per request
on the host, from the prompt (the family's `visual_token_mask`), and kept as a few
(start, end, kept) token spans per request, one per segment (one image or one video): with
budget "none" only the segments holding frame text (kept = 0), with a budget every segment.
A step then tests its rows' target indices against the spans of its batch (`kept_on_device`),
without host sync.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from sparrow_vllm.draft.config import FrameText
from sparrow_vllm.draft.visual_budget import VisualBudget, kept_on_device, kept_token_mask, segments
from sparrow_vllm.families import TargetFamily
from sparrow_vllm.serving.host_mirror import to_device


class VisualRows:
    def __init__(
        self, family: TargetFamily, frame_text: FrameText, device: torch.device, visual_budget: VisualBudget = "none"
    ) -> None:
        self.family = family
        self.frame_text = frame_text
        self.visual_budget = visual_budget
        self.device = device
        self.placeholder_ids = torch.tensor(sorted(family.placeholder_ids), dtype=torch.int64, device=device)
        self._spans: dict[str, list[tuple[int, int, int]]] = {}

    def token_mask(self, token_ids: Sequence[int]) -> list[bool]:
        """Per token: a visual token the draft does not keep, so row i is not committed iff
        token i + 1 is one (the training rule; generated tokens are never visual)."""
        visual = self.family.visual_token_mask(token_ids, self.frame_text)
        if self.visual_budget == "none":
            return visual
        kept = kept_token_mask(visual, self.visual_budget)
        return [v and not k for v, k in zip(visual, kept, strict=True)]

    def add_request(self, req_id: str, prompt_token_ids: Sequence[int]) -> None:
        """Remember the segments of a new request the device cannot tell by token id."""
        if self.visual_budget == "none":
            if self.frame_text != "visual":
                return  # placeholders alone: the token id says it all
            visual = self.family.visual_token_mask(prompt_token_ids, self.frame_text)
            placeholders = self.family.placeholder_ids
            spans = [(s, e, n) for s, e, n in segments(visual, "none")
                     if any(t not in placeholders for t in prompt_token_ids[s:e])]
        else:
            spans = segments(self.family.visual_token_mask(prompt_token_ids, self.frame_text), self.visual_budget)
        if spans:
            self._spans[req_id] = spans

    def release(self, req_id: str) -> None:
        self._spans.pop(req_id, None)

    def batch_spans(self, req_ids: Sequence[str]) -> torch.Tensor | None:
        """[B, R, 3] int64 (start, end, kept) segments of the batch's requests (padded with
        (0, 0, 0), which keeps nothing), or None when no request of the batch has any."""
        spans = [self._spans.get(r, []) for r in req_ids]
        width = max((len(s) for s in spans), default=0)
        if width == 0:
            return None
        flat = [v for s in spans for span in s + [(0, 0, 0)] * (width - len(s)) for v in span]
        return to_device(flat, self.device).view(len(spans), width, 3)

    def is_committed(
        self,
        # [N] input token of each row
        input_ids: torch.Tensor,
        # [N] target index of each row's input token
        token_index: torch.Tensor,
        # [N] request of each row
        row_req: torch.Tensor,
        # [B, R, 3] from batch_spans, or None
        spans: torch.Tensor | None,
    ) -> torch.Tensor:  # [N] bool, the row's input token is text or a kept visual token
        committed = ~torch.isin(input_ids, self.placeholder_ids)
        if spans is not None:
            inside, kept = kept_on_device(token_index, spans[row_req])  # spans[row_req]: [N, R, 3]
            committed = (committed & ~inside) | kept
        return committed
