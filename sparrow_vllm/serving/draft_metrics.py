"""What one worker's drafter reports for Sparrow's metrics on /metrics, from host values only.

The runner adapters (serving/vllm/v1_proposer.py, v2_speculator.py) time each draft step and
note its draft length here; `report()` is what the model runner's output then carries to the
scheduler and on to vLLM's stat loggers (serving/vllm/metrics.py, ledger entry 15 in
serving/vllm/patches.py). Nothing here reads the device: the draft cache's numbers are the
host allocator's own counts, a step's time is the host's wall clock on a CPU (where the host
runs the step) and, on CUDA, a pair of CUDA events read once both have completed
(`Event.query()` never waits), so a step still running on the device is reported later.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol, TypedDict

import torch

from sparrow_vllm.serving.text_kv_cache import TextKVCache

logger = logging.getLogger(__name__)

# observations kept between two reports (a report goes out with every model runner output,
# so this bounds only a runner that stops returning outputs)
MAX_PENDING = 4096


class DraftMetricsReport(TypedDict):
    """One worker's numbers since its previous report (what crosses to the API server)."""

    runner: str  # "v1" or "v2" (the adapter's adapter_name)
    adapter: str  # the adapter class, module.Class
    blocks: int  # blocks in the draft cache's pool
    blocks_in_use: int  # blocks not free: held by requests, or kept as reusable rows
    reused_rows: int  # rows handed to requests after prefix-cache hits, ever
    starved_requests: int  # requests that gave up rows for lack of blocks, ever
    drafts_per_step: list[int]  # draft length of each step since the last report
    draft_step_seconds: list[float]  # time of each step whose time is known since then


class Pending:
    """Observations waiting for the next report (oldest first), at most MAX_PENDING: past
    that the oldest are dropped, with one WARNING naming the metric that loses them."""

    def __init__(self, metric: str) -> None:
        self.items: deque[Any] = deque()
        self.metric = metric
        self.dropped = 0

    def append(self, item: Any) -> None:
        self.items.append(item)
        if len(self.items) > MAX_PENDING:
            self.items.popleft()
            self.dropped += 1
            if self.dropped == 1:
                logger.warning("Sparrow metrics: %s observations pile up unreported (over %d steps); the "
                               "oldest are dropped from it", self.metric, MAX_PENDING)

    def take(self) -> list[Any]:
        """Every pending observation, oldest first; none pending after."""
        items = list(self.items)
        self.items.clear()
        return items


class StepTimer(Protocol):
    def start(self) -> Any: ...

    def stop(self, started: Any) -> None: ...

    def finished(self) -> list[float]: ...


class HostStepTimer:
    """Wall-clock time of each step (the step's time where the host runs it: a CPU)."""

    def __init__(self) -> None:
        self._done = Pending("vllm:sparrow_draft_step_seconds")

    def start(self) -> float:
        return time.perf_counter()

    def stop(self, started: float) -> None:
        self._done.append(time.perf_counter() - started)

    def finished(self) -> list[float]:
        return self._done.take()


class CudaEventStepTimer:
    """Device time of each step from a CUDA event before and after it, read in step order
    once the later event has completed; the host never waits for one."""

    def __init__(self, make_event: Callable[[], Any] | None = None) -> None:
        self._make_event = make_event or (lambda: torch.cuda.Event(enable_timing=True))
        self._pending = Pending("vllm:sparrow_draft_step_seconds")  # (start, end) event pairs

    def start(self) -> Any:
        event = self._make_event()
        event.record()
        return event

    def stop(self, started: Any) -> None:
        end = self._make_event()
        end.record()
        self._pending.append((started, end))

    def finished(self) -> list[float]:
        done = []
        pending = self._pending.items
        while pending and pending[0][1].query():
            started, end = pending.popleft()
            done.append(started.elapsed_time(end) / 1000.0)  # milliseconds -> seconds
        return done


def device_step_timer(device: torch.device) -> StepTimer:
    """CUDA events on a CUDA device, the host's clock on a CPU (where the host runs the step).
    Another device gets the host's clock with a WARNING: it times the step's launch there."""
    if device.type == "cuda":
        return CudaEventStepTimer()
    if device.type != "cpu":
        logger.warning("Sparrow metrics: no device timer for %s devices; vllm:sparrow_draft_step_seconds "
                       "records the host's time to launch each draft step, not its time on the device",
                       device.type)
    return HostStepTimer()


class DraftStepMetrics:
    """One adapter's recorder: `start()` / `stop(started, k)` around each draft step,
    `report()` with each model runner output."""

    def __init__(self, cache: TextKVCache, runner: str, adapter: str, device: torch.device,
                 timer: StepTimer | None = None) -> None:
        self.cache = cache
        self.runner, self.adapter = runner, adapter
        self.timer: StepTimer = timer or device_step_timer(device)
        self._drafts = Pending("vllm:sparrow_drafts_per_step")

    def start(self) -> Any:
        return self.timer.start()

    def stop(self, started: Any, num_draft_tokens: int) -> None:
        self.timer.stop(started)
        self._drafts.append(num_draft_tokens)

    def report(self) -> DraftMetricsReport:
        """The cache's counts now and the steps since the previous report (then cleared)."""
        drafts = self._drafts.take()
        cache = self.cache
        return DraftMetricsReport(
            runner=self.runner, adapter=self.adapter,
            blocks=cache.num_blocks, blocks_in_use=cache.num_blocks - cache.free_blocks,
            reused_rows=cache.reused_rows, starved_requests=cache.starved_requests,
            drafts_per_step=drafts, draft_step_seconds=self.timer.finished(),
        )
