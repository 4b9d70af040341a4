"""Training positions follow vLLM's M-RoPE rule: text after a video starts after the
video's largest position (time included), not after its spatial extent."""

from __future__ import annotations

import torch

from sparrow_vllm.training.serving_positions import _shift_like_vllm


def _vllm_rule(text_before: int, grid: tuple[int, int, int], t_factor: int, text_after: int) -> torch.Tensor:
    """vLLM 0.32's get_mrope_input_positions for text, one video, text (merged grid)."""
    t, h, w = grid
    parts = [torch.arange(text_before).expand(3, -1)]
    idx = torch.stack(torch.meshgrid(torch.arange(t) * t_factor, torch.arange(h), torch.arange(w), indexing="ij"))
    parts.append(idx.reshape(3, -1) + text_before)
    start = int(torch.cat(parts, 1).max()) + 1
    parts.append(torch.arange(text_after).expand(3, -1) + start)
    return torch.cat(parts, 1)


def _transformers_rule(text_before: int, grid: tuple[int, int, int], t_factor: int, text_after: int) -> torch.Tensor:
    t, h, w = grid
    vision = _vllm_rule(text_before, grid, t_factor, 0)
    after = torch.arange(text_after).expand(3, -1) + text_before + max(h, w)
    return torch.cat((vision, after), 1)


def test_text_after_a_video_continues_after_its_last_time_step():
    grid, t_factor = (3, 4, 4), 4
    types = torch.tensor([0] * 4 + [2] * 48 + [0] * 6)
    fixed = _shift_like_vllm(_transformers_rule(4, grid, t_factor, 6), types)
    assert torch.equal(fixed, _vllm_rule(4, grid, t_factor, 6))
    assert fixed[:, 52].tolist() == [13, 13, 13]


def test_short_videos_and_text_only_are_unchanged():
    # one time step: the spatial extent already covers it, both rules agree
    types = torch.tensor([0] * 2 + [2] * 16 + [0] * 3)
    assert torch.equal(_shift_like_vllm(_transformers_rule(2, (1, 4, 4), 4, 3), types), _vllm_rule(2, (1, 4, 4), 4, 3))
    text = torch.arange(5).expand(3, -1)
    assert torch.equal(_shift_like_vllm(text, torch.zeros(5, dtype=torch.long)), text)
