"""Sparrow's metrics on vLLM's /metrics, beside vLLM's spec-decode counters.

They travel vLLM's own stat-logging path (ledger entry 15 in patches.py), so they reach
/metrics wherever vLLM's do: one process (VLLM_ENABLE_V1_MULTIPROCESSING=0), the API server
with its engine-core process (`vllm serve`), and tensor parallel workers in their own
processes:

    adapter (worker)    DraftStepMetrics.report(): host counts and the steps since the last
                        report (serving/draft_metrics.py)
    model runner        sample_tokens' ModelRunnerOutput carries it as `sparrow_draft_metrics`
                        (pickled from a worker process; under tensor parallelism the
                        executor returns rank 0's output only, so rank 0 reports)
    scheduler           update_from_output moves it onto the step's SchedulerStats (a field
                        entry 15 adds, so msgspec carries it to the API server)
    API server          PrometheusStatLogger.record hands it to SparrowPrometheus.observe

Names take vLLM's prefix and labels (`model_name`, `engine`), so `unregister_vllm_metrics`
and `LLM.get_metrics()` treat them as vLLM's own. Metrics are recorded where vLLM records
its own (not with --disable-log-stats). `METRICS` is the one list of them (the dashboard in
docs/grafana/ is checked against it).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from sparrow_vllm.serving.draft_metrics import DraftMetricsReport, DraftStepMetrics

logger = logging.getLogger(__name__)

REPORT_ATTRIBUTE = "sparrow_draft_metrics"  # on ModelRunnerOutput and SchedulerStats
LABELNAMES = ("model_name", "engine")  # PrometheusStatLogger's labels
# draft step time buckets, seconds: a GPU step is ~1-10 ms, a 2-core CPU step 2-50 ms
DRAFT_STEP_SECONDS_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.5)

Kind = Literal["gauge", "counter", "histogram", "info"]


@dataclass(frozen=True)
class MetricDef:
    name: str  # as registered; a counter shows on /metrics with `_total`
    kind: Kind
    documentation: str
    report_key: str  # the DraftMetricsReport field it comes from

    def exposed_names(self) -> tuple[str, ...]:
        """The sample names Prometheus exposes for it."""
        if self.kind == "counter":
            return (f"{self.name}_total",)
        if self.kind == "histogram":
            return tuple(f"{self.name}_{suffix}" for suffix in ("bucket", "sum", "count"))
        return (self.name,)


METRICS: tuple[MetricDef, ...] = (
    MetricDef("vllm:sparrow_draft_cache_blocks", "gauge",
              "Blocks in the Sparrow draft cache's pool.", "blocks"),
    MetricDef("vllm:sparrow_draft_cache_blocks_in_use", "gauge",
              "Sparrow draft cache blocks not free (held by requests or kept as reusable rows).",
              "blocks_in_use"),
    MetricDef("vllm:sparrow_reused_rows", "counter",
              "Draft cache rows handed to requests after prefix-cache hits.", "reused_rows"),
    MetricDef("vllm:sparrow_starved_requests", "counter",
              "Requests that gave up draft cache rows for lack of blocks (drafts get worse, "
              "outputs stay exact).", "starved_requests"),
    MetricDef("vllm:sparrow_drafts_per_step", "histogram",
              "Draft tokens per request in each drafting step (the draft length chosen for it).",
              "drafts_per_step"),
    MetricDef("vllm:sparrow_draft_step_seconds", "histogram",
              "Time of one Sparrow draft step (commit the step's rows, draft the chain).",
              "draft_step_seconds"),
    MetricDef("vllm:sparrow_adapter_info", "info",
              "The Sparrow runner adapter that drafts: model runner and adapter class.", "adapter"),
)
INFO_LABELS = ("runner", "adapter")


def exposed_metric_names() -> set[str]:
    return {name for metric in METRICS for name in metric.exposed_names()}


class SparrowPrometheus:
    """Sparrow's metrics of one PrometheusStatLogger, a child per engine as vLLM's own."""

    def __init__(self, gauge_cls: Any, counter_cls: Any, histogram_cls: Any,
                 per_engine_labelvalues: Mapping[int, list[object]], num_speculative_tokens: int) -> None:
        labelnames = list(LABELNAMES)
        self.per_engine_labelvalues = dict(per_engine_labelvalues)
        self._children: dict[str, dict[int, Any]] = {}
        self._info: Any = None
        for metric in METRICS:
            if metric.kind == "info":  # an info metric as vLLM emulates it: a gauge set to 1
                self._info = gauge_cls(name=metric.name, documentation=metric.documentation,
                                       multiprocess_mode="mostrecent", labelnames=labelnames + list(INFO_LABELS))
                continue
            if metric.kind == "gauge":
                parent = gauge_cls(name=metric.name, documentation=metric.documentation,
                                   multiprocess_mode="mostrecent", labelnames=labelnames)
            elif metric.kind == "counter":
                parent = counter_cls(name=metric.name, documentation=metric.documentation, labelnames=labelnames)
            else:
                buckets = (list(range(num_speculative_tokens + 1)) if metric.report_key == "drafts_per_step"
                           else list(DRAFT_STEP_SECONDS_BUCKETS))
                parent = histogram_cls(name=metric.name, documentation=metric.documentation,
                                       labelnames=labelnames, buckets=buckets)
            self._children[metric.report_key] = {
                idx: parent.labels(*values) for idx, values in self.per_engine_labelvalues.items()}
        # counters arrive as totals since the worker started: the last total seen per engine
        self._totals: dict[int, dict[str, int]] = {idx: {} for idx in self.per_engine_labelvalues}
        self._adapter_seen: dict[int, tuple[str, str]] = {}

    def observe(self, report: Mapping[str, Any], engine_idx: int) -> None:
        children = {key: per_engine[engine_idx] for key, per_engine in self._children.items()}
        for key in ("blocks", "blocks_in_use"):
            children[key].set(report[key])
        totals = self._totals[engine_idx]
        for key in ("reused_rows", "starved_requests"):
            last = totals.get(key, 0)
            # a total below the last one: the engine restarted, its counts start over
            children[key].inc(report[key] - last if report[key] >= last else report[key])
            totals[key] = report[key]
        for key in ("drafts_per_step", "draft_step_seconds"):
            for value in report[key]:
                children[key].observe(value)
        adapter = (report["runner"], report["adapter"])
        if self._adapter_seen.get(engine_idx) != adapter:
            self._adapter_seen[engine_idx] = adapter
            self._info.labels(*self.per_engine_labelvalues[engine_idx], *adapter).set(1)


# ---- the path between (called by the patches of entry 15) ---------------------------------


def model_runner_output_of(result: Any) -> Any:
    """The ModelRunnerOutput a runner's sample_tokens returned (itself, or inside the
    asynchronous output of the V1 runner or of Model Runner V2); None for no output, a
    non-last pipeline stage's IntermediateTensors or vLLM's shared empty output; TypeError
    for anything else (a vLLM whose runner returns another type is not supported)."""
    from vllm.sequence import IntermediateTensors
    from vllm.v1.outputs import EMPTY_MODEL_RUNNER_OUTPUT, AsyncModelRunnerOutput, ModelRunnerOutput

    if isinstance(result, ModelRunnerOutput):
        output = result
    elif isinstance(result, AsyncModelRunnerOutput):
        # V1 runner: AsyncGPUModelRunnerOutput._model_runner_output;
        # Model Runner V2: AsyncOutput.model_runner_output
        output = getattr(result, "_model_runner_output", None) or getattr(result, "model_runner_output", None)
        if output is None:
            raise TypeError(f"Sparrow metrics: {type(result).__qualname__} holds no ModelRunnerOutput "
                            "where sparrow-vllm looks for it; this vLLM version is not supported")
    elif result is None or isinstance(result, IntermediateTensors):  # a non-last pipeline stage's
        return None
    else:
        raise TypeError(f"Sparrow metrics: sample_tokens returned a {type(result).__qualname__}, which is "
                        "none of the outputs sparrow-vllm knows (ModelRunnerOutput, AsyncModelRunnerOutput, "
                        "IntermediateTensors, None); this vLLM version is not supported")
    return None if output is EMPTY_MODEL_RUNNER_OUTPUT else output


def attach_report(result: Any, metrics: DraftStepMetrics) -> None:
    """Worker: put the drafter's report on the output sample_tokens returns (the steps
    stay pending when it returns none)."""
    output = model_runner_output_of(result)
    if output is not None:
        setattr(output, REPORT_ATTRIBUTE, metrics.report())


def carry_to_scheduler_stats(engine_core_outputs: Mapping[int, Any], report: DraftMetricsReport) -> None:
    """Scheduler: put a worker's report on the SchedulerStats update_from_output made (none
    when stats are off, and the report goes with nothing)."""
    for outputs in engine_core_outputs.values():
        if outputs.scheduler_stats is not None:
            setattr(outputs.scheduler_stats, REPORT_ATTRIBUTE, report)
            return
