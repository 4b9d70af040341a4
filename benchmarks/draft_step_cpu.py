"""One Sparrow decode step on CPU, standalone: the toy-world draft, batch 1, K = 4.

What `visual_length_sweep.py` times inside vLLM as `draft_decode_s` is the proposer's
`propose` call: one TextAnchoredDrafter.step (select text rows, draft over them against
the paged TextKVCache, commit their K/V, then K - 1 chain forwards) plus greedy sampling.
This script times the same step without an engine, on the bundled toy-world draft
(models/toy-world/sparrow-draft, its target's embedding and LM head), the draft cache laid
out as the engine lays it out for the sweep (max_model_len 25512, 16-row blocks).

A toy-world request holds about 16 text rows whatever its visual length (the prompt is
visual tokens plus a short question), plus up to 32 generated rows, so the 0.5k and 25k
cases differ by what the target reads between two drafter calls, not by the draft's work:
at 25k the target's KV reads (~100 MB a step) evict the CPU caches the draft ran in.
`--pollute-mb` models that: before each timed step the script reads that many MiB.

    python benchmarks/draft_step_cpu.py                   # ~1 min on 2 cores
    python benchmarks/draft_step_cpu.py --profile         # per-op table (torch.profiler)
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from sparrow_vllm.bench.machine import describe_machine
from sparrow_vllm.draft.checkpoint import check_draft_for_target
from sparrow_vllm.families import resolve_family
from sparrow_vllm.provenance import provenance
from sparrow_vllm.serving.drafter import StepInputs, TextAnchoredDrafter
from sparrow_vllm.serving.text_kv_cache import TextKVCache
from sparrow_vllm.serving.visual_rows import VisualRows
from sparrow_vllm.serving.vllm.draft_architecture import SparrowDraftForCausalLM
from sparrow_vllm.serving.vllm.draft_loading import DRIFT_STEPS

TOY_WORLD = Path(__file__).resolve().parents[1] / "models" / "toy-world"
# what the sweep's engines see: a 25k-token video plus text fits, 16 rows per block
MAX_MODEL_LEN = 25512
BLOCK_SIZE = 16
# (case, committed text rows, MiB the target reads between two drafter calls)
CASES = (("0.5k", 40, 2), ("25k", 40, 100), ("0.5k-100rows", 100, 2), ("25k-100rows", 100, 100))


def _family():
    from transformers import AutoConfig

    return resolve_family(AutoConfig.from_pretrained(TOY_WORLD / "target"))


def build(k: int, compile_backend: str | None = None) -> TextAnchoredDrafter:
    """The toy-world drafter as the engine builds it (own tensors stand in for the target's
    embedding and LM head); `compile_backend` as vLLM's compile mode sets it."""
    family = _family()
    checkpoint = check_draft_for_target(TOY_WORLD / "sparrow-draft", family, vllm_aux_hidden_states=True)
    model = SparrowDraftForCausalLM.from_checkpoint(checkpoint, None, torch.float32, torch.device("cpu"))
    with safe_open(str(TOY_WORLD / "target" / "model.safetensors"), framework="pt") as f:
        model.own_embedding = f.get_tensor("model.embed_tokens.weight").float()
        model.own_lm_head = f.get_tensor("lm_head.weight").float()
    layers = checkpoint.layers
    table_width = -(-(MAX_MODEL_LEN + 2 * k + 1 + DRIFT_STEPS * (k + 1)) // BLOCK_SIZE) + 1
    cache = TextKVCache(layers.num_hidden_layers, table_width, BLOCK_SIZE, 2, table_width,
                        layers.num_key_value_heads, layers.head_dim, torch.float32, "cpu")
    visual = VisualRows(family, checkpoint.sparrow.frame_text, torch.device("cpu"),
                        visual_budget=checkpoint.sparrow.visual_budget)
    drafter = TextAnchoredDrafter(model, cache, checkpoint.sparrow.window, visual, MAX_MODEL_LEN, k,
                                  compile_backend=compile_backend)
    if compile_backend is not None:  # as the engine's warm-up does
        drafter.warm_up(k + 1, layers.hidden_size, torch.float32)
    return drafter


class DecodeCase:
    """A request with `rows` committed text rows and one decode step's inputs (K + 1 rows,
    `accepted` + 1 valid), replayed from the same cache state every time."""

    def __init__(self, drafter: TextAnchoredDrafter, rows: int, k: int, accepted: int, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        cache = self.cache = drafter.cache
        self.drafter, self.k, self.rows = drafter, k, rows
        drafter.release("r0")
        (slot,), _ = cache.prepare_batch(["r0"], torch.zeros(1, dtype=torch.int64, device=cache.device),
                                         [0], set())
        cache.reserve([slot], [rows], k, {"r0"})
        cache.layout.k.normal_(generator=g)
        cache.layout.v.normal_(generator=g)
        cache.layout.lengths[slot] = rows
        cache.sync([slot], [rows])
        start = 25000 + rows  # target index of the step's first row
        cache.layout.next_seq[slot] = start
        drafter.forget_batch()
        n = k + 1
        hidden = drafter.model.own_embedding.shape[1]
        vocab = drafter.model.own_embedding.shape[0]
        self.inputs = StepInputs(
            req_ids=["r0"],
            token_ids=torch.randint(10, vocab, (n,), generator=g),
            positions=torch.arange(start, start + n),
            hidden_states=torch.randn(n, hidden, generator=g),
            next_token_ids=torch.randint(10, vocab, (1,), generator=g),
            sample_idx=torch.tensor([accepted]),
            query_start=torch.tensor([0, n]),
            seq_start=torch.tensor([start]),
            seq_start_host=[start],
            num_valid=torch.tensor([accepted + 1]),
            max_query_len=n,
        )
        self.slot = slot
        self.lengths = cache.layout.lengths.clone()
        self.next_seq = cache.layout.next_seq.clone()
        self.sample = lambda h: (drafter.model.compute_logits(h).argmax(-1), None)
        self.run()  # first decode step: host bookkeeping for the batch (not what is timed)

    def run(self) -> torch.Tensor:
        drafts, _ = self.drafter.step(self.inputs, self.k, self.sample)
        return drafts

    def reset(self) -> None:
        """The same cache state as before the step (device counts and the host's bound)."""
        self.cache.layout.lengths.copy_(self.lengths)
        self.cache.layout.next_seq.copy_(self.next_seq)
        self.cache.sync([self.slot], [self.rows])


def time_case(case: DecodeCase, pollute_mb: int, min_reps: int, min_seconds: float) -> dict:
    buffer = torch.ones(pollute_mb * 2**18) if pollute_mb else None
    times: list[float] = []
    sink = 0.0
    while len(times) < min_reps or sum(times) < min_seconds:
        case.reset()
        if buffer is not None:
            sink += float(buffer.sum())  # what the target reads between two drafter calls
        start = time.perf_counter()
        case.run()
        times.append(time.perf_counter() - start)
    times.sort()
    return {"median_ms": statistics.median(times) * 1e3, "p10_ms": times[len(times) // 10] * 1e3,
            "p90_ms": times[9 * len(times) // 10] * 1e3, "reps": len(times)}


def _profiled(case: DecodeCase, reps: int, warm_up: int) -> Any:
    """torch.profiler over `reps` steps (each under a "STEP" range), after `warm_up` steps."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    for _ in range(warm_up):
        case.reset()
        case.run()
    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(reps):
            case.reset()
            with torch.profiler.record_function("STEP"):
                case.run()
    return prof


def profile(case: DecodeCase, reps: int, row_limit: int) -> None:
    events = _profiled(case, reps, warm_up=20).key_averages()
    step = next(e for e in events if e.key == "STEP")
    print(events.table(sort_by="self_cpu_time_total", row_limit=row_limit))
    print(f"step: {step.cpu_time_total / reps:.0f} us per step (profiled)")


def count_ops(case: DecodeCase, reps: int = 5) -> float:
    """Ops one step launches from the host: the profiler's events directly under the step
    (an aten op called from Python counts once, nested ones not; a compiled draft forward
    counts as the ops its compiled code calls from the host, e.g. library matmuls, not the
    fused kernels inside it)."""
    events = _profiled(case, reps, warm_up=3).events()
    steps = sum(e.name == "STEP" for e in events)
    return sum(e.cpu_parent is not None and e.cpu_parent.name == "STEP" for e in events) / steps


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--k", type=int, default=4)
    p.add_argument("--accepted", type=int, default=3, help="drafts the target accepted (0..K)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--min-reps", type=int, default=300)
    p.add_argument("--min-seconds", type=float, default=3.0)
    p.add_argument("--profile", action="store_true", help="print torch.profiler's per-op table")
    p.add_argument("--compile", action="store_true",
                   help="compile the draft forward with inductor, as vLLM's default compile mode does")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/draft_step_cpu.json"))
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    drafter = build(args.k, "inductor" if args.compile else None)
    results = []
    with torch.inference_mode():
        if args.profile:
            profile(DecodeCase(drafter, 40, args.k, args.accepted), 200, 40)
            return
        for name, rows, pollute in CASES:
            case = DecodeCase(drafter, rows, args.k, args.accepted)
            entry = {"case": name, "cached_text_rows": rows, "pollute_mb": pollute,
                     "host_ops_per_step": count_ops(case),
                     **time_case(case, pollute, args.min_reps, args.min_seconds)}
            print(json.dumps(entry), flush=True)
            results.append(entry)
    by_name = {r["case"]: r["median_ms"] for r in results}
    result = {
        "benchmark": "draft_step_cpu",
        "machine": describe_machine(),
        "threads": args.threads,
        "k": args.k,
        "accepted": args.accepted,
        "draft_forward": "torch.compile (inductor)" if args.compile else "eager",
        "cases": results,
        "ratio_25k_over_0.5k": by_name["25k"] / by_name["0.5k"],
        "provenance": provenance(["benchmarks/draft_step_cpu.py"]),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({"ratio_25k_over_0.5k": result["ratio_25k_over_0.5k"]}))


if __name__ == "__main__":
    main()
