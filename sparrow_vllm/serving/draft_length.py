"""DraftLengthPolicy: how many tokens Sparrow drafts each step, chosen from what serving measures.

Speculation pays when the tokens a verify pass accepts are worth more than what verifying
costs. Under load they may not be: with long videos every draft token a request verifies
attends over the whole video, and a step that shares its batch with other requests' prefill
chunks pays for its drafts again. So each scheduled step, the policy picks the number of
drafts K in 0..K_max that the step's requests propose (and the next step verifies) to
maximise the tokens each decoding request gains per second:

    L(K) / T(K)
    L(K) = 1 + sum_{i <= K} a_i      a_i = P(the first i drafts are all accepted), measured
    T(K) = the predicted time of the next step when each decoding request verifies K drafts

T is a linear cost model of a step, fitted online to measured step times (wall clock from
schedule to output, which the engine waits for anyway: no device sync is added):

    T = c0 + c1 * verify tokens + c2 * verify work + c3 * prompt tokens + c4 * prompt work
          + c5 * K + c6 * K * B

verify tokens: the query tokens of verify passes (1 + drafts per decoding request);
prompt tokens: those of prompt chunks; work: query tokens x context summed over requests
(what grows with the video), for each kind apart (a prompt chunk is one batched pass, a
verify pass is per request, and their costs per unit differ); K, K * B: the draft chain run
after the target (B requests draft). The fit is least squares on relative error with
exponential forgetting, so it follows load changes within a few steps, and every
`PROBE_EVERY`-th decision tries a neighbouring K so that the cost of K stays measured.
Acceptance a_i is counted per position from the drafts each step verified, as conditional
rates (see AcceptanceByPosition).

The policy only sizes drafts; the rejection sampler still decides every token, so output is
unchanged (greedy output is identical to the target's alone at any K).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

logger = logging.getLogger(__name__)

FORGET = 0.97  # weight of a step time one step older (memory ~ 33 steps: load changes)
ACCEPTANCE_FORGET = 0.99  # ... of acceptance counts (memory ~ 100 steps: content changes)
PROBE_EVERY = 8  # every 8th decision tries K +- 1
PRIOR_ACCEPTANCE = 0.5  # prior of c_1, the first draft's acceptance, until measured
PRIOR_DRAFTS = 2.0  # weight of each c_i's prior, in drafts
LOG_EVERY_S = 30.0  # at most one INFO line per 30 s about K changes
# warm-up decisions before the cost model is used: K_max, then K_max and 0 alternately
# (both ends measured), a middle value, K_max again
_WARMUP_FRACTIONS = (1.0, 0.0, 1.0, 0.5, 1.0, 0.0)


@dataclass(frozen=True)
class StepShape:
    """What one scheduled step asks of the target, and who drafts after it. Verify passes
    (queries of at most 1 + K_max tokens of requests that sample) and prompt chunks are
    counted apart: per token and per unit of attention work they cost differently (a
    prompt chunk runs as one batched pass, a verify pass per request)."""

    # verify passes: query tokens, and query tokens x context tokens after the step
    decode_tokens: int
    decode_work: float
    # prompt chunks (last ones included): the same
    prefill_tokens: int
    prefill_work: float
    # prompt chunks of requests that do not sample this step (they continue next step)
    continuing_tokens: int
    continuing_work: float
    # requests that sample this step (and so draft after it), and their context tokens
    drafting_requests: int
    drafting_context: int

    def features(self, k: int) -> np.ndarray:
        """Cost-model features of this step when its requests draft k tokens after it."""
        b = self.drafting_requests
        return np.array([1.0, self.decode_tokens / 1e3, self.decode_work / 1e6,
                         self.prefill_tokens / 1e3, self.prefill_work / 1e6, float(k), float(k * b)])

    def next_step(self, k: int) -> StepShape:
        """The next step if nothing is admitted or finished: unfinished prompt chunks
        repeat, each drafting request verifies k drafts (a query of 1 + k tokens)."""
        b, ctx = self.drafting_requests, self.drafting_context
        return StepShape(
            decode_tokens=b * (1 + k), decode_work=float((1 + k) * ctx),
            prefill_tokens=self.continuing_tokens, prefill_work=self.continuing_work,
            continuing_tokens=self.continuing_tokens, continuing_work=self.continuing_work,
            drafting_requests=b, drafting_context=ctx,
        )


def step_shape(
    # (query tokens, context tokens after the step, samples this step) per request
    requests: list[tuple[int, int, bool]],
    # the longest query that is a verify pass: 1 + K_max
    max_verify_tokens: int,
) -> StepShape:
    verify = [(q, c) for q, c, samples in requests if samples and q <= max_verify_tokens]
    chunks = [(q, c) for q, c, samples in requests if not (samples and q <= max_verify_tokens)]
    continuing = [(q, c) for q, c, samples in requests if not samples]
    drafting = [c for _, c, samples in requests if samples]
    return StepShape(
        decode_tokens=sum(q for q, _ in verify), decode_work=float(sum(q * c for q, c in verify)),
        prefill_tokens=sum(q for q, _ in chunks), prefill_work=float(sum(q * c for q, c in chunks)),
        continuing_tokens=sum(q for q, _ in continuing),
        continuing_work=float(sum(q * c for q, c in continuing)),
        drafting_requests=len(drafting), drafting_context=sum(drafting),
    )


class AcceptanceByPosition:
    """a_i = P(the first i drafts are accepted) = c_1 * ... * c_i, from decayed counts of the
    conditional rates c_i = P(draft i accepted | drafts 1..i-1 accepted). A position the
    policy seldom drafts keeps its estimate from the positions before it (the prior of c_i
    is c_{i-1}), so rarely measuring it does not make drafting it look worse; a step that
    drafted fewer than i tokens says nothing about position i."""

    def __init__(self, num_speculative_tokens: int) -> None:
        self.reached = np.zeros(num_speculative_tokens)  # drafts whose position i was verified
        self.accepted = np.zeros(num_speculative_tokens)  # ... and accepted

    def record(self, num_drafts: int, num_accepted: int) -> None:
        self.reached[: min(num_drafts, num_accepted + 1)] += 1
        self.accepted[:num_accepted] += 1

    def decay(self, factor: float) -> None:
        self.reached *= factor
        self.accepted *= factor

    def conditional(self) -> np.ndarray:  # [K_max] c_1..c_K
        rates, prior = [], PRIOR_ACCEPTANCE
        for reached, accepted in zip(self.reached, self.accepted, strict=True):
            prior = (accepted + PRIOR_DRAFTS * prior) / (reached + PRIOR_DRAFTS)
            rates.append(prior)
        return np.array(rates)

    def first_accepted(self) -> np.ndarray:  # [K_max] a_1..a_K, non-increasing
        return np.cumprod(self.conditional())

    def expected_tokens(self) -> np.ndarray:  # [K_max + 1] L(0)..L(K_max)
        return np.concatenate(([1.0], 1.0 + np.cumsum(self.first_accepted())))


class StepCostModel:
    """T = theta . features, least squares on relative error with forgetting."""

    def __init__(self, num_features: int = 7) -> None:
        self.gram = np.zeros((num_features, num_features))
        self.moment = np.zeros(num_features)
        self.observations = 0

    def observe(self, features: np.ndarray, seconds: float) -> None:
        weight = 1.0 / max(seconds, 1e-6) ** 2
        self.gram = FORGET * self.gram + weight * np.outer(features, features)
        self.moment = FORGET * self.moment + weight * seconds * features
        self.observations += 1

    def theta(self) -> np.ndarray:
        ridge = 1e-6 * (np.trace(self.gram) + 1.0)
        return np.linalg.solve(self.gram + ridge * np.eye(len(self.moment)), self.moment)

    def predict(self, features: np.ndarray) -> float:
        return float(features @ self.theta())


@dataclass
class DraftLengthPolicy:
    """Chooses K per scheduled step (see the module docstring)."""

    num_speculative_tokens: int
    clock: Callable[[], float] = time.monotonic
    # the K it may choose (ascending, num_speculative_tokens included); None: every K in 0..num_speculative_tokens.
    # In vLLM, those in the dense schedule of Sparrow's dynamic table: the target's CUDA
    # graphs are captured for them only (see dynamic_table)
    choices: tuple[int, ...] | None = None
    cost: StepCostModel = field(default_factory=StepCostModel)
    decisions: int = 0
    chosen: dict[int, int] = field(default_factory=dict)  # K -> steps that drafted K
    _last_k: int | None = None
    _logged: tuple[float, int | None] = (float("-inf"), None)  # (when, K) of the last INFO line

    def __post_init__(self) -> None:
        if self.num_speculative_tokens < 1:
            raise ValueError(f"DraftLengthPolicy needs num_speculative_tokens >= 1, got {self.num_speculative_tokens}")
        self.choices = tuple(sorted(set(range(self.num_speculative_tokens + 1) if self.choices is None else self.choices)))
        if self.num_speculative_tokens not in self.choices or not 0 <= self.choices[0]:
            raise ValueError(f"DraftLengthPolicy choices {self.choices} must lie in 0..{self.num_speculative_tokens} "
                             f"and hold {self.num_speculative_tokens} (seeded requests draft it)")
        self.acceptance = AcceptanceByPosition(self.num_speculative_tokens)

    def _nearest(self, k: int) -> int:
        return min(self.choices, key=lambda c: (abs(c - k), -c))

    def choose(self, shape: StepShape) -> int:
        """K for the requests that draft after this step."""
        if shape.drafting_requests == 0:
            return self._last_k if self._last_k is not None else self.num_speculative_tokens
        n = self.decisions
        self.decisions += 1
        if n < len(_WARMUP_FRACTIONS):
            k = self._nearest(round(_WARMUP_FRACTIONS[n] * self.num_speculative_tokens))
        else:
            best, rates = self.best(shape)
            k = self._probe(best) if n % PROBE_EVERY == 0 else best
            self._log_change(best, rates)
        self.chosen[k] = self.chosen.get(k, 0) + 1
        self._last_k = k
        return k

    def best(self, shape: StepShape) -> tuple[int, list[float]]:
        """(argmax_K L(K) / T(K), the predicted tokens per second per request for each K)."""
        lengths = self.acceptance.expected_tokens()
        rates = []
        for k in range(self.num_speculative_tokens + 1):
            nxt = shape.next_step(k)
            seconds = self.cost.predict(nxt.features(k))
            rates.append(lengths[k] / seconds if seconds > 0 else 0.0)
        if max(rates) == 0.0:  # no usable fit yet (every prediction <= 0): the configured K
            return self.num_speculative_tokens, rates
        return max(self.choices, key=lambda k: rates[k]), rates

    def observe_step(self, shape: StepShape, k: int, seconds: float) -> None:
        """A finished step: its shape, the K its requests drafted after it, its time."""
        self.cost.observe(shape.features(k), seconds)

    def observe_acceptance(self, drafts: list[tuple[int, int]]) -> None:
        """(drafts verified, drafts accepted) of each request in one finished step."""
        if not drafts:
            return
        self.acceptance.decay(ACCEPTANCE_FORGET)
        for num_drafts, num_accepted in drafts:
            self.acceptance.record(min(num_drafts, self.num_speculative_tokens), min(num_accepted, self.num_speculative_tokens))

    def _probe(self, best: int) -> int:
        """The neighbour of `best` among the choices, alternately above and below."""
        if len(self.choices) == 1:
            return best
        side = 1 if (self.decisions // PROBE_EVERY) % 2 else -1
        i = self.choices.index(best) + side
        if not 0 <= i < len(self.choices):
            i -= 2 * side
        return self.choices[i]

    def _log_change(self, best: int, rates: list[float]) -> None:
        now = self.clock()
        when, logged = self._logged
        if best == logged or now - when < LOG_EVERY_S:
            return
        self._logged = (now, best)
        logger.info(
            "Sparrow draft length now %d of %d (predicted tokens/s per request by K: %s; "
            "acceptance by position: %s)",
            best, self.num_speculative_tokens, ", ".join(f"{r:.1f}" for r in rates),
            ", ".join(f"{a:.2f}" for a in self.acceptance.first_accepted()),
        )
