"""Host work of the draft cache's allocator per decode step, against context length.

Every decode step the drafter calls `TextKVCache.reserve` for every request of the
batch (back with blocks the rows the coming write may touch, return the blocks no query
can see any more) and `after_write` (start the row-count mirror's copy). This times that
per-step host bookkeeping (the batch's request set, `reserve`, `after_write`) for
`--requests` requests that each already hold `--blocks` blocks, on the device the
cache lives on (the CPU by default). The simulated write between steps (row counts
advanced by an accepted length drawn from a seed) is not timed. Goal (issue 28): under
1 ms per step at 256 requests x 2,000 blocks; the time should not grow with `--blocks`.

`--cache-module FILE` times another copy of text_kv_cache.py (e.g. the code before a
change: `git show REV:sparrow_vllm/serving/text_kv_cache.py > /tmp/old.py`); each
`--variant label=FILE` adds one to the same run (same machine, same settings).

    python benchmarks/cache_host_work.py --variant before=/tmp/old.py   # ~2 min
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import random
import statistics
import sys
import time
from pathlib import Path
from types import ModuleType

import torch

from sparrow_vllm.bench.machine import describe_machine
from sparrow_vllm.provenance import provenance

OUT = Path(__file__).resolve().parent / "results"


def _load(path: str | None) -> ModuleType:
    if path is None:
        from sparrow_vllm.serving import text_kv_cache

        return text_kv_cache
    spec = importlib.util.spec_from_file_location(f"cache_variant_{abs(hash(path))}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def _run(module: ModuleType, args: argparse.Namespace, window: int | None) -> dict:
    """Per-step host times (seconds) over `args.repeats` repeats of `args.steps` steps."""
    k, size = args.spec_tokens, args.block_size
    context = args.blocks * size - 4 * (k + 1)  # leaves room for the decode steps' rows
    steps_rows = args.steps * (k + 1) * (args.repeats + 1)
    width = args.blocks + -(-(steps_rows + k) // size) + 2
    cache = module.TextKVCache(
        num_layers=1, num_blocks=args.requests * (width + 1), block_size=size,
        num_slots=2 * args.requests, table_width=width, num_kv_heads=1, head_dim=1,
        dtype=torch.float32, device=args.device, window=window,
    )
    req_ids = [f"r{i}" for i in range(args.requests)]
    active = set(req_ids)
    if hasattr(cache, "prepare_batch"):
        zeros = torch.zeros(len(req_ids), dtype=torch.int64, device=cache.device)
        slots, _ = cache.prepare_batch(req_ids, zeros, [0] * len(req_ids), set())
    else:  # a revision from before prepare_batch
        next_seq = [0] * (cache.num_slots + 1)
        slots = [cache.prepare(r, 0, active, next_seq) for r in req_ids]
    slot_index = torch.tensor(slots, device=cache.device)
    # the prompt: one prefill chunk of `context` text rows per request (synchronising)
    cache.sync(slots, [0] * len(slots))
    cache.reserve(slots, [context] * len(slots), k, active)
    # the device row counts (a revision from before the layout split holds them itself)
    lengths = getattr(cache, "layout", cache).lengths
    lengths[slot_index] = context
    cache.after_write()
    held = cache.blocks_held(req_ids[0])
    rng = random.Random(0)

    def write() -> None:  # the device's part of a step: each request accepts 1..K+1 rows
        accepted = torch.tensor([rng.randint(1, k + 1) for _ in slots], device=cache.device)
        lengths[slot_index] += accepted

    repeats = []
    for repeat in range(args.repeats + 1):  # the first repeat warms up
        times = []
        for _ in range(args.steps):
            start = time.perf_counter()
            batch = set(req_ids)
            cache.reserve(slots, [k + 1] * len(slots), k - 1, batch)
            write_start = time.perf_counter()
            write()
            resume = time.perf_counter()
            cache.after_write()
            end = time.perf_counter()
            times.append((write_start - start) + (end - resume))
        if repeat:
            repeats.append(times)
    return {"blocks_held_per_request_at_start": held, "repeats": repeats}


def _summary(repeats: list[list[float]]) -> dict:
    medians = sorted(1000 * statistics.median(r) for r in repeats)
    every = sorted(1000 * t for r in repeats for t in r)
    return {
        "ms_per_step_median": statistics.median(medians),
        "ms_per_step_repeat_medians_min_max": [medians[0], medians[-1]],
        "ms_per_step_p10_p90_all_steps": [every[len(every) // 10], every[9 * len(every) // 10]],
        "repeats": len(repeats),
        "steps_per_repeat": len(repeats[0]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=256)
    parser.add_argument("--blocks", type=int, default=2000, help="blocks each request holds")
    parser.add_argument("--block-size", type=int, default=16)
    parser.add_argument("--spec-tokens", type=int, default=4)
    parser.add_argument("--steps", type=int, default=20, help="timed steps per repeat")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--window", type=int, default=None,
                        help="rows of the windowed setting (default: the context less 8 "
                             "blocks, so requests keep ~--blocks blocks and the window moves "
                             "every step); the unwindowed setting always runs")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--variant", action="append", default=[],
                        help="label=FILE: also time this copy of text_kv_cache.py")
    parser.add_argument("--label", default="after", help="label of the working tree's code")
    parser.add_argument("--out", default=str(OUT / "cache_host_work_cpu.json"))
    args = parser.parse_args()

    if args.window is None:
        args.window = (args.blocks - 8) * args.block_size
    variants = [(args.label, None), *(v.split("=", 1) for v in args.variant)]
    rows = []
    for window in (None, args.window):
        for label, path in variants:
            run = _run(_load(path), args, window)
            row = {"code": label, "module": path or "sparrow_vllm/serving/text_kv_cache.py",
                   "window": window, **_summary(run["repeats"]),
                   "blocks_held_per_request_at_start": run["blocks_held_per_request_at_start"]}
            rows.append(row)
            print(json.dumps({k: v for k, v in row.items() if k != "module"}), flush=True)
    settings = {k: v for k, v in vars(args).items() if k not in ("out", "variant", "label")}
    result = {
        "what": "host time per decode step of the draft cache's bookkeeping (batch set, "
                "TextKVCache.reserve for every request, after_write); the simulated device "
                "write between steps is not timed",
        "goal": "under 1 ms per step at 256 requests x 2,000 blocks (issue 28)",
        "settings": settings,
        "machine": describe_machine(),
        "rows": rows,
        "provenance": provenance(["benchmarks/cache_host_work.py", *sys.argv[1:]]),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
