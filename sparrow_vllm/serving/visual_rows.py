"""Which rows of a step are visual (never drafted over, never cached), by the family's rule.

A row is visual when its input token is: a visual placeholder (every family), or text the
family writes inside a video segment (Qwen3-VL's per-frame timestamps and markers) when the
draft's frame_text is "visual". Placeholders are recognised on the device by token id.
Frame text looks like any other text, so it is found once per request on the host, from the
prompt (the family's `visual_token_mask`, the rule training uses), and kept as a few
[start, end) token spans per request: each span is one whole video segment. A step then
tests its rows' target indices against the spans of its batch, without host sync.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from sparrow_vllm.draft.config import FrameText
from sparrow_vllm.families import TargetFamily
from sparrow_vllm.serving.host_mirror import to_device


class VisualRows:
    def __init__(self, family: TargetFamily, frame_text: FrameText, device: torch.device) -> None:
        self.family = family
        self.frame_text = frame_text
        self.device = device
        self.placeholder_ids = torch.tensor(sorted(family.placeholder_ids), dtype=torch.int64, device=device)
        self._spans: dict[str, list[tuple[int, int]]] = {}

    def token_mask(self, token_ids: Sequence[int]) -> list[bool]:
        """Per token: visual or not (the training rule; generated tokens are never visual)."""
        return self.family.visual_token_mask(token_ids, self.frame_text)

    def add_request(self, req_id: str, prompt_token_ids: Sequence[int]) -> None:
        """Remember the segments of a new request whose prompt holds frame text."""
        if self.frame_text != "visual":
            return
        segments = _segments_with_frame_text(self.token_mask(prompt_token_ids), prompt_token_ids,
                                             self.family.placeholder_ids)
        if segments:
            self._spans[req_id] = segments

    def release(self, req_id: str) -> None:
        self._spans.pop(req_id, None)

    def batch_spans(self, req_ids: Sequence[str]) -> torch.Tensor | None:
        """[B, R, 2] int64 spans of the batch's requests (padded with empty spans), or None
        when no request of the batch has frame text."""
        spans = [self._spans.get(r, []) for r in req_ids]
        width = max((len(s) for s in spans), default=0)
        if width == 0:
            return None
        flat = [bound for s in spans for span in s + [(0, 0)] * (width - len(s)) for bound in span]
        return to_device(flat, self.device).view(len(spans), width, 2)

    def is_text(
        self,
        # [N] input token of each row
        input_ids: torch.Tensor,
        # [N] target index of each row's input token
        token_index: torch.Tensor,
        # [N] request of each row
        row_req: torch.Tensor,
        # [B, R, 2] from batch_spans, or None
        spans: torch.Tensor | None,
    ) -> torch.Tensor:  # [N] bool
        text = ~torch.isin(input_ids, self.placeholder_ids)
        if spans is not None:
            mine = spans[row_req]  # [N, R, 2]
            inside = (token_index[:, None] >= mine[..., 0]) & (token_index[:, None] < mine[..., 1])
            text &= ~inside.any(dim=1)
        return text


def _segments_with_frame_text(
    mask: Sequence[bool], token_ids: Sequence[int], placeholders: frozenset[int]
) -> list[tuple[int, int]]:
    """Maximal runs of visual tokens that hold at least one non-placeholder token."""
    out: list[tuple[int, int]] = []
    start = None
    for i, visual in enumerate([*mask, False]):
        if visual and start is None:
            start = i
        elif not visual and start is not None:
            if any(t not in placeholders for t in token_ids[start:i]):
                out.append((start, i))
            start = None
    return out
