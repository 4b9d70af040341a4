"""Ledger entries 10 and 12 (patches.py): the scheduler's side of Sparrow.

Entry 10: the scheduler sizes each step's drafts (SchedulerDraftLength) and, for entry 15,
moves the workers' metrics report onto its SchedulerStats. Entry 12: the NewRequestData a
model runner receives carries the request's cache_salt, which keys the draft's reusable rows.
"""

from __future__ import annotations

import functools
import logging
from types import ModuleType
from typing import Any

from sparrow_vllm.serving.step_trace import StepTrace
from sparrow_vllm.serving.vllm.metrics import REPORT_ATTRIBUTE, carry_to_scheduler_stats
from sparrow_vllm.serving.vllm.patch_common import SPARROW_METHOD, is_sparrow_draft, mark

logger = logging.getLogger(__name__)


# ---- 10. scheduler: the draft length of each step (and entry 15's report) --------------


def patch_scheduler(module: ModuleType) -> None:
    scheduler_cls = module.Scheduler
    original_init = scheduler_cls.__init__
    original_after = scheduler_cls._update_after_schedule
    original_update = scheduler_cls.update_from_output

    @functools.wraps(original_init)
    def __init__(self: Any, vllm_config: Any, *args: Any, **kwargs: Any) -> None:
        original_init(self, vllm_config, *args, **kwargs)
        self.sparrow_draft_length = None
        from sparrow_vllm.serving.vllm.scheduler_draft_length import SchedulerDraftLength

        spec = vllm_config.speculative_config
        choices = _sparrow_adaptive_choices(self, vllm_config)
        trace = StepTrace.from_env(_trace_header(self, vllm_config, choices))
        if choices is not None or trace is not None:
            self.sparrow_draft_length = SchedulerDraftLength(
                self.num_spec_tokens, choices=choices, adaptive=choices is not None, trace=trace)
        if spec is None or not is_sparrow_draft(spec) or choices is None:
            return
        if choices == tuple(range(self.num_spec_tokens + 1)):
            logger.info("Sparrow draft length: adaptive, 0..%d drafts per step", self.num_spec_tokens)
        else:
            logger.info(
                "Sparrow draft length: adaptive, one of %s drafts per step: max_num_seqs=%d "
                "leaves vLLM's dynamic table room for %d draft lengths, and the target's FULL "
                "CUDA graphs are captured for those only (max_num_seqs >= %d gives all of "
                "0..%d)",
                list(choices), len(self.dynamic_sd_lookup) - 1, len(choices),
                self.num_spec_tokens + 1, self.num_spec_tokens,
            )

    @functools.wraps(original_after)
    def _update_after_schedule(self: Any, scheduler_output: Any) -> None:
        policy = getattr(self, "sparrow_draft_length", None)
        if policy is not None:
            policy.on_scheduled(scheduler_output, self.requests)
        original_after(self, scheduler_output)

    @functools.wraps(original_update)
    def update_from_output(self: Any, scheduler_output: Any, model_runner_output: Any) -> Any:
        policy = getattr(self, "sparrow_draft_length", None)
        if policy is not None:
            policy.on_output(scheduler_output, model_runner_output)
        report = getattr(model_runner_output, REPORT_ATTRIBUTE, None)  # entry 15
        outputs = original_update(self, scheduler_output, model_runner_output)
        if report is not None:
            carry_to_scheduler_stats(outputs, report)
        return outputs

    mark(__init__, _update_after_schedule, update_from_output)
    scheduler_cls.__init__ = __init__
    scheduler_cls._update_after_schedule = _update_after_schedule
    scheduler_cls.update_from_output = update_from_output


def _sparrow_adaptive_choices(scheduler: Any, vllm_config: Any) -> tuple[int, ...] | None:
    """The draft lengths Sparrow's adaptive policy may choose for this scheduler's engine,
    or None where it does not choose (not Sparrow, adaptive off, or vLLM turned dynamic
    speculation off: a WARNING says so)."""
    spec = vllm_config.speculative_config
    if spec is None or not is_sparrow_draft(spec):
        return None
    from sparrow_vllm.serving.serving_options import SparrowServingOptions

    if not SparrowServingOptions.of(spec).adaptive_draft_length:
        logger.info("Sparrow draft length: fixed (adaptive_draft_length is false)")
        return None
    if scheduler.dynamic_sd_lookup is None:
        logger.warning(
            "Sparrow adaptive draft length is off: vLLM turned dynamic speculation off "
            "for this engine (data parallel ranks must draft alike); every step drafts "
            "%d tokens, which costs throughput when speculation does not pay",
            scheduler.num_spec_tokens,
        )
        return None
    from sparrow_vllm.serving.vllm.scheduler_draft_length import choices_in

    # with FULL decode graphs on Model Runner V2, only the K captured (entry 1's table)
    graphs = vllm_config.compilation_config.cudagraph_mode.has_full_cudagraphs()
    if graphs and vllm_config.use_v2_model_runner:
        return choices_in(scheduler.dynamic_sd_lookup)
    return tuple(range(scheduler.num_spec_tokens + 1))


def _trace_header(scheduler: Any, vllm_config: Any, choices: tuple[int, ...] | None) -> dict[str, Any]:
    """What a step trace's first line says about the engine (step_trace.py)."""
    spec = vllm_config.speculative_config
    if spec is None:
        policy = "none"
    elif choices is not None:
        policy = "adaptive"
    else:
        policy = "table" if scheduler.dynamic_sd_lookup is not None else "fixed"
    method = None if spec is None else (SPARROW_METHOD if is_sparrow_draft(spec) else spec.method)
    return {"method": method, "policy": policy,
            "num_speculative_tokens": scheduler.num_spec_tokens, "choices": None if choices is None else list(choices),
            "runner": "v2" if vllm_config.use_v2_model_runner else "v1"}


# ---- 12. the cache_salt of new requests, for the draft's reusable rows -------------------


def patch_sched_output(module: ModuleType) -> None:
    data_cls = module.NewRequestData
    original = data_cls.from_request.__func__

    @functools.wraps(original)
    def from_request(cls: Any, request: Any, *args: Any, **kwargs: Any) -> Any:
        data = original(cls, request, *args, **kwargs)
        data.cache_salt = request.cache_salt
        return data

    mark(from_request)
    data_cls.cache_salt = None  # NewRequestData not built from a Request (V2's warm-up)
    data_cls.from_request = classmethod(from_request)
