"""The Triton text-window attention kernel against the fp32 PyTorch reference.

On CPU the kernel runs in Triton's interpreter (TRITON_INTERPRET=1, set here before the
kernel module is imported); the grid is kept small for CI (this file: ~25 s on 2 cores).
Interpreter-only tests trace the interpreted kernel (loads per KV head, query-tile rows,
rows streamed per program, tl.dot operand dtypes). The fuller grids (`gpu`) run where CUDA
is present: many heads, long split row ranges, every dtype.

Tolerance rule (`tolerance`): the reference is computed in fp32 from the same (rounded)
inputs, so the only differences are accumulation order and the output's rounding: fp32
within 1e-4, fp16 within 2e-3, bf16 within 1.6e-2 (about two ulps of the output dtype),
absolute and relative.
"""

from __future__ import annotations

import os
from collections import Counter, defaultdict
from contextlib import contextmanager
from types import SimpleNamespace

import numpy as np
import torch

if not torch.cuda.is_available():  # also set by tests/unit/conftest.py, before triton is imported
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


# ---- what the kernel does, traced in the interpreter (issue 28, item 5) -------------------
#
# These tests watch the interpreted kernel's tl.dot calls and loads (Triton's interpreter runs
# every program in turn through one builder object, whose methods are wrapped here), so they
# measure the work layout itself: K/V rows loaded per KV head, query-tile rows per program,
# key rows streamed by the longest program, and the dtypes tl.dot gets.

interpreter_only = pytest.mark.skipif(torch.cuda.is_available(), reason="traces Triton's interpreter")


@contextmanager
def interpreter_trace(watch: dict[str, torch.Tensor]):
    """Record, per launch and program, each tl.dot (operand shapes, dtypes, precision, whether
    its operands hold only bf16-representable values) and count loaded elements per watched
    tensor."""
    from triton.runtime import interpreter

    builder = interpreter.interpreter_builder
    trace = SimpleNamespace(dots=defaultdict(list), loads=Counter(), launch=-1, program=None)
    ranges = {name: (t.data_ptr(), t.data_ptr() + t.numel() * t.element_size()) for name, t in watch.items()}
    set_grid_dim, set_grid_idx = builder.set_grid_dim, builder.set_grid_idx
    create_dot, create_masked_load = builder.create_dot, builder.create_masked_load

    def bf16_exact(handle) -> bool:
        if handle.dtype.scalar.name == "bf16":
            return True
        x = torch.from_numpy(np.asarray(handle.data, dtype=np.float32))
        return bool((x.to(torch.bfloat16).float() == x).all())

    def traced_grid_dim(*dims):
        trace.launch += 1
        return set_grid_dim(*dims)

    def traced_grid_idx(x, y, z):
        trace.program = (trace.launch, x, y, z)
        return set_grid_idx(x, y, z)

    def traced_dot(a, b, d, input_precision, max_num_imprecise_acc):
        trace.dots[trace.program].append(SimpleNamespace(
            m=a.data.shape[0], k=a.data.shape[1], n=b.data.shape[1],
            dtypes=(a.dtype.scalar.name, b.dtype.scalar.name), precision=str(input_precision),
            bf16_exact=bf16_exact(a) and bf16_exact(b)))
        return create_dot(a, b, d, input_precision, max_num_imprecise_acc)

    def traced_load(ptrs, mask, other, *args):
        for name, (lo, hi) in ranges.items():
            inside = (ptrs.data >= lo) & (ptrs.data < hi)
            trace.loads[name] += int(np.count_nonzero(np.logical_and(mask.data, inside)))
        return create_masked_load(ptrs, mask, other, *args)

    patches = {"set_grid_dim": traced_grid_dim, "set_grid_idx": traced_grid_idx,
               "create_dot": traced_dot, "create_masked_load": traced_load}
    for name, fn in patches.items():
        setattr(builder, name, fn)
    try:
        yield trace
    finally:
        for name in patches:
            delattr(builder, name)


def key_tiles(dots) -> int:
    """Score dots (q tile times a key tile) of one program: one per key tile streamed."""
    return len(dots) // 2


@interpreter_only
@pytest.mark.parametrize("heads, kv_heads", [(8, 2), (7, 1), (2, 2)])
def test_gqa_loads_each_cached_kv_row_once(heads, kv_heads):
    # decode (one new row); every cached row a request sees is read once per KV head, not
    # once per query head of its group
    prefixes, head_dim = [40, 7], 64
    case = make_case(prefixes, [1, 1], heads, kv_heads, head_dim, torch.float32)
    with interpreter_trace({"k_pool": case["k_pool"], "v_pool": case["v_pool"]}) as trace:
        check(case, None, torch.float32)
    once = sum(prefixes) * kv_heads * head_dim
    assert trace.loads["k_pool"] == once, f"K pool elements loaded {trace.loads['k_pool']}, once is {once}"
    assert trace.loads["v_pool"] == once, f"V pool elements loaded {trace.loads['v_pool']}, once is {once}"


@interpreter_only
@pytest.mark.parametrize("heads, kv_heads", [(4, 4), (8, 2), (7, 1)])
@pytest.mark.parametrize("new_rows", [1, 3, 5])  # decode: 1..K+1 rows at K = 4
def test_decode_tile_sized_for_its_rows(heads, kv_heads, new_rows):
    # one program per (request, KV head) holds all new rows x the group's heads, in the
    # smallest tile tl.dot takes: max(16, next power of two of rows x group)
    group = heads // kv_heads
    case = make_case([9, 30], [new_rows, new_rows], heads, kv_heads, 64, torch.float32)
    with interpreter_trace({}) as trace:
        check(case, 4, torch.float32)
    tile = max(16, 1 << (new_rows * group - 1).bit_length())
    working = {p: dots for p, dots in trace.dots.items() if dots}
    assert len(working) == 2 * kv_heads, f"{len(working)} programs ran, one per request and KV head is {2 * kv_heads}"
    assert {d.m for dots in working.values() for d in dots} == {tile}, (
        f"query tile rows {sorted({d.m for dots in working.values() for d in dots})}, want {tile}")


@interpreter_only
def test_long_row_range_is_split_across_programs():
    # one request, one KV head, 1,200 cached rows: the row range is split over several
    # programs (then reduced), so no program streams more than half of it
    prefix, block_n = 1200, 64
    case = make_case([prefix], [1], 2, 1, 64, torch.float32, block_size=16)
    with interpreter_trace({}) as trace:
        check(case, None, torch.float32)
    longest = max(key_tiles(dots) for dots in trace.dots.values()) * block_n
    assert longest <= prefix // 2, f"one program streamed {longest} of {prefix} cached rows"


@interpreter_only
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_dot_inputs_in_input_dtype(dtype):
    # fp16 / bf16: both tl.dot operands (q.k and p.v) in the input dtype, fp32 accumulation.
    # The interpreter's tl.dot mishandles bf16 operands (Triton 3.9 multiplies their raw
    # bits), so there the kernel widens them to fp32 just before the dot: the values are
    # still bf16's. fp32 inputs: fp32 operands at "ieee" precision.
    case = make_case([20, 3], [2, 1], 4, 2, 64, dtype)
    with interpreter_trace({}) as trace:
        check(case, 8, dtype)
    dots = [d for program in trace.dots.values() for d in program]
    assert dots
    name = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32"}[dtype]
    if dtype == torch.bfloat16:
        assert all(d.bf16_exact for d in dots), "a tl.dot operand holds values bf16 cannot"
        assert all(d.dtypes in {("bf16", "bf16"), ("fp32", "fp32")} for d in dots)
    else:
        assert {d.dtypes for d in dots} == {(name, name)}, f"tl.dot operand dtypes {({d.dtypes for d in dots})}"
    if dtype == torch.float32:
        assert all("IEEE" in d.precision.upper() for d in dots), {d.precision for d in dots}


# ---- the decode / split grid against the reference (interpreter on CPU, compiled on CUDA) ---

def check_direct(case, window, dtype, max_new_rows, num_splits=None):
    """The kernel launched directly (`num_splits` forced or chosen) against the reference."""
    from sparrow_vllm.kernels.text_window_attention import text_window_attention_triton

    scale = case["q"].shape[-1] ** -0.5
    out = text_window_attention_triton(**case, window=window, scale=scale, max_new_rows=max_new_rows,
                                       num_splits=num_splits)
    fp32 = {k: (v.float() if v.is_floating_point() else v) for k, v in case.items()}
    ref = text_window_attention_reference(**fp32, window=window, scale=scale)
    assert out.dtype == dtype
    torch.testing.assert_close(out.float(), ref, **tolerance(dtype))


DTYPES = [torch.float32, torch.float16, torch.bfloat16]


@pytest.mark.parametrize("group", [1, 2, 4, 7])
@pytest.mark.parametrize("head_dim", [64, 80, 128])
def test_decode_grid(group, head_dim):
    # a decode step at K = 4: requests with 1..K+1 new rows, 0 to 40 cached rows, some of
    # them dropped below first_rows; windowed and not; the dtype rotates over the grid so
    # that every (group, dtype) and (head_dim, dtype) pair appears
    dtype = DTYPES[([1, 2, 4, 7].index(group) + [64, 80, 128].index(head_dim)) % 3]
    case = make_case([0, 5, 40, 23, 17], [1, 2, 3, 4, 5], group * 2 if group < 4 else group, 2 if group < 4 else 1,
                     head_dim, dtype, block_size=8, firsts=[0, 0, 9, 0, 16], seed=group + head_dim)
    for window in (None, 3, 30):
        check_direct(case, window, dtype, max_new_rows=5)


@pytest.mark.parametrize("num_splits", [2, 3, 8])
@pytest.mark.parametrize("window", [None, 90])
def test_split_matches_reference(num_splits, window):
    # the split path forced on short ranges: chunks of whole key tiles, empty chunks (8 splits
    # of 1..3 tiles), first_rows > 0, a request with no cached row, a multi-tile prefill
    # request (18 rows x group 4 > one tile), windowed and not
    dtype = DTYPES[num_splits % 3]
    case = make_case([150, 0, 97, 200], [1, 5, 18, 3], 8, 2, 64, dtype, block_size=16,
                     firsts=[20, 0, 0, 133], seed=num_splits)
    check_direct(case, window, dtype, max_new_rows=18, num_splits=num_splits)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_long_window_splits_by_default(dtype):
    # a long window at batch 1: the launch splits by itself (choose_num_splits) and matches
    from sparrow_vllm.kernels.text_window_attention import choose_num_splits

    assert choose_num_splits(1, 700, 132) > 1
    case = make_case([900], [5], 4, 2, 128, dtype, block_size=32, firsts=[100], seed=3)
    check_direct(case, 700, dtype, max_new_rows=5)


def test_choose_num_splits():
    from sparrow_vllm.kernels.text_window_attention import MAX_SPLITS, SPLIT_MIN_ROWS
    from sparrow_vllm.kernels.text_window_attention import choose_num_splits as choose

    assert choose(132, 100_000, 132) == 1  # the batch fills the SMs
    assert choose(4, SPLIT_MIN_ROWS * 2 - 1, 132) == 1  # short range
    assert choose(1, 25_000, 132) == MAX_SPLITS
    assert choose(16, 25_000, 132) == 9  # enough to fill the SMs
    assert choose(8, 1024, 132) == 4  # each split keeps >= SPLIT_MIN_ROWS rows


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("batch", [1, 4])
@pytest.mark.parametrize("window", [None, 2048])
@pytest.mark.parametrize("heads, kv_heads, head_dim", [(28, 4, 128), (12, 2, 80), (7, 1, 64)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("new_rows", [1, 5])
@pytest.mark.parametrize("num_splits", [None, 3, 32])
def test_split_long_rows_gpu(batch, window, heads, kv_heads, head_dim, dtype, new_rows, num_splits):
    # long cached ranges (up to 6,000 rows) split by the heuristic or forced, first_rows > 0
    g = torch.Generator().manual_seed(batch + new_rows)
    prefixes = torch.randint(1000, 6000, (batch,), generator=g).tolist()
    firsts = [p // 7 for p in prefixes]
    case = make_case(prefixes, [new_rows] * batch, heads, kv_heads, head_dim, dtype, 32, firsts=firsts)
    check_direct(case, window, dtype, max_new_rows=new_rows, num_splits=num_splits)
