"""Draft cost against visual length: Sparrow (text rows only) vs a draft that sees the video.

For each visual length V (default 0.5k, 1.5k, 8k, 17k, 25k) at a fixed text length T,
a batch of requests holds a prompt of V visual + T text rows. We time, on the draft's
real code path (TextAnchoredDrafter + text_window_attention):

  sparrow    the Sparrow cache: visual rows were never committed, so it holds T rows;
  full       the same drafter with no visual filtering, as an EAGLE-style draft
             (vLLM's EAGLE for VLMs): its cache holds V + T rows.

Reported per visual length: the attention op alone (one draft layer, one decode step),
and a whole drafting step (first pass over 1 + K verified rows, then K - 1 chain steps).
On CUDA the op runs the Triton kernel and the JSON adds achieved memory bandwidth and its
share of the GPU's peak; elsewhere the PyTorch reference runs.

    python benchmarks/draft_attention.py                       # CPU defaults, ~2 min
    python benchmarks/draft_attention.py --device cuda --batch 32
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path
from types import SimpleNamespace

import torch

from sparrow_vllm.draft.config import DraftLayerConfig
from sparrow_vllm.draft.model import SparrowDraftModel
from sparrow_vllm.families import resolve_family
from sparrow_vllm.provenance import provenance
from sparrow_vllm.serving.attention import select_backend, text_window_attention
from sparrow_vllm.serving.drafter import StepInputs, TextAnchoredDrafter
from sparrow_vllm.serving.text_kv_cache import TextKVCache
from sparrow_vllm.serving.visual_rows import VisualRows
from sparrow_vllm.serving.vllm.draft_architecture import SparrowDraftForCausalLM

VISUAL_TOKEN = 0
# Peak HBM bandwidth (GB/s) by device-name fragment, for the share-of-peak figure.
PEAK_GBPS = {"H200": 4800.0, "H100": 3350.0, "A100": 2039.0, "L40S": 864.0}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _median_seconds(fn, device: torch.device, reps: int, min_seconds: float = 1.0) -> float:
    """Median of at least `reps` timed runs, repeated until `min_seconds` have passed
    (many runs for fast calls, where a 2-core machine's noise is largest)."""
    fn()
    _sync(device)
    times: list[float] = []
    while len(times) < reps or sum(times) < min_seconds:
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _draft(args, device: torch.device, dtype: torch.dtype) -> SparrowDraftForCausalLM:
    from sparrow_vllm.draft.config import SparrowConfig

    layers = DraftLayerConfig(
        hidden_size=args.hidden, intermediate_size=args.intermediate, num_hidden_layers=1,
        num_attention_heads=args.heads, num_key_value_heads=args.kv_heads,
        head_dim=args.head_dim, vocab_size=args.vocab,
    )
    sparrow = SparrowConfig(target_hidden_size=args.hidden, target_vocab_size=args.vocab,
                            target_num_layers=28, target_architecture="benchmark")
    model = SparrowDraftForCausalLM()
    model.draft = SparrowDraftModel(layers, sparrow).to(device=device, dtype=dtype)
    model.own_embedding = torch.randn(args.vocab, args.hidden, device=device, dtype=dtype) * 0.02
    model.own_lm_head = torch.randn(args.vocab, args.hidden, device=device, dtype=dtype) * 0.02
    return model


def _visual_rows(filter_visual: bool, device) -> VisualRows:
    """Sparrow's rule (a Qwen2.5-VL-like family whose placeholder is VISUAL_TOKEN), or, for
    the full-visual draft, a text family: every row is text, so visual rows are cached."""
    if filter_visual:
        config = SimpleNamespace(model_type="qwen2_5_vl", image_token_id=VISUAL_TOKEN,
                                 video_token_id=VISUAL_TOKEN, vision_start_token_id=-1,
                                 vision_end_token_id=-1)
    else:
        config = SimpleNamespace(model_type="qwen2")
    return VisualRows(resolve_family(config), "visual", torch.device(device))


def _filled_drafter(args, model, rows: int, filter_visual: bool, device, dtype):
    """A drafter whose cache holds `rows` committed rows per request (random K/V)."""
    k, block = args.spec_tokens, args.block_size
    width = -(-(rows + 2 * k + 1 + args.reps * (k + 1)) // block) + 1
    cache = TextKVCache(1, args.batch * width, block, args.batch, width, args.kv_heads,
                        args.head_dim, dtype, device)
    cache.layout.k.normal_()
    cache.layout.v.normal_()
    drafter = TextAnchoredDrafter(model, cache, None, _visual_rows(filter_visual, device), max_model_len=1 << 20,
                                  num_speculative_tokens=k)
    req_ids = [f"r{i}" for i in range(args.batch)]
    zeros = torch.zeros(args.batch, dtype=torch.int64, device=device)
    slots, _ = cache.prepare_batch(req_ids, zeros, [0] * args.batch, set())
    # every request has seen its V + T prompt rows; `rows` of them are cached (in blocks)
    cache.reserve(slots, [rows] * args.batch, k, set(req_ids))
    cache.layout.lengths[: args.batch] = rows
    cache.sync(slots, [rows] * args.batch)
    cache.layout.next_seq[: args.batch] = args.visual_len_now + args.text_len
    return drafter, req_ids


def _decode_inputs(args, req_ids, device, dtype) -> StepInputs:
    """One verification round: 1 + K rows per request, all accepted."""
    n = args.spec_tokens + 1
    b = args.batch
    start = args.visual_len_now + args.text_len
    return StepInputs(
        req_ids=req_ids,
        token_ids=torch.randint(1, args.vocab, (b * n,), device=device),
        positions=torch.arange(start, start + n, device=device).repeat(b),
        hidden_states=torch.randn(b * n, args.hidden, device=device, dtype=dtype),
        next_token_ids=torch.randint(1, args.vocab, (b,), device=device),
        sample_idx=torch.arange(b, device=device) * n + n - 1,
        query_start=torch.arange(b + 1, device=device) * n,
        seq_start=torch.full((b,), start, device=device),
        seq_start_host=[start] * b,
        num_valid=torch.full((b,), n, device=device),
        max_query_len=n,
    )


def _step_seconds(args, drafter, req_ids, device, dtype) -> float:
    inputs = _decode_inputs(args, req_ids, device, dtype)
    lengths = drafter.cache.layout.lengths.clone()
    next_seq = drafter.cache.layout.next_seq.clone()

    def step():
        drafter.cache.layout.lengths.copy_(lengths)  # same cache state every repetition
        drafter.cache.layout.next_seq.copy_(next_seq)
        drafter.step(inputs, args.spec_tokens,
                     lambda h: (drafter.model.compute_logits(h).argmax(-1), None))

    return _median_seconds(step, device, args.reps)


def _op_seconds(args, cache_rows: int, device, dtype) -> float:
    b, hq, hk, d, block = args.batch, args.heads, args.kv_heads, args.head_dim, args.block_size
    width = -(-(cache_rows + 1) // block) + 1
    pool_k = torch.randn(b * width, block, hk, d, device=device, dtype=dtype)
    pool_v = torch.randn_like(pool_k)
    # each request's blocks scattered over the pool, as after many allocations
    table = torch.randperm(b * width, device=device).view(b, width).to(torch.int32)
    q = torch.randn(b, hq, d, device=device, dtype=dtype)
    kn, vn = torch.randn(b, hk, d, device=device, dtype=dtype), torch.randn(b, hk, d, device=device, dtype=dtype)
    cu = torch.arange(b + 1, device=device)
    slots = torch.arange(b, device=device)
    prefix = torch.full((b,), cache_rows, device=device)
    first = torch.zeros(b, dtype=torch.int64, device=device)
    return _median_seconds(
        lambda: text_window_attention(q, kn, vn, cu, pool_k, pool_v, table, slots, prefix, first,
                                      max_new_rows=1),
        device, args.reps,
    )


def _peak(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_GBPS.items() if k in name), None)


def run(args) -> dict:
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    model = _draft(args, device, dtype)
    elem = torch.empty((), dtype=dtype).element_size()
    peak = _peak(device)
    # one untimed pass at the shortest length, so the first point carries no warm-up cost
    args.visual_len_now = args.visual_lengths[0]
    drafter, req_ids = _filled_drafter(args, model, args.text_len, True, device, dtype)
    _op_seconds(args, args.text_len, device, dtype)
    _step_seconds(args, drafter, req_ids, device, dtype)
    del drafter
    rows = []
    for visual in args.visual_lengths:
        args.visual_len_now = visual
        entry = {"visual_len": visual, "text_len": args.text_len}
        for name, cache_rows, filt in (
            ("sparrow", args.text_len, True),
            ("full", visual + args.text_len, False),
        ):
            drafter, req_ids = _filled_drafter(args, model, cache_rows, filt, device, dtype)
            op = _op_seconds(args, cache_rows, device, dtype)
            step = _step_seconds(args, drafter, req_ids, device, dtype)
            bytes_read = 2 * args.batch * (cache_rows + 1) * args.kv_heads * args.head_dim * elem
            entry[name] = {
                "cache_rows": cache_rows,
                "op_ms": op * 1e3,
                "draft_step_ms": step * 1e3,
                "op_gbps": bytes_read / op / 1e9,
            }
            if peak is not None:
                entry[name]["op_share_of_peak"] = entry[name]["op_gbps"] / peak
            del drafter
        rows.append(entry)
        print(json.dumps(entry), flush=True)
    first, last = rows[0], rows[-1]
    return {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine(),
        "backend": select_backend(device),
        "dtype": args.dtype,
        "config": {k: v for k, v in vars(args).items() if k not in ("out", "visual_len_now")},
        "rows": rows,
        "ratios_longest_over_shortest": {
            name: {
                "op": last[name]["op_ms"] / first[name]["op_ms"],
                "draft_step": last[name]["draft_step_ms"] / first[name]["draft_step_ms"],
            }
            for name in ("sparrow", "full")
        },
        "peak_gbps": peak,
        "provenance": provenance(["benchmarks/draft_attention.py"]),
    }


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = [r["visual_len"] for r in result["rows"]]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, key, title in ((axes[0], "op_ms", "attention op (1 layer, 1 row)"),
                           (axes[1], "draft_step_ms", f"drafting step (K={result['config']['spec_tokens']})")):
        for name, label in (("sparrow", "Sparrow (text rows only)"), ("full", "draft that sees the video")):
            ax.plot(xs, [r[name][key] for r in result["rows"]], marker="o", label=label)
        ax.set_xlabel("visual tokens")
        ax.set_ylabel("ms")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(f"{result['device']} · {result['backend']} · {result['dtype']} · batch "
                 f"{result['config']['batch']} · text {result['config']['text_len']}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default=None, help="float32 on CPU, bfloat16 on CUDA by default")
    p.add_argument("--visual-lengths", type=lambda s: [int(x) for x in s.split(",")],
                   default=[512, 1536, 8192, 17408, 25600])
    p.add_argument("--text-len", type=int, default=512)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--spec-tokens", type=int, default=4)
    p.add_argument("--block-size", type=int, default=16, help="text rows per cache block")
    # Qwen2.5-VL-7B attention geometry; a smaller vocabulary keeps the CPU run short
    p.add_argument("--hidden", type=int, default=3584)
    p.add_argument("--intermediate", type=int, default=18944)
    p.add_argument("--heads", type=int, default=28)
    p.add_argument("--kv-heads", type=int, default=4)
    p.add_argument("--head-dim", type=int, default=128)
    p.add_argument("--vocab", type=int, default=32768)
    p.add_argument("--reps", type=int, default=5, help="minimum timed runs per point")
    p.add_argument("--out", default="benchmarks/results")
    args = p.parse_args()
    args.dtype = args.dtype or ("bfloat16" if args.device == "cuda" else "float32")
    torch.manual_seed(0)
    with torch.inference_mode():
        result = run(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"draft_attention_{torch.device(args.device).type}"
    (out / f"{stem}.json").write_text(json.dumps(result, indent=2) + "\n")
    plot(result, out / f"{stem}.png")
    print(json.dumps(result["ratios_longest_over_shortest"]))


if __name__ == "__main__":
    main()
