"""The Triton text-window attention kernel against the fp32 PyTorch reference.

On CPU the kernel runs in Triton's interpreter (TRITON_INTERPRET=1, set here before the
kernel module is imported); the grid is kept small for CI. The fuller grid is marked
`gpu` and runs where CUDA is present.

Tolerance rule (`tolerance`): the reference is computed in fp32 from the same (rounded)
inputs, so the only differences are accumulation order and the output's rounding: fp32
within 1e-4, fp16 within 2e-3, bf16 within 1.6e-2 (about two ulps of the output dtype),
absolute and relative.
"""

from __future__ import annotations

import os

import torch

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"

import pytest  # noqa: E402
from sparrow_vllm.kernels.reference import text_window_attention_reference  # noqa: E402

from sparrow_vllm.serving.attention import backend_calls, text_window_attention  # noqa: E402
from tests.unit.helpers import paged_pools  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def tolerance(dtype: torch.dtype) -> dict[str, float]:
    return {
        torch.float32: {"atol": 1e-4, "rtol": 1e-4},
        torch.float16: {"atol": 2e-3, "rtol": 2e-3},
        torch.bfloat16: {"atol": 1.6e-2, "rtol": 1.6e-2},
    }[dtype]


def make_case(prefixes, news, heads, kv_heads, head_dim, dtype, block_size=16, firsts=None,
              table_width=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    batch = len(prefixes)
    total = sum(news)

    def rnd(*shape):
        return torch.randn(*shape, generator=g).to(dtype)

    cached = [rnd(p, kv_heads, head_dim) for p in prefixes]
    k_pool, table = paged_pools(cached, block_size, firsts, table_width, seed=seed)
    v_pool, _ = paged_pools([rnd(*c.shape) for c in cached], block_size, firsts, table_width, seed=seed)
    # request b uses table row slots[b] (rows are shuffled like the cache's slots)
    slots = torch.randperm(batch, generator=g)
    return {
        "q": rnd(total, heads, head_dim).to(DEVICE),
        "k_new": rnd(total, kv_heads, head_dim).to(DEVICE),
        "v_new": rnd(total, kv_heads, head_dim).to(DEVICE),
        "cu_seqlens": torch.tensor([0, *torch.tensor(news).cumsum(0).tolist()], device=DEVICE),
        "k_pool": k_pool.to(DEVICE),
        "v_pool": v_pool.to(DEVICE),
        "block_table": table[torch.argsort(slots)].contiguous().to(DEVICE),
        "slot_ids": slots.to(DEVICE),
        "prefix_lens": torch.tensor(prefixes, device=DEVICE),
        "first_rows": torch.tensor(firsts or [0] * batch, device=DEVICE),
    }


def check(case, window, dtype):
    before = backend_calls().get("triton", 0)
    out = text_window_attention(**case, window=window, backend="triton")
    assert backend_calls().get("triton", 0) == before + 1, "the Triton path did not run"
    fp32 = {k: (v.float() if v.is_floating_point() else v) for k, v in case.items()}
    scale = case["q"].shape[-1] ** -0.5
    ref = text_window_attention_reference(**fp32, window=window, scale=scale)
    assert out.dtype == dtype
    torch.testing.assert_close(out.float(), ref, **tolerance(dtype))


# (cached rows per request, new rows per request): decode (1 row), multi-row commits,
# 0 and 1 cached rows, and a request with more new rows than one block.
SHAPES = [
    ([0, 1, 7], [1, 1, 1]),
    ([3, 0, 20], [5, 2, 18]),
]


@pytest.mark.parametrize("prefixes, news", SHAPES)
@pytest.mark.parametrize("window", [None, 1, 4, 64])
@pytest.mark.parametrize("heads, kv_heads, head_dim", [(4, 2, 64), (2, 1, 80)])
def test_kernel_matches_reference_fp32(prefixes, news, window, heads, kv_heads, head_dim):
    case = make_case(prefixes, news, heads, kv_heads, head_dim, torch.float32)
    check(case, window, torch.float32)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_kernel_half_precision(dtype):
    case = make_case([5, 0], [3, 1], 4, 1, 128, dtype)
    check(case, 4, dtype)


@pytest.mark.parametrize("block_size", [1, 5, 64])
def test_block_sizes_first_rows_and_table_wrap(block_size):
    # rows dropped below first_rows; a table narrower than the request's span of rows
    # reuses columns (a // S) % M, as the window does
    case = make_case([9, 40, 3], [1, 2, 17], 2, 2, 64, torch.float32, block_size=block_size,
                     firsts=[2, 31, 0], table_width=-(-40 // block_size) + 1)
    check(case, None, torch.float32)
    check(case, 6, torch.float32)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("batch", [1, 8, 64])
@pytest.mark.parametrize("window", [None, 1, 16, 4096])
@pytest.mark.parametrize("heads, kv_heads, head_dim", [(28, 4, 128), (16, 16, 64), (12, 1, 96), (8, 2, 80)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("new_rows", [1, 5, 70])
@pytest.mark.parametrize("block_size", [16, 32])
def test_kernel_full_grid_gpu(batch, window, heads, kv_heads, head_dim, dtype, new_rows, block_size):
    g = torch.Generator().manual_seed(batch)
    prefixes = torch.randint(0, 300, (batch,), generator=g).tolist()
    prefixes[0] = 0
    case = make_case(prefixes, [new_rows] * batch, heads, kv_heads, head_dim, dtype, block_size)
    check(case, window, dtype)
