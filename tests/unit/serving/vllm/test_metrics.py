"""Sparrow's metrics on /metrics (serving/vllm/metrics.py, ledger entry 15) without an
engine: the definitions follow vLLM's conventions, the Prometheus side records reports as
/metrics shows them, and the report survives every hop between processes (pickle from a
worker, msgspec from the engine core) once the plugin has registered."""

from __future__ import annotations

import functools
import json

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from sparrow_vllm.serving.draft_metrics import DraftMetricsReport
from sparrow_vllm.serving.vllm import metrics as sparrow_metrics
from sparrow_vllm.serving.vllm.metrics import METRICS, REPORT_ATTRIBUTE, SparrowPrometheus
from tests.unit.helpers import last_line_after_registration


def _report(**overrides) -> dict:
    report = {"runner": "v1", "adapter": "sparrow_vllm.serving.vllm.v1_proposer.SparrowProposer", "blocks": 128,
              "blocks_in_use": 5, "reused_rows": 0, "starved_requests": 0, "drafts_per_step": [],
              "draft_step_seconds": []}
    return {**report, **overrides}


def test_names_follow_vllms_conventions():
    names = [m.name for m in METRICS]
    assert len(set(names)) == len(names)
    for metric in METRICS:
        assert metric.name.startswith("vllm:sparrow_"), metric
        # prometheus_client adds _total to counters; vLLM names them without it
        assert not metric.name.endswith("_total"), metric
    report_keys = set(DraftMetricsReport.__required_keys__)
    assert set(_report()) == report_keys  # the reports below are whole ones
    assert {m.report_key for m in METRICS} <= report_keys
    assert sparrow_metrics.exposed_metric_names() >= {
        "vllm:sparrow_draft_cache_blocks", "vllm:sparrow_starved_requests_total",
        "vllm:sparrow_drafts_per_step_bucket", "vllm:sparrow_draft_step_seconds_count",
        "vllm:sparrow_adapter_info"}


def _prometheus(registry: CollectorRegistry, engines=(0,), k: int = 3) -> SparrowPrometheus:
    return SparrowPrometheus(
        functools.partial(Gauge, registry=registry), functools.partial(Counter, registry=registry),
        functools.partial(Histogram, registry=registry),
        {idx: ["toy", str(idx)] for idx in engines}, num_speculative_tokens=k)


def _samples(registry: CollectorRegistry) -> dict[tuple[str, tuple], float]:
    text = generate_latest(registry).decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_reports_are_recorded_as_slash_metrics_shows_them():
    registry = CollectorRegistry()
    prom = _prometheus(registry, engines=(0, 1))
    prom.observe(_report(reused_rows=3, starved_requests=1, drafts_per_step=[3, 0, 2],
                         draft_step_seconds=[0.004, 0.03]), 0)
    prom.observe(_report(blocks_in_use=7, reused_rows=5, starved_requests=1, drafts_per_step=[3]), 0)
    prom.observe(_report(blocks_in_use=2, runner="v2", adapter="x.SparrowSpeculator", reused_rows=4), 1)
    samples = _samples(registry)
    e0 = (("engine", "0"), ("model_name", "toy"))
    e1 = (("engine", "1"), ("model_name", "toy"))
    assert samples[("vllm:sparrow_draft_cache_blocks", e0)] == 128
    assert samples[("vllm:sparrow_draft_cache_blocks_in_use", e0)] == 7  # the latest
    assert samples[("vllm:sparrow_draft_cache_blocks_in_use", e1)] == 2
    # counters arrive as totals since the worker started
    assert samples[("vllm:sparrow_reused_rows_total", e0)] == 5
    assert samples[("vllm:sparrow_starved_requests_total", e0)] == 1
    assert samples[("vllm:sparrow_reused_rows_total", e1)] == 4
    assert samples[("vllm:sparrow_drafts_per_step_count", e0)] == 4
    assert samples[("vllm:sparrow_drafts_per_step_bucket", (*e0[:1], ("le", "0.0"), *e0[1:]))] == 1
    assert samples[("vllm:sparrow_drafts_per_step_bucket", (*e0[:1], ("le", "2.0"), *e0[1:]))] == 2
    assert samples[("vllm:sparrow_drafts_per_step_bucket", (*e0[:1], ("le", "3.0"), *e0[1:]))] == 4
    assert samples[("vllm:sparrow_draft_step_seconds_count", e0)] == 2
    assert abs(samples[("vllm:sparrow_draft_step_seconds_sum", e0)] - 0.034) < 1e-9
    info = {labels: v for (name, labels), v in samples.items() if name == "vllm:sparrow_adapter_info"}
    assert info == {
        (("adapter", "sparrow_vllm.serving.vllm.v1_proposer.SparrowProposer"), *e0[:1], ("model_name", "toy"),
         ("runner", "v1")): 1.0,
        (("adapter", "x.SparrowSpeculator"), *e1[:1], ("model_name", "toy"), ("runner", "v2")): 1.0}
    # every sample name /metrics shows is one the definitions list
    shown = {name for name, _ in samples if name.startswith("vllm:sparrow_")}
    assert shown <= sparrow_metrics.exposed_metric_names() | {"vllm:sparrow_reused_rows_created",
                                                               "vllm:sparrow_starved_requests_created",
                                                               "vllm:sparrow_drafts_per_step_created",
                                                               "vllm:sparrow_draft_step_seconds_created"}


def test_a_restarted_worker_starts_its_totals_over():
    registry = CollectorRegistry()
    prom = _prometheus(registry)
    prom.observe(_report(starved_requests=4), 0)
    prom.observe(_report(starved_requests=1), 0)  # a new engine process counts from 0
    assert _samples(registry)[("vllm:sparrow_starved_requests_total", (("engine", "0"), ("model_name", "toy")))] == 5


class _FakeScheduledOutputs:
    def __init__(self, stats) -> None:
        self.scheduler_stats = stats


def test_the_report_goes_on_the_first_scheduler_stats():
    class Stats:
        pass

    outputs = {0: _FakeScheduledOutputs(None), 1: _FakeScheduledOutputs(Stats())}
    sparrow_metrics.carry_to_scheduler_stats(outputs, _report())
    assert getattr(outputs[1].scheduler_stats, REPORT_ATTRIBUTE) == _report()
    sparrow_metrics.carry_to_scheduler_stats({0: _FakeScheduledOutputs(None)}, _report())  # stats off: dropped


def test_an_output_of_an_unknown_type_is_refused_not_skipped():
    import torch
    from vllm.sequence import IntermediateTensors

    assert sparrow_metrics.model_runner_output_of(IntermediateTensors({"h": torch.zeros(1)})) is None
    with pytest.raises(TypeError, match="sample_tokens returned a dict, which is none of the outputs"):
        sparrow_metrics.model_runner_output_of({"sampled_token_ids": []})


def test_the_report_crosses_every_process_boundary_once_registered():
    """Worker -> engine core: the report on a ModelRunnerOutput (pickled by the multiprocess
    executor, or inside V1's and V2's asynchronous outputs); engine core -> API server: on
    SchedulerStats inside EngineCoreOutputs, through vLLM's own msgspec encoder."""
    code = f"""
import json, pickle
from vllm.v1.engine import EngineCoreOutputs
from vllm.v1.metrics.stats import SchedulerStats
from vllm.v1.outputs import EMPTY_MODEL_RUNNER_OUTPUT, ModelRunnerOutput
from vllm.v1.serial_utils import MsgpackDecoder, MsgpackEncoder
from vllm.v1.worker.gpu.async_utils import AsyncOutput
from vllm.v1.worker.gpu_model_runner import AsyncGPUModelRunnerOutput
from sparrow_vllm.serving.vllm.metrics import REPORT_ATTRIBUTE, model_runner_output_of
report = {_report(drafts_per_step=[3, 1], draft_step_seconds=[0.01])!r}
output = ModelRunnerOutput(req_ids=["a"], req_id_to_index={{"a": 0}})
setattr(output, REPORT_ATTRIBUTE, report)
pickled = getattr(pickle.loads(pickle.dumps(output)), REPORT_ATTRIBUTE)
v2 = AsyncOutput.__new__(AsyncOutput); v2.model_runner_output = output
v1 = AsyncGPUModelRunnerOutput.__new__(AsyncGPUModelRunnerOutput); v1._model_runner_output = output
found = [model_runner_output_of(output) is output, model_runner_output_of(v2) is output,
         model_runner_output_of(v1) is output,
         model_runner_output_of(None) is None, model_runner_output_of(EMPTY_MODEL_RUNNER_OUTPUT) is None]
stats = SchedulerStats(num_running_reqs=1)
setattr(stats, REPORT_ATTRIBUTE, report)
decoded = MsgpackDecoder(EngineCoreOutputs).decode(MsgpackEncoder().encode(EngineCoreOutputs(scheduler_stats=stats)))
plain = MsgpackDecoder(EngineCoreOutputs).decode(MsgpackEncoder().encode(EngineCoreOutputs(scheduler_stats=SchedulerStats())))
print(json.dumps({{"pickled": pickled, "found": found, "decoded": getattr(decoded.scheduler_stats, REPORT_ATTRIBUTE),
                  "running": decoded.scheduler_stats.num_running_reqs,
                  "plain": getattr(plain.scheduler_stats, REPORT_ATTRIBUTE)}}))
"""
    result = json.loads(last_line_after_registration(code))
    expected = _report(drafts_per_step=[3, 1], draft_step_seconds=[0.01])
    assert result == {"pickled": expected, "found": [True] * 5, "decoded": expected, "running": 1, "plain": None}

