"""Is Sparrow ever slower than no speculation under load? The OpenAI-compatible server under
concurrent chat requests with videos, judged with intervals that resolve 5%.

Methods (one `vllm serve` each, vLLM's default compile mode unless --serve-args says
otherwise): none; eagle (a draft that sees the video); Sparrow at a fixed K = 1..K_max
(sparrow-k1..); Sparrow's adaptive draft length (sparrow, the default); Sparrow with vLLM's
own batch-size table (sparrow-table, `num_speculative_tokens_per_batch_size`), tuned the way
vLLM's docs suggest: a pilot measures every K at every concurrency and the table gives each
concurrency the K with the lowest TPOT relative to no speculation (--table gives one
instead). The servers run in groups (--groups; a CPU server with its KV cache holds about
3.4 GB, so not all fit in memory at once): each group starts with its own none, the
control every ratio is taken against, and the default puts adaptive Sparrow in every group,
so that it meets each fixed K and the table side by side.

Points: every (video length, concurrency). Each point is measured in --rounds rounds; in
each round every method of a group serves the same requests (same clips, same questions, the same
X-Request-Id), one method after the other in an order rotated per round, so drift on the
machine hits all methods alike. Per point and method: the median TPOT (decode time per
output token after the first, per request) and, for every method, the 95% bootstrap
interval of median TPOT / median TPOT of none, resampling requests paired (request i is
the same chat under every method). Short videos are new clips for every request (each
request prefills its own video while others decode: the load speculation meets in
serving); videos of --reuse-videos-from tokens or more are --reused-clips clips asked
different questions, so after a warm-up vLLM's prefix cache holds them and the point
measures decoding with a long visual context rather than one 10-second prefill per
request.

Every server writes a step trace (SPARROW_STEP_TRACE, sparrow_vllm/serving/step_trace.py);
OUT-traces/<server>.jsonl holds a server's whole run and OUT-traces/<point>/<server>.jsonl
the steps of each point, for benchmarks/trace_replay.py (a server of a method that runs in
several groups is labelled <method>-g<i> past its first group). Writes OUT.json, OUT.md and OUT.png (TPOT
ratio to none with intervals, per point).

The committed run on the bundled toy world (2 CPU cores; see the JSON for its settings):

    python benchmarks/serve_bench.py --concurrency 1,4,16 --visual-tokens 1536,8192 \\
        --requests 32 --rounds 2 --out benchmarks/results/serve_load_toy_world

On a GPU with a real Qwen2.5-VL:

    python benchmarks/serve_bench.py --target Qwen/Qwen2.5-VL-7B-Instruct \\
        --sparrow-draft path/to/sparrow-draft --eagle-draft path/to/eagle-draft \\
        --serve-args "--dtype bfloat16" --concurrency 1,8,32 --visual-tokens 1536,25000 \\
        --requests 64 --rounds 4 --out results/qwen7b_serve
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import re
import shlex
import statistics
import sys
from pathlib import Path

from tqdm import tqdm

from sparrow_vllm.bench.chat_load import run_load
from sparrow_vllm.bench.intervals import median_ci95, median_ratio_ci95
from sparrow_vllm.bench.machine import describe_machine
from sparrow_vllm.bench.server import VllmServer, check_server_saw_videos, video_serve_args
from sparrow_vllm.bench.speedup import acceptance, counter_delta, counter_sum
from sparrow_vllm.bench.toy_requests import ToyQuestion
from sparrow_vllm.provenance import provenance
from sparrow_vllm.serving.step_trace import TRACE_ENV, read_trace
from sparrow_vllm.toy_world.dataset import frames_for_visual_tokens
from sparrow_vllm.toy_world.scene import QUESTIONS
from sparrow_vllm.toy_world.target import VISUAL_TOKENS_PER_FRAME

logger = logging.getLogger("serve_bench")
TOY_WORLD = Path(__file__).resolve().parents[1] / "models" / "toy-world"
SCENE_SEED = 3
PILOT_CLIPS = 500  # clip offset of the pilot's requests (the measured ones start at 0)
WARM_UP_CLIP = 900  # a clip no measured request asks about


def method_names(k: int) -> list[str]:
    return ["none", "eagle", *(f"sparrow-k{i}" for i in range(1, k + 1)), "sparrow", "sparrow-table"]


def speculative_config(method: str, args: argparse.Namespace, table: list[list[int]] | None) -> dict | None:
    if method == "none":
        return None
    if method == "eagle":
        return {"method": "eagle", "model": str(args.eagle_draft), "num_speculative_tokens": args.k}
    spec = {"method": "sparrow", "model": str(args.sparrow_draft), "num_speculative_tokens": args.k}
    if method == "sparrow":
        return spec
    if method == "sparrow-table":
        return {**spec, "adaptive_draft_length": False, "num_speculative_tokens_per_batch_size": table}
    return {**spec, "num_speculative_tokens": int(method.removeprefix("sparrow-k")), "adaptive_draft_length": False}


def base_method(label: str) -> str:
    """The method a server label runs: "none-g2" is group 2's own no-speculation server."""
    return re.sub(r"-g\d+$", "", label)


def group_labels(groups: list[list[str]]) -> list[list[str]]:
    """Server labels per group: a method in several groups (none, the control of each
    group, and sparrow) is labelled -g<i> past its first group."""
    seen: set[str] = set()
    out = []
    for i, group in enumerate(groups, start=1):
        out.append([m if m not in seen else f"{m}-g{i}" for m in group])
        seen.update(group)
    return out


def point_name(visual_tokens: int, concurrency: int) -> str:
    return f"v{visual_tokens}-c{concurrency}"


def point_chats(args: argparse.Namespace, p: int, visual_tokens: int, first: int, count: int,
                tag: str) -> tuple[list[str], list[list[dict]]]:
    """Request ids and chats number first..first+count-1 of point p: new clips for short
    videos; for long ones (>= --reuse-videos-from) --reused-clips clips, questions rotating."""
    frames = frames_for_visual_tokens(visual_tokens)
    reuse = visual_tokens >= args.reuse_videos_from
    questions = list(QUESTIONS)
    ids, chats = [], []
    for i in range(first, first + count):
        clip = 1000 * p + (i % args.reused_clips if reuse else i)
        question = questions[i % len(questions)] if reuse else args.question
        ids.append(f"{tag}-{i}")
        chats.append(ToyQuestion(SCENE_SEED, clip, frames, question).chat_messages())
    return ids, chats


def start_servers(args: argparse.Namespace, methods: list[str], table: list[list[int]] | None,
                  servers: dict[str, VllmServer]) -> None:
    """One server per method into `servers`, each ready before the next (startup compiles)."""
    from openai import OpenAI

    extra = shlex.split(args.serve_args) if args.serve_args is not None else []
    for label in methods:
        spec = speculative_config(base_method(label), args, table)
        mine = extra + (["--enforce-eager"] if base_method(label) in args.eager_methods else [])
        server = VllmServer(args.target, video_serve_args(max(args.visual_tokens), max(args.concurrency), spec, mine),
                            Path(f"{args.out}-logs/{label}.log"),
                            env={"VLLM_CPU_KVCACHE_SPACE": str(args.kv_cache_gib),
                                 TRACE_ENV: str(Path(f"{args.out}-traces/{label}.jsonl").resolve())})
        servers[label] = server
        server.wait_ready(args.startup_timeout)
        server.client = OpenAI(base_url=server.url + "/v1", api_key="unused")
        server.model = server.client.models.list().data[0].id
        warm_up(args, server)


def warm_up(args: argparse.Namespace, server: VllmServer) -> None:
    """One unmeasured request per video length, and one per reused clip (so vLLM's prefix
    cache holds them before anything is measured)."""
    for p, n in enumerate(args.visual_tokens):
        ids, chats = point_chats(args, p, n, WARM_UP_CLIP, 1, f"warmup-v{n}")
        if n >= args.reuse_videos_from:
            ids, chats = point_chats(args, p, n, 0, args.reused_clips, f"warmup-v{n}")
        for rid, chat in zip(ids, chats, strict=True):
            run_load(server.client, server.model, [chat], args.max_tokens, 1, True, request_ids=[rid])


def measure(args: argparse.Namespace, server: VllmServer, ids: list[str], chats: list[list[dict]],
            visual_tokens: int, concurrency: int) -> dict:
    before = server.metrics()
    results, _ = run_load(server.client, server.model, chats, args.max_tokens, concurrency, True,
                          request_ids=ids)
    check_server_saw_videos([r.prompt_tokens for r in results], [visual_tokens] * len(results))
    return {"ids": ids, "tpot_ms": [1000 * r.tpot_s for r in results], "ttft_s": [r.ttft_s for r in results],
            "tokens": [r.completion_tokens for r in results], "texts": [r.text for r in results],
            "counters": counter_delta(before, server.metrics())}


def per_round(args: argparse.Namespace, concurrency: int) -> int:
    """Requests per round: --requests spread over --rounds, a whole number of waves."""
    n = math.ceil(args.requests / args.rounds)
    return concurrency * math.ceil(n / concurrency)


def run_rounds(args: argparse.Namespace, servers: dict[str, VllmServer], methods: list[str], rounds: int,
               requests: int | None, first_clip: int, tag: str) -> dict[tuple[str, int, int], list[dict]]:
    """{(method, visual tokens, concurrency): [one measure() per round]}, methods rotated."""
    out: dict[tuple[str, int, int], list[dict]] = {}
    points = [(p, n, c) for p, n in enumerate(args.visual_tokens) for c in args.concurrency]
    with tqdm(total=rounds * len(points) * len(methods), desc=tag, unit="burst") as bar:
        for r in range(rounds):
            for j, (p, n, c) in enumerate(points):
                count = max(requests, c) if requests else per_round(args, c)
                ids, chats = point_chats(args, p, n, first_clip + r * count, count, f"{tag}-{point_name(n, c)}")
                shift = (r + j) % len(methods)
                for method in methods[shift:] + methods[:shift]:
                    out.setdefault((method, n, c), []).append(measure(args, servers[method], ids, chats, n, c))
                    bar.update()
    return out


def pilot_ratios(args: argparse.Namespace, servers: dict[str, VllmServer], labels: list[str]) -> dict:
    """{(K, visual tokens, concurrency): pilot median TPOT / the group's none}, for the
    fixed-K Sparrow servers among `labels` (the group's none first)."""
    fixed = [label for label in labels if base_method(label).startswith("sparrow-k")]
    pilot = run_rounds(args, servers, [labels[0], *fixed], 1, args.pilot_requests, PILOT_CLIPS, "pilot")
    out = {}
    for label in fixed:
        k = int(base_method(label).removeprefix("sparrow-k"))
        for n in args.visual_tokens:
            for c in args.concurrency:
                out[(k, n, c)] = (statistics.median(pilot[(label, n, c)][0]["tpot_ms"])
                                  / statistics.median(pilot[(labels[0], n, c)][0]["tpot_ms"]))
    return out


def tune_table(args: argparse.Namespace, ratios: dict) -> list[list[int]]:
    """vLLM's batch-size table as its docs suggest tuning it: per concurrency, the K (0: no
    speculation) whose pilot TPOT relative to no speculation, geometric mean over the
    video lengths, is lowest; each concurrency's K holds from the geometric midpoint with
    its neighbours."""
    best = {}
    for c in args.concurrency:
        score = {0: 1.0, **{k: statistics.geometric_mean(ratios[(k, n, c)] for n in args.visual_tokens)
                            for k in range(1, args.k + 1)}}
        best[c] = min(score, key=score.get)
    cs = sorted(best)
    upper = [math.floor(math.sqrt(a * b)) for a, b in zip(cs, cs[1:], strict=False)] + [max(max(cs), args.k + 2)]
    lower = [1] + [u + 1 for u in upper[:-1]]
    return [[lo, hi, best[c]] for lo, hi, c in zip(lower, upper, cs, strict=True)]


def summarise(args: argparse.Namespace, runs: dict[tuple[str, int, int], list[dict]],
              groups: list[list[str]]) -> list[dict]:
    """One row per (server, point): TPOT median and interval, and the paired interval of
    its ratio to its own group's none (measured in the same rounds)."""
    rows = []
    for g, labels in enumerate(groups, start=1):
        for n in args.visual_tokens:
            for c in args.concurrency:
                none = [t for m in runs[(labels[0], n, c)] for t in m["tpot_ms"]]
                none_texts = [t for m in runs[(labels[0], n, c)] for t in m["texts"]]
                for label in labels:
                    measured = runs[(label, n, c)]
                    tpot = [t for m in measured for t in m["tpot_ms"]]
                    texts = [t for m in measured for t in m["texts"]]
                    row = {"method": base_method(label), "server": label, "group": g, "visual_tokens": n,
                           "concurrency": c, "requests": len(tpot),
                           "tpot_median_ms": statistics.median(tpot), "tpot_median_ci95_ms": median_ci95(tpot),
                           "ratio_to_none": statistics.median(tpot) / statistics.median(none),
                           "ratio_to_none_ci95": median_ratio_ci95(tpot, none, paired=True),
                           "ttft_median_s": statistics.median(t for m in measured for t in m["ttft_s"]),
                           "text_equal_to_none": texts == none_texts}
                    if base_method(label) != "none":
                        counters = counter_sum([m["counters"] for m in measured])
                        row.update({k: v for k, v in acceptance(counters).items() if k != "per_position_rate"})
                    rows.append(row)
    return rows


def goals(rows: list[dict], k: int) -> list[dict]:
    """Per point: the upper end of adaptive Sparrow's interval of TPOT / none in every group;
    its median against the best fixed K (lowest ratio to none) and against vLLM's table,
    each in the group that ran them side by side."""
    out = []
    for n, c in sorted({(r["visual_tokens"], r["concurrency"]) for r in rows}):
        here = [r for r in rows if (r["visual_tokens"], r["concurrency"]) == (n, c)]
        adaptive = {r["group"]: r for r in here if r["method"] == "sparrow"}
        if not adaptive:
            continue
        upper = max(r["ratio_to_none_ci95"][1] for r in adaptive.values())
        point = {"visual_tokens": n, "concurrency": c,
                 "adaptive_ratio_ci95_by_group": {g: r["ratio_to_none_ci95"] for g, r in adaptive.items()},
                 "adaptive_ratio_upper_max": upper, "never_slower_than_none": upper <= 1.0}
        fixed = [r for r in here if r["method"].startswith("sparrow-k")]
        if fixed:
            best = min(fixed, key=lambda r: r["ratio_to_none"])
            mine = adaptive.get(best["group"])
            point.update(best_fixed_k=int(best["method"].removeprefix("sparrow-k")),
                         best_fixed_ratio=best["ratio_to_none"])
            if mine is not None:
                point.update(adaptive_over_best_fixed=mine["tpot_median_ms"] / best["tpot_median_ms"],
                             within_5pct_of_best_fixed=mine["tpot_median_ms"] <= 1.05 * best["tpot_median_ms"])
        table = next((r for r in here if r["method"] == "sparrow-table"), None)
        if table is not None and table["group"] in adaptive:
            mine = adaptive[table["group"]]
            point.update(adaptive_over_table=mine["tpot_median_ms"] / table["tpot_median_ms"],
                         at_most_table=mine["tpot_median_ms"] <= table["tpot_median_ms"])
        out.append(point)
    return out


def markdown(rows: list[dict], goal_rows: list[dict], table: list[list[int]] | None) -> str:
    lines = ["| group | method | visual tokens | concurrency | requests | TPOT median ms [95% CI] "
             "| TPOT / none [95% CI] | TTFT median s | acceptance length | text = none |", "|" + "---|" * 10]
    for r in rows:
        lo, hi = r["tpot_median_ci95_ms"]
        rlo, rhi = r["ratio_to_none_ci95"]
        acc = f"{r['acceptance_length']:.2f}" if r.get("acceptance_length") else "-"
        lines.append(f"| {r['group']} | {r['method']} | {r['visual_tokens']} | {r['concurrency']} | {r['requests']} "
                     f"| {r['tpot_median_ms']:.1f} [{lo:.1f}, {hi:.1f}] | {r['ratio_to_none']:.3f} [{rlo:.3f}, {rhi:.3f}] "
                     f"| {r['ttft_median_s']:.2f} | {acc} | {'yes' if r['text_equal_to_none'] else 'NO'} |")
    lines += ["", f"vLLM batch-size table (sparrow-table): {table}", "",
              "| visual tokens | concurrency | adaptive / none 95% CI, per group | upper <= 1.00 | best fixed K "
              "| adaptive / best fixed | within 5% | adaptive / table | <= table |", "|" + "---|" * 9]
    for g in goal_rows:
        cis = ", ".join(f"g{k}: [{lo:.3f}, {hi:.3f}]" for k, (lo, hi) in g["adaptive_ratio_ci95_by_group"].items())
        lines.append(f"| {g['visual_tokens']} | {g['concurrency']} | {cis} "
                     f"| {_yes(g['never_slower_than_none'])} | {g.get('best_fixed_k', '-')} "
                     f"| {_num(g.get('adaptive_over_best_fixed'))} | {_yes(g.get('within_5pct_of_best_fixed'))} "
                     f"| {_num(g.get('adaptive_over_table'))} | {_yes(g.get('at_most_table'))} |")
    return "\n".join(lines) + "\n"


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _yes(flag: bool | None) -> str:
    return "-" if flag is None else ("met" if flag else "NOT met")


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = sorted({(r["visual_tokens"], r["concurrency"]) for r in rows})
    shown = list(dict.fromkeys(r["server"] for r in rows if r["method"] != "none"))
    fig, ax = plt.subplots(figsize=(max(8, 1.6 * len(points)), 4.5))
    width = 0.8 / len(shown)
    for j, method in enumerate(shown):
        mine = {(r["visual_tokens"], r["concurrency"]): r for r in rows if r["server"] == method}
        xs = [i + (j - len(shown) / 2 + 0.5) * width for i, p in enumerate(points) if p in mine]
        ys = [mine[p]["ratio_to_none"] for p in points if p in mine]
        err = [[mine[p]["ratio_to_none"] - mine[p]["ratio_to_none_ci95"][0] for p in points if p in mine],
               [mine[p]["ratio_to_none_ci95"][1] - mine[p]["ratio_to_none"] for p in points if p in mine]]
        ax.errorbar(xs, ys, yerr=err, fmt="o", capsize=2, label=method)
    ax.axhline(1.0, color="black", lw=0.8)
    ax.set_xticks(range(len(points)), [f"{n} tok\nx{c}" for n, c in points])
    ax.set_ylabel("median TPOT / none (95% CI)")
    ax.set_title("TPOT against no speculation, per (video tokens, concurrency)")
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def split_traces(trace_dir: Path, methods: list[str], points: list[tuple[int, int]]) -> None:
    """<point>/<method>.jsonl: each server's steps whose requests all belong to the point's
    measured rounds (request ids carry the point's name), with the trace's header."""
    for method in methods:
        path = trace_dir / f"{method}.jsonl"
        header, events = read_trace(path)
        for n, c in points:
            name = point_name(n, c)
            steps = {e["step"] for e in events if e["event"] == "schedule"
                     and all(f"-{name}-" in str(r[0]) and "pilot" not in str(r[0]) for r in e["requests"])}
            (trace_dir / name).mkdir(exist_ok=True)
            lines = [header] + [e for e in events if e["step"] in steps]
            (trace_dir / name / f"{method}.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",")]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", default=str(TOY_WORLD / "target"))
    parser.add_argument("--sparrow-draft", default=str(TOY_WORLD / "sparrow-draft"))
    parser.add_argument("--eagle-draft", default=str(TOY_WORLD / "eagle-draft"))
    parser.add_argument("--k", type=int, default=4, help="num_speculative_tokens (K_max)")
    parser.add_argument("--groups", default=None,
                        help="groups of methods served side by side, ';' between groups, each a comma list "
                             "starting with none (default, K=4: none,sparrow,sparrow-k1,sparrow-k2,sparrow-k3;"
                             "none,sparrow,sparrow-k4,eagle,sparrow-table)")
    parser.add_argument("--concurrency", type=_ints, default=[1, 4, 16], help="comma list of requests in flight")
    parser.add_argument("--visual-tokens", type=_ints, default=[1536, 8192], help="comma list: video tokens per request")
    parser.add_argument("--requests", type=int, default=32, help="requests per point and method (at least)")
    parser.add_argument("--rounds", type=int, default=2, help="rounds the requests of a point are split into")
    parser.add_argument("--pilot-requests", type=int, default=8, help="requests per point of the table's pilot")
    parser.add_argument("--table", type=json.loads, default=None,
                        help="vLLM's num_speculative_tokens_per_batch_size for sparrow-table (default: tuned by a pilot)")
    parser.add_argument("--reuse-videos-from", type=int, default=4096,
                        help="videos this long or longer are reused clips served from the prefix cache")
    parser.add_argument("--reused-clips", type=int, default=4)
    parser.add_argument("--question", default="describe")
    parser.add_argument("--max-tokens", type=int, default=64, help="output tokens per request (EOS ignored)")
    parser.add_argument("--serve-args", default=None,
                        help="extra `vllm serve` arguments (default: none; the CPU build runs float32 either way)")
    parser.add_argument("--kv-cache-gib", type=int, default=2, help="VLLM_CPU_KVCACHE_SPACE per server (CPU builds)")
    parser.add_argument("--eager-methods", default="",
                        help="comma list of methods served with --enforce-eager (say why in the results)")
    parser.add_argument("--resume", action="store_true",
                        help="read back the groups a previous run with the same --out finished")
    parser.add_argument("--startup-timeout", type=float, default=900)
    parser.add_argument("--out", type=Path, default=Path("artifacts/serve_bench"))
    args = parser.parse_args()
    known = method_names(args.k)
    fixed = [f"sparrow-k{i}" for i in range(1, args.k + 1)]
    if args.groups is None:
        half = (args.k + 1) // 2 + 1
        args.groups = [["none", "sparrow", *fixed[:half]], ["none", "sparrow", *fixed[half:], "eagle", "sparrow-table"]]
    else:
        args.groups = [g.split(",") for g in args.groups.split(";")]
    flat = [m for g in args.groups for m in g]
    unknown = sorted(set(flat) - set(known))
    if unknown or any(g[0] != "none" for g in args.groups):
        raise SystemExit(f"--groups: comma lists of {', '.join(known)}, each starting with none (got {args.groups})")
    if "sparrow-table" in flat and args.table is None:
        before = [m for g in args.groups[:next(i for i, g in enumerate(args.groups) if "sparrow-table" in g) + 1]
                  for m in g]
        if not set(fixed) <= set(before):
            raise SystemExit(f"--groups: sparrow-table is tuned by a pilot of {', '.join(fixed)}; put them in its "
                             "group or an earlier one, or give the table with --table")
    args.eager_methods = [m for m in args.eager_methods.split(",") if m]
    # the clips' real lengths in tokens
    args.visual_tokens = [frames_for_visual_tokens(n) * VISUAL_TOKENS_PER_FRAME for n in args.visual_tokens]
    return args


def run_group(args: argparse.Namespace, labels: list[str], ratios: dict, table: list[list[int]] | None,
              runs: dict) -> list[list[int]] | None:
    """Start one group's servers, run the table's pilot where it needs one, measure every
    point in interleaved rounds into `runs`, stop the servers. Returns the table. A group
    measured before (OUT-group-<labels>.json, written when a group finishes) is read back
    with --resume instead of run again."""
    saved = Path(f"{args.out}-groups") / f"{'+'.join(labels)}.json"
    if args.resume and saved.exists():
        state = json.loads(saved.read_text())
        runs.update({tuple(json.loads(k)): v for k, v in state["runs"].items()})
        ratios.update({tuple(json.loads(k)): v for k, v in state["ratios"].items()})
        logger.info("resumed %s from %s", labels, saved)
        return state["table"]
    tuned = "sparrow-table" in labels and table is None
    servers: dict[str, VllmServer] = {}
    try:
        start_servers(args, [m for m in labels if m != "sparrow-table"], table, servers)
        has_fixed = any(base_method(m).startswith("sparrow-k") for m in labels)
        if table is None and has_fixed and "sparrow-table" in [m for g in args.groups for m in g]:
            ratios.update(pilot_ratios(args, servers, labels))
        if tuned:
            table = tune_table(args, ratios)
            logger.info("vLLM batch-size table from the pilot: %s", table)
        if "sparrow-table" in labels:
            start_servers(args, ["sparrow-table"], table, servers)
        measured = run_rounds(args, servers, labels, args.rounds, None, 0, "run")
    finally:
        for server in servers.values():
            server.stop()
    runs.update(measured)
    saved.parent.mkdir(parents=True, exist_ok=True)
    saved.write_text(json.dumps({"table": table, "runs": {json.dumps(list(k)): v for k, v in measured.items()},
                                 "ratios": {json.dumps(list(k)): v for k, v in ratios.items()}}))
    return table


def main() -> None:
    args = parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    groups = group_labels(args.groups)
    table, ratios, runs = args.table, {}, {}
    for labels in groups:
        table = run_group(args, labels, ratios, table, runs)
    trace_dir = Path(f"{args.out}-traces")
    split_traces(trace_dir, [m for g in groups for m in g], [(n, c) for n in args.visual_tokens for c in args.concurrency])
    rows = summarise(args, runs, groups)
    goal_rows = goals(rows, args.k)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    result = {"benchmark": "serve_bench", "machine": describe_machine(),
              "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
              "table": table, "pilot_ratios": {f"k{k}|{n}|{c}": r for (k, n, c), r in ratios.items()},
              "rows": rows, "goals": goal_rows,
              "requests": {f"{m}|{n}|{c}": [{k: v for k, v in r.items() if k != "counters"} for r in runs[(m, n, c)]]
                           for (m, n, c) in runs},
              "provenance": provenance(sys.argv)}
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")
    args.out.with_suffix(".md").write_text(markdown(rows, goal_rows, table))
    plot(rows, args.out.with_suffix(".png"))
    logger.info("\n%s", markdown(rows, goal_rows, table))


if __name__ == "__main__":
    main()
