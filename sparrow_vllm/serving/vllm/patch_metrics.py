"""Ledger entry 15 (patches.py): Sparrow's metrics ride vLLM's stat path to /metrics.

A worker's report leaves with the ModelRunnerOutput (`reporting_sample_tokens`, used by
patch_model_runners.py), the scheduler moves it onto SchedulerStats (patch_scheduler.py),
which gains a field for it here, and the API server's PrometheusStatLogger records it.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from types import ModuleType
from typing import Any

from sparrow_vllm.serving.vllm.metrics import REPORT_ATTRIBUTE, attach_report
from sparrow_vllm.serving.vllm.patch_common import is_sparrow_draft, mark


def reporting_sample_tokens(original: Callable[..., Any], adapter_attribute: str) -> Callable[..., Any]:
    """A runner's sample_tokens that puts its Sparrow adapter's metrics report on the
    ModelRunnerOutput it returns (V1: the `drafter`, V2: the `speculator`)."""

    @functools.wraps(original)
    def sample_tokens(self: Any, grammar_output: Any) -> Any:
        result = original(self, grammar_output)
        metrics = getattr(getattr(self, adapter_attribute, None), "draft_metrics", None)
        if metrics is not None:
            attach_report(result, metrics)
        return result

    mark(sample_tokens)
    return sample_tokens


def patch_metrics_stats(module: ModuleType) -> None:
    """SchedulerStats gains the dataclass field `sparrow_draft_metrics` (default None): msgspec
    encodes and decodes a dataclass's fields only. The class is changed in place: vLLM's
    modules hold it by reference (EngineCoreOutputs' annotation among them)."""
    import dataclasses

    stats_cls = module.SchedulerStats
    if REPORT_ATTRIBUTE in stats_cls.__dataclass_fields__:
        return

    @dataclasses.dataclass
    class _Carrier:
        sparrow_draft_metrics: dict[str, Any] | None = None

    [field] = dataclasses.fields(_Carrier)
    assert field.name == REPORT_ATTRIBUTE
    stats_cls.__dataclass_fields__[REPORT_ATTRIBUTE] = field
    stats_cls.__annotations__[REPORT_ATTRIBUTE] = dict[str, Any] | None
    setattr(stats_cls, REPORT_ATTRIBUTE, None)


def patch_stat_loggers(module: ModuleType) -> None:
    logger_cls = module.PrometheusStatLogger
    original_init = logger_cls.__init__
    original_record = logger_cls.record

    @functools.wraps(original_init)
    def __init__(self: Any, vllm_config: Any, engine_indexes: list[int] | None = None) -> None:
        original_init(self, vllm_config, engine_indexes)
        self.sparrow_prom = None
        spec = vllm_config.speculative_config
        if spec is not None and is_sparrow_draft(spec):
            from sparrow_vllm.serving.vllm.metrics import SparrowPrometheus

            self.sparrow_prom = SparrowPrometheus(
                self._gauge_cls, self._counter_cls, self._histogram_cls, self.per_engine_labelvalues,
                spec.num_speculative_tokens)

    @functools.wraps(original_record)
    def record(self: Any, scheduler_stats: Any, iteration_stats: Any, mm_cache_stats: Any = None,
               engine_idx: int = 0) -> None:
        original_record(self, scheduler_stats, iteration_stats, mm_cache_stats, engine_idx)
        prom = getattr(self, "sparrow_prom", None)
        report = getattr(scheduler_stats, REPORT_ATTRIBUTE, None)
        if prom is not None and report is not None:
            prom.observe(report, engine_idx)

    mark(__init__, record)
    logger_cls.__init__ = __init__
    logger_cls.record = record
