"""The visual-length sweep's tables, goals and plot (benchmarks/visual_length_sweep.py).

A *point* of the sweep is one request shape: a video of `visual_tokens` tokens, or one
image. A *method* is a speculative set-up by name: `none` (the target alone), `eagle`
(vLLM's eagle with the full-visual draft), `sparrow` (visual rows: none, the paper's
Sparrow), `sparrow-budget` (a draft trained with `--visual-budget N`) and `sparrow-all`
(a Sparrow draft keeping every visual row). Per method and point: acceptance length,
per-position acceptance, prefill/decode time, drafter time per decode step (median with a
95% bootstrap interval over steps), DSR, ESR, and whether the text equals the target's.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sparrow_vllm.bench.intervals import median_ci95, median_ratio_ci95
from sparrow_vllm.bench.paired import acceptance_difference, drafts_accepted, speedup_ratio
from sparrow_vllm.bench.speedup import acceptance, counter_sum, speedups
from sparrow_vllm.bench.toy_requests import IMAGE_VISUAL_TOKENS
from sparrow_vllm.toy_world.dataset import frames_for_visual_tokens

STEP_RATIO_GOAL = 1.1
COLOURS = {"sparrow": "tab:red", "sparrow-budget": "tab:green", "sparrow-all": "tab:purple", "eagle": "tab:blue"}
SPARE_COLOURS = ("tab:orange", "tab:brown", "tab:pink", "tab:olive", "tab:cyan")  # for other methods


def video_point(visual_tokens: int) -> dict[str, Any]:
    return {"label": str(visual_tokens), "kind": "video", "visual_tokens": visual_tokens,
            "frames": frames_for_visual_tokens(visual_tokens)}


IMAGE_POINT = {"label": "image", "kind": "image", "visual_tokens": IMAGE_VISUAL_TOKENS, "frames": 1}


def of_point(records: Sequence[dict], point: dict) -> list[dict]:
    """The requests of `point` (records without "kind" are videos: results before images)."""
    return [r for r in records if r["frames"] == point["frames"] and r.get("kind", "video") == point["kind"]]


def draft_steps(run: dict, point: dict) -> list[float]:
    return [s for r in of_point(run["requests"], point) for s in r["draft_decode_s"]]


def summarise(runs: dict[str, dict], points: Sequence[dict], cold: dict[str, dict] | None = None,
              temperature: float = 0.0) -> list[dict]:
    """One row per (method, point) from the per-request records (and the cold-cache drafter
    runs, when there are any). Texts are compared with no speculation only when greedy (at
    T > 0 equal texts are not expected: `text_equal_to_none` is None)."""
    rows = []
    for method, run in runs.items():
        for point in points:
            mine, base = of_point(run["requests"], point), of_point(runs["none"]["requests"], point)
            out_tokens = sum(len(r["output_token_ids"]) for r in mine)
            prefill, decode = sum(r["prefill_s"] for r in mine), sum(r["decode_s"] for r in mine)
            row = {
                "method": method, "point": point["label"], "kind": point["kind"],
                "visual_tokens": point["visual_tokens"], "frames": point["frames"], "requests": len(mine),
                "prompt_tokens": statistics.mean(r["prompt_tokens"] for r in mine),
                "prefill_s": prefill / len(mine), "decode_s": decode / len(mine),
                "output_tokens_per_s": out_tokens / (prefill + decode),
                "decode_tokens_per_s": out_tokens / decode,
                "temperature": temperature,
                "text_equal_to_none": None if temperature > 0 else all(
                    a["output_token_ids"] == b["output_token_ids"] for a, b in zip(mine, base, strict=True)),
                **speedups(base, mine),
            }
            if method != "none":
                stats = acceptance(counter_sum([r["counters"] for r in mine]))
                steps = draft_steps(run, point)
                row.update({
                    "acceptance_length": stats["acceptance_length"],
                    "per_position_rate": stats["per_position_rate"],
                    "draft_ms_per_step": 1000 * statistics.mean(steps),
                    "draft_ms_per_step_median": 1000 * statistics.median(steps),
                    "draft_ms_per_step_median_ci95": [1000 * v for v in median_ci95(steps)],
                    "draft_steps": len(steps),
                    "draft_prefill_ms": 1000 * statistics.mean(r["draft_prefill_s"] for r in mine),
                })
                if cold and method in cold:
                    row["draft_ms_per_step_cold_cache"] = 1000 * statistics.median(draft_steps(cold[method], point))
            rows.append(row)
    return rows


def _row(rows: list[dict], method: str, point: dict) -> dict:
    return next(r for r in rows if r["method"] == method and r["point"] == point["label"])


def draft_step_goals(rows: list[dict], runs: dict[str, dict], videos: Sequence[dict],
                     method: str = "sparrow") -> dict:
    """`method`'s draft step at the longest video within 1.1x of the shortest, and its
    median draft step against eagle's at every video length (ratio with a 95% interval)."""
    short, long = videos[0], videos[-1]
    ratio = _row(rows, method, long)["draft_ms_per_step_median"] / _row(rows, method, short)["draft_ms_per_step_median"]
    out: dict[str, Any] = {
        "draft_step_ratio_long_over_short": ratio, "draft_step_within_1.1x": ratio <= STEP_RATIO_GOAL,
        "draft_step_ratio_long_over_short_ci95": median_ratio_ci95(draft_steps(runs[method], long),
                                                                   draft_steps(runs[method], short))}
    if "draft_ms_per_step_cold_cache" in _row(rows, method, long):
        out["cold_cache_draft_step_ratio_long_over_short"] = (
            _row(rows, method, long)["draft_ms_per_step_cold_cache"]
            / _row(rows, method, short)["draft_ms_per_step_cold_cache"])
    if "eagle" in runs:
        per_length = {}
        for point in videos:
            mine, eagle = _row(rows, method, point), _row(rows, "eagle", point)
            step = mine["draft_ms_per_step_median"] / eagle["draft_ms_per_step_median"]
            per_length[point["label"]] = {
                "over_eagle_draft_step": step,
                "ratio_ci95": median_ratio_ci95(draft_steps(runs[method], point), draft_steps(runs["eagle"], point)),
                "draft_step_le_eagle": step <= 1.0, "dsr": mine["dsr"], "eagle_dsr": eagle["dsr"]}
        out["per_length"] = per_length
        out["draft_step_le_eagle_at_every_length"] = all(v["draft_step_le_eagle"] for v in per_length.values())
    return out


def _paired_acceptance(runs: dict[str, dict], a: str, b: str, point: dict) -> dict:
    counters = [[r["counters"] for r in of_point(runs[m]["requests"], point)] for m in (a, b)]
    result = acceptance_difference(drafts_accepted(counters[0]), drafts_accepted(counters[1]))
    return {**result, "point": point["label"], "method": a, "versus": b, "met": result["diff"] >= 0}


def budget_goals(rows: list[dict], runs: dict[str, dict], videos: Sequence[dict], image: dict | None,
                 method: str = "sparrow-budget") -> dict:
    """Issue 31's goals for the visual-budget draft `method`, with paired intervals:
    acceptance >= eagle's at the shortest video and >= Sparrow-none's at the longest; draft
    step longest/shortest <= 1.1; DSR >= eagle's at every video length and on the image.
    A goal whose comparison method did not run is listed in `not_judged`, with why."""
    short, long = videos[0], videos[-1]
    out: dict[str, Any] = {"method": method, "not_judged": {
        goal: f"{needed} did not run" for goal, needed in (
            ("acceptance_short_vs_eagle", "eagle"), ("acceptance_long_vs_sparrow", "sparrow"),
            ("dsr_vs_eagle", "eagle")) if needed not in runs}}
    if "eagle" in runs:
        out["acceptance_short_vs_eagle"] = _paired_acceptance(runs, method, "eagle", short)
    if "sparrow" in runs:
        out["acceptance_long_vs_sparrow"] = _paired_acceptance(runs, method, "sparrow", long)
    steps = draft_step_goals(rows, runs, videos, method)
    out["draft_step_long_over_short"] = {
        "ratio": steps["draft_step_ratio_long_over_short"], "ci95": steps["draft_step_ratio_long_over_short_ci95"],
        "met": steps["draft_step_within_1.1x"]}
    if "eagle" in runs:
        dsr = {}
        for point in [*videos, *([image] if image else [])]:
            base = [r["decode_s"] for r in of_point(runs["none"]["requests"], point)]
            mine = [r["decode_s"] for r in of_point(runs[method]["requests"], point)]
            eagle = [r["decode_s"] for r in of_point(runs["eagle"]["requests"], point)]
            ratio = speedup_ratio(base, mine, eagle)
            dsr[point["label"]] = {**ratio, "met": ratio["ratio"] >= 1.0}
        out["dsr_vs_eagle"] = dsr
        out["dsr_ge_eagle_at_every_video_length"] = all(dsr[p["label"]]["met"] for p in videos)
        if image:
            out["dsr_ge_eagle_on_image"] = dsr[image["label"]]["met"]
    return out


def _equal(flag: bool | None) -> str:
    return "- (T > 0)" if flag is None else ("yes" if flag else "NO")


def markdown(rows: list[dict]) -> str:
    head = ("| method | point | visual tokens | acceptance length | per-position acceptance | prefill s | decode s "
            "| draft ms/step (median [95% CI]) | draft ms/step, cold caches | DSR | ESR | out tok/s | text = none |")
    lines = [head, "|" + "---|" * 13]
    for r in rows:
        pos = ", ".join(f"{p:.2f}" for p in r.get("per_position_rate", []))
        acc = f"{r['acceptance_length']:.2f}" if "acceptance_length" in r else "-"
        draft = "-"
        if "draft_ms_per_step" in r:
            lo, hi = r["draft_ms_per_step_median_ci95"]
            draft = f"{r['draft_ms_per_step_median']:.2f} [{lo:.2f}, {hi:.2f}] ({r['draft_steps']} steps)"
        cold = f"{r['draft_ms_per_step_cold_cache']:.2f}" if "draft_ms_per_step_cold_cache" in r else "-"
        lines.append(f"| {r['method']} | {r.get('kind', 'video')} | {r['visual_tokens']} | {acc} | {pos or '-'} "
                     f"| {r['prefill_s']:.2f} | {r['decode_s']:.2f} | {draft} | {cold} | {r['dsr']:.2f} "
                     f"| {r['esr']:.2f} | {r['output_tokens_per_s']:.1f} | {_equal(r['text_equal_to_none'])} |")
    return "\n".join(lines) + "\n"


def _met(flag: bool) -> str:
    return "met" if flag else "NOT met"


def _interval(ci: Sequence[float], signed: bool = False) -> str:
    fmt = "{:+.2f}" if signed else "{:.2f}"
    return f"[{fmt.format(ci[0])}, {fmt.format(ci[1])}]"


def _decided(ci: Sequence[float], threshold: float) -> str:
    """Whether the 95% interval lies on one side of the goal's threshold."""
    return "yes" if ci[0] >= threshold or ci[1] < threshold else "no"


def budget_goals_markdown(goals: dict) -> str:
    """Issue 31's goals beside their figures, met or not, with paired 95% intervals, and
    whether the interval decides it (lies wholly on one side of the threshold)."""
    name = goals["method"]
    lines = [f"\n### Goals for `{name}` (paired 95% bootstrap intervals over requests)\n",
             "| goal | figure | met | interval decides |", "|---|---|---|---|"]
    for key, label in (("acceptance_short_vs_eagle", "acceptance >= eagle's at {point} visual tokens"),
                       ("acceptance_long_vs_sparrow", "acceptance >= Sparrow-none's at {point} visual tokens")):
        if key in goals:
            g = goals[key]
            lines.append(f"| {label.format(point=g['point'])} | {g['a']:.2f} vs {g['b']:.2f}, difference "
                         f"{g['diff']:+.2f} {_interval(g['diff_ci95'], True)} | {_met(g['met'])} "
                         f"| {_decided(g['diff_ci95'], 0.0)} |")
    for key, why in goals.get("not_judged", {}).items():
        lines.append(f"| {key} | - | not judged: {why} | - |")
    step = goals["draft_step_long_over_short"]
    lines.append(f"| draft step longest / shortest video <= {STEP_RATIO_GOAL} | {step['ratio']:.2f} "
                 f"{_interval(step['ci95'])} | {_met(step['met'])} | {_decided(step['ci95'], STEP_RATIO_GOAL)} |")
    for label, g in goals.get("dsr_vs_eagle", {}).items():
        where = "on one image" if label == "image" else f"at {label} visual tokens"
        lines.append(f"| DSR >= eagle's {where} (medians over requests) | {g['dsr_a']:.2f} vs {g['dsr_b']:.2f}, "
                     f"ratio {g['ratio']:.2f} {_interval(g['ratio_ci95'])} | {_met(g['met'])} "
                     f"| {_decided(g['ratio_ci95'], 1.0)} |")
    return "\n".join(lines) + "\n"


def draft_step_goals_markdown(goals: dict, settings: dict, method: str = "sparrow") -> str:
    """The draft-step goals beside the numbers: `method`'s median draft step against eagle's."""
    mode = "enforce-eager" if settings["enforce_eager"] else "vLLM's default compile mode (enforce_eager false)"
    lines = [f"\nMode: {mode}; batch {settings['batch']}.\n",
             f"| visual tokens | {method} / eagle median draft step [95% CI] | goal <= eagle | {method} DSR | eagle DSR |",
             "|---|---|---|---|---|"]
    per_length = goals.get("per_length", {})
    for n, v in per_length.items():
        lines.append(f"| {n} | {v['over_eagle_draft_step']:.2f} {_interval(v['ratio_ci95'])} "
                     f"| {_met(v['draft_step_le_eagle'])} | {v['dsr']:.2f} | {v['eagle_dsr']:.2f} |")
    if not per_length:
        lines.append("| - | not judged: eagle did not run | - | - | - |")
    ratio = goals["draft_step_ratio_long_over_short"]
    lines.append(f"\n{method} draft step longest/shortest length: {ratio:.2f} "
                 f"{_interval(goals['draft_step_ratio_long_over_short_ci95'])} (goal <= {STEP_RATIO_GOAL}: "
                 f"{_met(goals['draft_step_within_1.1x'])}).\n")
    return "\n".join(lines)


def method_colours(rows: list[dict]) -> dict[str, str]:
    """The colour of every speculative method in `rows` (all but `none`): COLOURS' own,
    then a spare colour each for methods COLOURS does not name, in the order they come."""
    others = [m for m in dict.fromkeys(r["method"] for r in rows) if m not in COLOURS and m != "none"]
    if len(others) > len(SPARE_COLOURS):
        raise ValueError(f"{len(others)} methods without a colour of their own ({', '.join(others)}); the "
                         f"figure has {len(SPARE_COLOURS)} spare colours: plot fewer, or add to COLOURS")
    return {**COLOURS, **dict(zip(others, SPARE_COLOURS, strict=False))}


def plot(rows: list[dict], path: Path) -> None:
    """Speedup, acceptance length and draft step against visual length, one line per
    method; the image point is a separate marker at its own visual length."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.4))
    for method, colour in method_colours(rows).items():
        mine = [r for r in rows if r["method"] == method]
        if not mine:
            continue
        videos = [r for r in mine if r.get("kind", "video") == "video"]
        images = [r for r in mine if r.get("kind") == "image"]
        for ax, key in zip(axes, ("dsr", "acceptance_length", "draft_ms_per_step_median"), strict=True):
            ax.plot([r["visual_tokens"] for r in videos], [r[key] for r in videos], "o-", color=colour, label=method)
            if images:
                ax.plot([r["visual_tokens"] for r in images], [r[key] for r in images], "*", ms=12, color=colour,
                        label=f"{method}, image")
        cis = [r["draft_ms_per_step_median_ci95"] for r in videos]
        axes[2].fill_between([r["visual_tokens"] for r in videos], [c[0] for c in cis], [c[1] for c in cis],
                             color=colour, alpha=0.15)
    axes[0].axhline(1.0, color="grey", lw=0.8)
    titles = ("decode speedup over no speculation (DSR)", "acceptance length (1 + accepted/drafts)",
              "drafter time per decode step (ms, median, 95% CI)")
    for ax, title in zip(axes, titles, strict=True):
        ax.set_xscale("log")
        ax.set_xlabel("visual tokens (star: one image)")
        ax.set_title(title, fontsize=10)
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
