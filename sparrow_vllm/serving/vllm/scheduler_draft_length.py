"""The scheduler's side of the draft length: vLLM's batch-size table that turns dynamic
speculation on, and `SchedulerDraftLength`, which sets each scheduled step's K through it
(serving/vllm/patches.py, ledger entry 10). The policy itself, free of vLLM, is
serving/draft_length.py."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from sparrow_vllm.serving.draft_length import DraftLengthPolicy, StepShape, step_shape
from sparrow_vllm.serving.step_trace import StepTrace

logger = logging.getLogger(__name__)


def dynamic_table(num_speculative_tokens: int) -> list[tuple[int, int, int]]:
    """The `num_speculative_tokens_per_batch_size` table Sparrow hands vLLM to turn its
    dynamic speculation on (ledger entry 1): batch sizes 1..K+1 get K, 0, K-1, ..., 1, and
    larger batches K.

    vLLM expands it to a dense schedule (one K per batch size up to max_num_seqs) that the
    scheduler reads as each step's default (the policy overrides it every step) and that
    Model Runner V2 captures FULL decode graphs from: one per K in the dense schedule
    (`CudaGraphManager._init_candidates`), with capture sizes up to the widest batch that
    runs it (`VllmConfig._set_cudagraph_sizes`). So every K the policy may choose must
    appear in it. With max_num_seqs <= K there is no room for all: the order keeps both
    ends (K, and 0 where speculation does not pay) and drops the middle ones from the
    smallest up (`choices_in` restricts the policy to what is there). K again from batch
    size K+2 on, so that the widest batches and anything reading the table as a plain
    schedule draft K."""
    values = [num_speculative_tokens, 0, *range(num_speculative_tokens - 1, 0, -1)]
    return [(b, b, k) for b, k in enumerate(values, start=1)] + [
        (num_speculative_tokens + 2, num_speculative_tokens + 2, num_speculative_tokens)]


def choices_in(dense_schedule: list[int]) -> tuple[int, ...]:
    """The K a dense schedule holds (index 0 unused, as vLLM builds it): the K the
    target has FULL decode graphs for on Model Runner V2."""
    return tuple(sorted(set(dense_schedule[1:])))


class SchedulerDraftLength:
    """The scheduler's side of the draft length (serving/vllm/patches.py, ledger entry 10): sizes each
    scheduled step's drafts through vLLM's dynamic speculation field
    (`SchedulerOutput.num_spec_tokens_to_schedule`, which both model runners pass to the
    drafter) when `adaptive`, times each step, counts what each verify pass accepted, and
    writes all of it to `trace` when one is given. Not adaptive (a fixed K, vLLM's
    batch-size table, or no speculation at all), it only observes: K' is what vLLM set."""

    def __init__(self, num_speculative_tokens: int, clock: Callable[[], float] = time.monotonic,
                 choices: tuple[int, ...] | None = None, adaptive: bool = True,
                 trace: StepTrace | None = None) -> None:
        """`choices`: the K the policy may choose (see DraftLengthPolicy). Steps that schedule a request sampling at T > 0 with its own seed draft K_max, as
        with a fixed K, on both runners: such a request's token at a position depends on
        whether and what was drafted at its position, so a K that follows load would change its
        output with the batch it shares. V1 draws from a per-request generator that
        advances with every draw. Model Runner V2 keys draws by (seed, position) but not
        the choice: a drafted position is accepted if log p(d) > log u(seed, pos) and
        otherwise resampled without d, an undrafted one is a plain Gumbel(seed, pos) draw
        (on emulated V2, fixed K = 1 and K = 4 give a seeded request different tokens)."""
        self.num_speculative_tokens = num_speculative_tokens
        self.policy = DraftLengthPolicy(num_speculative_tokens, clock, choices) if adaptive else None
        self.clock = clock
        self.trace = trace
        self._steps = 0
        self._pending: dict[int, tuple[int, StepShape, int, float]] = {}
        self._last_output = float("-inf")
        self._warned_seeded = False

    def on_scheduled(self, scheduler_output: Any, requests: dict[str, Any]) -> None:
        """Before vLLM advances the requests' computed tokens: set this step's K."""
        if scheduler_output.total_num_scheduled_tokens == 0:
            return
        scheduled = [
            (req_id, q, requests[req_id].num_computed_tokens + q,
             requests[req_id].num_computed_tokens + q >= requests[req_id].num_tokens)
            for req_id, q in scheduler_output.num_scheduled_tokens.items()
        ]
        shape = step_shape([r[1:] for r in scheduled], 1 + self.num_speculative_tokens)
        seeded = self.policy is not None and self._any_seeded(scheduler_output, requests)
        if self.policy is None:
            k = scheduler_output.num_spec_tokens_to_schedule or 0
        else:
            k = self.num_speculative_tokens if seeded else self.policy.choose(shape)
            scheduler_output.num_spec_tokens_to_schedule = k
        step = self._steps
        self._steps += 1
        self._pending[id(scheduler_output)] = (step, shape, k, self.clock())
        if self.trace is not None:
            self.trace.scheduled(step, scheduled, k, seeded)

    def _any_seeded(self, scheduler_output: Any, requests: dict[str, Any]) -> bool:
        """Whether a scheduled request samples at T > 0 with its own seed."""
        from vllm.sampling_params import SamplingType

        for req_id in scheduler_output.num_scheduled_tokens:
            params = requests[req_id].sampling_params
            if params is not None and params.sampling_type == SamplingType.RANDOM_SEED:
                if not self._warned_seeded:
                    self._warned_seeded = True
                    logger.warning(
                        "Sparrow adaptive draft length: steps with a seeded request "
                        "(SamplingParams.seed at T > 0) draft K = %d, as with a fixed K: "
                        "on both runners (V1 and Model Runner V2) a seeded request's token "
                        "depends on whether and what was drafted at its position, so a "
                        "varying K would change its tokens with load and batch. Costs what "
                        "adaptive K would save while such requests run",
                        self.num_speculative_tokens,
                    )
                return True
        return False

    def on_output(self, scheduler_output: Any, model_runner_output: Any) -> None:
        """The step's output is back: its time (from when it was scheduled, or from the
        previous output when steps overlap) and each request's accepted drafts."""
        pending = self._pending.pop(id(scheduler_output), None)
        if pending is None:
            return
        now = self.clock()
        step, shape, k, scheduled_at = pending
        seconds = now - max(scheduled_at, self._last_output)
        self._last_output = now
        sampled = model_runner_output.sampled_token_ids
        index = model_runner_output.req_id_to_index
        verified = []
        for req_id, drafts in scheduler_output.scheduled_spec_decode_tokens.items():
            i = index.get(req_id)
            if drafts and sampled and i is not None and len(sampled[i]) > 0:
                verified.append((req_id, len(drafts), len(sampled[i]) - 1))
        if self.policy is not None:
            self.policy.observe_step(shape, k, seconds)
            self.policy.observe_acceptance([(d, a) for _, d, a in verified])
        if self.trace is not None:
            self.trace.finished(step, seconds, verified)
