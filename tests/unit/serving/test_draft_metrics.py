"""What a worker's drafter reports for /metrics (serving/draft_metrics.py): the draft cache's
host counts, each step's draft length and time, cleared with every report; on CUDA the
step times come from events read only once they have completed."""

from __future__ import annotations

import logging

import torch

from sparrow_vllm.serving import draft_metrics
from sparrow_vllm.serving.draft_metrics import (
    MAX_PENDING,
    CudaEventStepTimer,
    DraftStepMetrics,
    HostStepTimer,
)
from sparrow_vllm.serving.text_kv_cache import TextKVCache
from tests.unit.helpers import LoggerRecords


def _cache(blocks: int = 8) -> TextKVCache:
    return TextKVCache(num_layers=1, num_blocks=blocks, block_size=4, num_slots=2, table_width=8, num_kv_heads=1,
                       head_dim=2, dtype=torch.float32, device="cpu")


def test_report_gives_the_cache_counts_and_the_steps_since_the_last_report():
    cache = _cache()
    metrics = DraftStepMetrics(cache, "v2", "pkg.Adapter", torch.device("cpu"))
    assert isinstance(metrics.timer, HostStepTimer)
    slots, _ = cache.prepare_batch(["a"], torch.zeros(1, dtype=torch.int64), [0], set())
    cache.sync(slots, [0])
    cache.reserve(slots, [9], 0, {"a"})  # 9 rows: 3 blocks of 4
    for k in (4, 0, 2):
        started = metrics.start()
        metrics.stop(started, k)
    cache.starved_requests = 2
    report = metrics.report()
    assert {k: v for k, v in report.items() if k != "draft_step_seconds"} == {
        "runner": "v2", "adapter": "pkg.Adapter", "blocks": 8, "blocks_in_use": 3, "reused_rows": 0,
        "starved_requests": 2, "drafts_per_step": [4, 0, 2]}
    assert len(report["draft_step_seconds"]) == 3 and all(t >= 0 for t in report["draft_step_seconds"])
    again = metrics.report()
    assert again["drafts_per_step"] == [] and again["draft_step_seconds"] == []
    cache.release("a", keep_rows=False)
    assert metrics.report()["blocks_in_use"] == 0


def test_observations_between_reports_are_bounded_and_dropping_them_is_said_once():
    metrics = DraftStepMetrics(_cache(), "v1", "x", torch.device("cpu"))
    with LoggerRecords(draft_metrics.__name__, logging.WARNING) as records:
        for k in range(MAX_PENDING + 10):
            metrics.stop(metrics.start(), k)
    report = metrics.report()
    assert len(report["drafts_per_step"]) == len(report["draft_step_seconds"]) == MAX_PENDING
    assert report["drafts_per_step"][0] == 10  # the oldest went
    assert sorted(records.messages) == sorted(
        f"Sparrow metrics: {name} observations pile up unreported (over {MAX_PENDING} steps); the oldest are "
        "dropped from it" for name in ("vllm:sparrow_draft_step_seconds", "vllm:sparrow_drafts_per_step"))


class _Event:
    """A CUDA event stand-in: completes when the test says so; 10 ms between two events."""

    clock = 0

    def __init__(self) -> None:
        self.done = False
        self.at = None

    def record(self) -> None:
        _Event.clock += 10
        self.at = _Event.clock

    def query(self) -> bool:
        return self.done

    def elapsed_time(self, end: _Event) -> float:
        assert self.done and end.done, "elapsed_time on an event still running would wait"
        return float(end.at - self.at)


def test_cuda_step_times_are_read_once_their_events_completed_without_waiting():
    made: list[_Event] = []

    def make() -> _Event:
        made.append(_Event())
        return made[-1]

    timer = CudaEventStepTimer(make)
    for _ in range(3):
        timer.stop(timer.start())
    assert timer.finished() == []  # nothing completed: nothing read, nothing waited for
    for event in made[:4]:  # the first two steps completed
        event.done = True
    assert timer.finished() == [0.01, 0.01]
    assert timer.finished() == []
    made[4].done = made[5].done = True
    assert timer.finished() == [0.01]


def test_a_cuda_device_gets_the_event_timer():
    # the timer is chosen by device type; no event is made before the first step
    metrics = DraftStepMetrics(_cache(), "v2", "x", torch.device("cuda"))
    assert isinstance(metrics.timer, CudaEventStepTimer)


def test_a_device_without_a_timer_gets_the_host_clock_with_a_warning():
    with LoggerRecords(draft_metrics.__name__, logging.WARNING) as records:
        metrics = DraftStepMetrics(_cache(), "v2", "x", torch.device("xpu"))
    assert isinstance(metrics.timer, HostStepTimer)
    assert records.messages == ["Sparrow metrics: no device timer for xpu devices; vllm:sparrow_draft_step_seconds "
                                "records the host's time to launch each draft step, not its time on the device"]
