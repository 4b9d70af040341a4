"""`sparrow-vllm check`: is this draft safe and useful for this target, on this vLLM?

1. Validate the pair (family, shapes, feature layer) without starting vLLM.
2. Serve the family's prompt kinds (text, image, video, video+image) greedily with the
   target alone, then with Sparrow, each engine in its own process.
3. Compare the outputs token for token; read acceptance length, the runner and adapter
   that drafted, the draft attention backend, the draft cache's memory, and whether the
   draft cache held any visual row after a visual prefill.
Any mismatch is a failure with its reason; the report is JSON.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

from sparrow_vllm.check.prompts import prompt_kinds
from sparrow_vllm.draft.checkpoint import DraftCheckpoint, check_draft_for_target
from sparrow_vllm.draft.locate import locate_draft
from sparrow_vllm.draft.visual_budget import kept_token_mask
from sparrow_vllm.engine_job import EngineJobError, run_engine_job
from sparrow_vllm.errors import SparrowConfigError
from sparrow_vllm.families import TargetFamily, load_family
from sparrow_vllm.serving.vllm.runners import runner_env

logger = logging.getLogger(__name__)

Runner = Literal["v1", "v2", "auto"]  # runners.RUNNER_CHOICES
CPU_MEMORY_UTILIZATION = 0.3
LOW_ACCEPTANCE = 1.1  # below this a draft is exact but useless


class CheckSettings(BaseModel):
    """How `sparrow-vllm check` runs the target."""

    runner: Runner = Field("auto", description="vLLM model runner: v1, v2 (Model Runner V2), "
                           "or auto (vLLM's own choice: V2 on CUDA, V1 on CPU).")
    num_speculative_tokens: int = Field(3, ge=1, description="Drafts per step (K).")
    max_tokens: int = Field(32, ge=1, description="Greedy tokens generated per prompt.")
    dtype: str = Field("float32", description="Engine dtype. float32 makes the target's "
                       "numerics independent of batch shape, so greedy equality is exact.")
    max_model_len: int = Field(4096, ge=64, description="Engine context length.")
    timeout_s: float = Field(1800, gt=0, description="Limit for each engine process.")
    enforce_eager: bool = Field(True, description="No CUDA graphs (faster start-up for a check).")
    gpu_memory_utilization: float | None = Field(
        None, gt=0, le=1, description="Share of device memory each engine may take. None: vLLM's "
        "default (0.9) on a GPU, 0.3 on a CPU build of vLLM, which reserves that share of host "
        "memory and refuses to start when less is free.")


class PromptResult(BaseModel):
    kind: str
    prompt_tokens: int
    equal: bool
    first_difference: int | None = Field(None, description="Index of the first differing token.")


class CheckReport(BaseModel):
    target: str
    draft: str
    draft_revision: str | None = Field(None, description="The revision asked for when the draft is a hub id.")
    draft_dir: str | None = Field(None, description="The directory the draft was read from (for a hub id, its "
                                  "snapshot in the Hugging Face cache).")
    family: str = ""
    settings: CheckSettings
    passed: bool = False
    failures: list[str] = Field(default_factory=list)
    warnings: list[str] = Field(default_factory=list, description="Not failures, but worth acting on.")
    prompts: list[PromptResult] = Field(default_factory=list)
    acceptance_length: float | None = Field(None, description="Mean tokens per verify step, 1 + accepted / drafts.")
    runner_class: str | None = None
    drafted_on: str | None = Field(None, description="The Sparrow runner adapter that drafted: v1 or v2.")
    adapter: str | None = None
    attention_backend_calls: dict[str, int] = Field(default_factory=dict)
    draft_cache: dict[str, int] | None = None
    visual_rows_in_draft_cache: int | None = Field(
        None, description="Visual rows cached after a visual prefill that the draft's visual_budget does not keep "
                          "(0 is right).")
    kept_visual_rows_in_draft_cache: int | None = Field(
        None, description="Visual rows cached after that prefill that the draft's visual_budget keeps (0 for 'none').")
    text_rows_in_draft_cache: int | None = Field(None, description="Text rows cached after that prefill.")

    def summary(self) -> str:
        resolved = f" ({self.draft_dir})" if self.draft_dir not in (None, self.draft) else ""
        lines = [f"sparrow-vllm check: {'PASSED' if self.passed else 'FAILED'}  target={self.target}  "
                 f"draft={self.draft}{resolved}",
                 f"  family {self.family}", f"  runner {self.runner_class}; Sparrow adapter {self.drafted_on}"]
        for p in self.prompts:
            lines.append(f"  {p.kind:<12} {p.prompt_tokens:>6} prompt tokens  "
                         + ("output equal" if p.equal else f"DIFFERS at token {p.first_difference}"))
        if self.acceptance_length is not None:
            lines.append(f"  acceptance length {self.acceptance_length:.2f} tokens per step")
        if self.draft_cache:
            lines.append(f"  draft cache {self.draft_cache['bytes'] / 2**20:.1f} MiB "
                         f"({self.draft_cache['num_blocks']} blocks x {self.draft_cache['block_size']} rows); "
                         f"attention backend calls {self.attention_backend_calls}")
        lines += [f"  WARNING: {w}" for w in self.warnings]
        lines += [f"  FAILURE: {f}" for f in self.failures]
        return "\n".join(lines)


def _engine_args(family: TargetFamily, settings: CheckSettings) -> dict[str, Any]:
    args: dict[str, Any] = {"dtype": settings.dtype, "max_model_len": settings.max_model_len,
                            "enforce_eager": settings.enforce_eager}
    utilization = settings.gpu_memory_utilization
    if utilization is None and not _cuda_available():
        utilization = CPU_MEMORY_UTILIZATION
    if utilization is not None:
        args["gpu_memory_utilization"] = utilization
    if family.modalities:
        args["limit_mm_per_prompt"] = {m: 1 for m in family.modalities}
    return args


def _run_engine(job: dict[str, Any], settings: CheckSettings, workdir: Path, name: str) -> dict[str, Any]:
    env = {**runner_env(settings.runner), "VLLM_ALLOW_INSECURE_SERIALIZATION": "1"}
    return run_engine_job("sparrow_vllm.check.engine_run", job, workdir, name, env=env, timeout=settings.timeout_s)


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def _first_difference(a: list[int], b: list[int]) -> int | None:
    for i, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


def _visual_rows_cached(
    family: TargetFamily, checkpoint: DraftCheckpoint, inspected: dict[str, Any]
) -> tuple[int, int]:
    """Cached rows whose input token the family's rule calls visual (row i carries token
    i + 1): (those the draft's visual_budget does not keep, those it keeps)."""
    visual = family.visual_token_mask(inspected["prompt_token_ids"], checkpoint.sparrow.frame_text)
    kept = kept_token_mask(visual, checkpoint.sparrow.visual_budget)
    cached = [i + 1 for i in inspected["seq"] if i + 1 < len(visual) and visual[i + 1]]
    n_kept = sum(1 for j in cached if kept[j])
    return len(cached) - n_kept, n_kept


def run_check(target: str | Path, draft: str | Path, settings: CheckSettings | None = None,
              workdir: str | Path | None = None, draft_revision: str | None = None) -> CheckReport:
    """`draft`: a directory or a Hugging Face hub id (at `draft_revision`), resolved as the
    server resolves it (draft/locate.py); both engines get the resolved directory."""
    settings = settings or CheckSettings()
    report = CheckReport(target=str(target), draft=str(draft), draft_revision=draft_revision, settings=settings)
    try:
        draft_dir = locate_draft(draft, draft_revision)
        report.draft_dir = str(draft_dir)
        family = load_family(str(target))
        checkpoint = check_draft_for_target(draft_dir, family)
    except SparrowConfigError as error:
        report.failures.append(str(error))
        return report
    report.family = family.describe()
    kinds = prompt_kinds(family)
    job = {"target": str(target), "kinds": kinds, "max_tokens": settings.max_tokens,
           "engine": _engine_args(family, settings)}
    # K drafts every step: the check judges the draft (exact output, acceptance at every
    # position); the adaptive draft length would stop drafting a weak draft
    spec = {"method": "sparrow", "model": str(draft_dir), "num_speculative_tokens": settings.num_speculative_tokens,
            "adaptive_draft_length": False}
    with tempfile.TemporaryDirectory(prefix="sparrow-check-") as tmp:
        root = Path(workdir) if workdir is not None else Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        try:
            alone = _run_engine(job, settings, root, "target-alone")
            sparrow = _run_engine({**job, "speculative_config": spec}, settings, root, "sparrow")
        except EngineJobError as error:
            report.failures.append(str(error))
            return report
    _compare(report, kinds, alone, sparrow)
    _read_worker(report, family, checkpoint, sparrow)
    report.passed = not report.failures
    return report


def _compare(report: CheckReport, kinds: list[str], alone: dict[str, Any], sparrow: dict[str, Any]) -> None:
    for kind, ids, want, got in zip(kinds, alone["prompt_token_ids"], alone["outputs"], sparrow["outputs"], strict=True):
        diff = _first_difference(want, got)
        report.prompts.append(PromptResult(kind=kind, prompt_tokens=len(ids), equal=diff is None, first_difference=diff))
        if diff is not None:
            report.failures.append(
                f"the {kind} prompt's output with Sparrow differs from the target alone at token {diff} "
                f"({got[diff] if diff < len(got) else 'end'} vs {want[diff] if diff < len(want) else 'end'}): "
                "Sparrow must never change the target's output; report this with the JSON report attached"
            )


def _read_worker(report: CheckReport, family: TargetFamily, checkpoint: DraftCheckpoint, sparrow: dict[str, Any]) -> None:
    worker = sparrow["worker"]
    report.runner_class, report.adapter = worker["runner_class"], worker["adapter"]
    report.drafted_on = worker["sparrow_adapter"]
    report.attention_backend_calls = worker["attention_backend_calls"]
    report.draft_cache = worker["draft_cache"]
    drafts = sparrow["metrics"].get("vllm:spec_decode_num_drafts") or 0
    accepted = sparrow["metrics"].get("vllm:spec_decode_num_accepted_tokens") or 0
    if not worker["sparrow_adapter"] or not worker["sparrow_steps"] or not drafts:
        report.failures.append(f"Sparrow did not draft (adapter {worker['adapter']}, steps {worker['sparrow_steps']}, "
                               f"drafts {drafts}); check the engine log for the plugin's start-up lines")
    else:
        report.acceptance_length = 1 + accepted / drafts
        if report.acceptance_length < LOW_ACCEPTANCE:
            report.warnings.append(
                f"acceptance length {report.acceptance_length:.2f}: the draft almost never predicts the "
                "target, so Sparrow costs time without saving any; train it for this target "
                "(`sparrow-vllm train` on video data; docs/training.md)")
    if "inspected" in sparrow:
        not_kept, kept = _visual_rows_cached(family, checkpoint, sparrow["inspected"])
        report.visual_rows_in_draft_cache, report.kept_visual_rows_in_draft_cache = not_kept, kept
        report.text_rows_in_draft_cache = len(sparrow["inspected"]["seq"]) - not_kept - kept
        if report.visual_rows_in_draft_cache:
            report.failures.append(f"the draft cache held {report.visual_rows_in_draft_cache} visual rows after "
                                   f"a {sparrow['inspected']['kind']} prefill that its visual_budget "
                                   f"({checkpoint.sparrow.visual_budget}) does not keep; Sparrow's draft caches only "
                                   "text rows and the visual rows its budget keeps")
