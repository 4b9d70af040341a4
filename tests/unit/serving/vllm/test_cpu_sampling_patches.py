"""Ledger entries 8 and 9: the CPU build's rejection sampler gets right per-token values,
and top-k on a step without draft tokens does not kill the engine."""


import torch

from sparrow_vllm.serving.vllm.patch_cpu_build import expand_per_request
from tests.unit.helpers import last_line_after_registration


def test_expand_per_request_matches_the_kernel_rule():
    out = torch.full((14,), -9.0)
    expand_per_request(out, torch.tensor([1.0, 0.5, 2.0]), torch.tensor([4, 8, 12], dtype=torch.int32), 0, 0)
    assert out[:12].tolist() == [1.0] * 4 + [0.5] * 4 + [2.0] * 4
    assert out[12:].tolist() == [-9.0, -9.0]  # past the last token: untouched
    ints = torch.zeros(5, dtype=torch.int64)
    expand_per_request(ints, torch.tensor([3, 0, 7]), torch.tensor([2, 3, 5]), 0, -1)
    assert ints.tolist() == [3, 3, -1, 7, 7]


def test_rejection_sampler_expansion_is_right_after_registration():
    """In vLLM's own path: the plugin registered, then the CPU platform's kernel overrides
    (as a worker does), then `expand_batch_to_tokens` with float temperatures."""
    code = (
        "from vllm.platforms import current_platform\n"
        "current_platform.import_kernels(); current_platform.register_triton_kernel_overrides()\n"
        "from vllm.v1.sample.rejection_sampler import expand_batch_to_tokens\n"
        "cu = torch.tensor([4, 8, 12], dtype=torch.int32)\n"
        "print(expand_batch_to_tokens(torch.tensor([1.0, 0.5, 2.0]), cu, 12).tolist())\n"
    )
    assert last_line_after_registration(code) == str([1.0] * 4 + [0.5] * 4 + [2.0] * 4)


def test_top_k_on_zero_draft_rows_after_registration():
    """vLLM's PyTorch top-k (the CPU build's) on the rejection sampler's [0, vocab] draft
    rows: the original raises in `k.max()`; patched, empty stays empty and other rows
    are still masked."""
    code = (
        "from vllm.v1.sample.ops.topk_topp_sampler import apply_top_k_top_p_pytorch\n"
        "empty = apply_top_k_top_p_pytorch(torch.zeros(0, 7), torch.zeros(0, dtype=torch.int64), None, True)\n"
        "rows = apply_top_k_top_p_pytorch(torch.tensor([[1., 3., 2.], [5., 4., 6.]]), torch.tensor([1, 3]), None, True)\n"
        "print(list(empty.shape), rows.tolist())\n"
    )
    inf = float("-inf")
    assert last_line_after_registration(code) == f"{[0, 7]} {[[inf, 3.0, inf], [5.0, 4.0, 6.0]]}"
