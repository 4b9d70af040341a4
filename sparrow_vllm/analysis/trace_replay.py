"""Offline replay of Sparrow's adaptive draft length from step traces (serving/step_trace.py).
Two jobs, numpy only (no engine, no vLLM):

- `replay_decisions`: feeds an "adaptive" trace's steps, in file order, to a fresh
  `DraftLengthPolicy` as `SchedulerDraftLength` does; each replayed K' equals the recorded.
- A deterministic counterfactual simulator of draft-length policies on a recorded workload
  with recorded acceptance: a fixed-K trace at K_max, where greedy drafts form a prefix
  chain, so a request that accepted a of d drafts would accept min(a, K') of min(d, K').
  Each step keeps its requests, prompt chunks and context as recorded (a policy that gains
  more tokens does not finish requests sooner: tokens/s is over the same steps); the verify
  query lengths, tokens gained and draft chain follow K'. Step time: with theta (linear),
  theta . StepShape.features(K') of the simulated step x the recorded step's residual ratio
  (recorded seconds / theta . features of the recorded step; `keep_noise=False`: 1); or a
  `StepCost`, e.g. measured_cost.MeasuredCost (measured per-K mean step times, not linear).
  Deciders: `FixedK`, `Adaptive` (a fresh DraftLengthPolicy fed the simulated steps in the
  trace's event order), `Planned` (a K' per step, e.g. `oracle`'s: the best of every step
  in hindsight, exact by Dinkelbach iteration: under either cost the trace's tokens and
  seconds are sums of per-decision terms).

step_cost_fit.fit_step_cost fits theta to recorded traces; gpu_cost.gpu_theta estimates
(does not measure) theta for a Qwen2.5-VL-7B target with a
Sparrow draft on one H100 SXM.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from sparrow_vllm.serving.draft_length import DraftLengthPolicy, StepShape, step_shape

logger = logging.getLogger(__name__)

Trace = tuple[dict[str, Any], list[dict[str, Any]]]  # (header, events) as read_trace returns


def _constant_clock() -> float:
    return 0.0


def _shape(requests: Sequence[Sequence[Any]], num_speculative_tokens: int) -> StepShape:
    """The StepShape of [id, query tokens, context after the step, samples] rows."""
    return step_shape([(q, c, bool(s)) for _, q, c, s in requests], 1 + num_speculative_tokens)


def replay_decisions(header: dict[str, Any], events: list[dict[str, Any]]) -> list[tuple[int, int, int]]:
    """(step, recorded K', replayed K') for every schedule event of an adaptive trace."""
    if header.get("policy") != "adaptive":
        raise ValueError(f"replay_decisions needs a trace of the adaptive draft length; this one's "
                         f"policy is {header.get('policy')!r} (record it with Sparrow's adaptive_draft_length on)")
    num_speculative_tokens = header["num_speculative_tokens"]
    choices = header.get("choices")
    policy = DraftLengthPolicy(num_speculative_tokens, clock=_constant_clock,
                               choices=None if choices is None else tuple(choices))
    pending: dict[int, tuple[StepShape, int]] = {}
    decisions = []
    for event in events:
        if event["event"] == "schedule":
            shape = _shape(event["requests"], num_speculative_tokens)
            k = num_speculative_tokens if event["seeded"] else policy.choose(shape)
            pending[event["step"]] = (shape, k)
            decisions.append((event["step"], event["num_draft_tokens"], k))
        elif event["event"] == "output":
            if event["step"] not in pending:
                raise ValueError(f"step trace: output of step {event['step']} without its schedule event")
            shape, k = pending.pop(event["step"])
            policy.observe_step(shape, k, event["seconds"])
            policy.observe_acceptance([(d, a) for _, d, a in event["verified"]])
        else:
            raise ValueError(f"step trace: unknown event {event.get('event')!r}")
    return decisions


@dataclass
class Step:
    """One scheduled step of a trace, joined with its output (seconds None: no output)."""

    step: int
    requests: list[tuple[str, int, int, bool]]  # [id, query tokens, context after, samples]
    k: int
    seeded: bool
    seconds: float | None = None
    verified: dict[str, tuple[int, int]] = field(default_factory=dict)  # id -> (drafts, accepted)

    def shape(self, num_speculative_tokens: int) -> StepShape:
        return _shape(self.requests, num_speculative_tokens)


def steps_of(events: list[dict[str, Any]]) -> list[Step]:
    """The steps of a trace in schedule order, each with its output's time and verified drafts."""
    steps: dict[int, Step] = {}
    for event in events:
        if event["event"] == "schedule":
            steps[event["step"]] = Step(event["step"], [tuple(r) for r in event["requests"]],
                                        event["num_draft_tokens"], event["seeded"])
        elif event["event"] == "output":
            if event["step"] not in steps:
                raise ValueError(f"step trace: output of step {event['step']} without its schedule event")
            step = steps[event["step"]]
            step.seconds = event["seconds"]
            step.verified = {r: (d, a) for r, d, a in event["verified"]}
    return list(steps.values())


# ---- counterfactual simulation ------------------------------------------------------------

@dataclass
class SimStep:
    """A recorded step of the workload trace, ready to simulate at other K'."""

    requests: list[tuple[int, int, bool]]  # recorded (query tokens, context after, samples)
    # per verify pass: (its row in `requests`, drafts, accepted, step whose K' drafted them)
    verify: list[tuple[int, int, int, int | None]]
    samplers: int  # requests that sample (each gains 1 token, plus its accepted drafts)
    recorded: StepShape
    k: int
    seconds: float

    def shape(self, k_of: Callable[[int | None], int], num_speculative_tokens: int) -> StepShape:
        """The step when each verify pass checks min(d, K' of its source step) drafts."""
        requests = list(self.requests)
        for row, d, _, source in self.verify:
            q, c, samples = requests[row]
            cut = d - min(d, k_of(source))
            requests[row] = (q - cut, c - cut, samples)
        return step_shape(requests, 1 + num_speculative_tokens)

    def drafts(self, k_of: Callable[[int | None], int]) -> list[tuple[int, int]]:
        """(drafts verified, accepted) of each verify pass that checks any."""
        pairs = [(min(d, k_of(s)), min(a, k_of(s))) for _, d, a, s in self.verify]
        return [(d, a) for d, a in pairs if d > 0]

    def tokens(self, k_of: Callable[[int | None], int]) -> int:
        return self.samplers + sum(a for _, a in self.drafts(k_of))


@dataclass
class ReplayPlan:
    """A workload trace ready to simulate at other K': its finished steps in order and the
    order of their schedule/output events. A StepCost's `bind` reads it."""

    num_speculative_tokens: int
    steps: list[SimStep]
    order: list[tuple[str, int]]  # ("schedule" | "output", step index) in file order


def _plan(trace: Trace) -> ReplayPlan:
    """The workload trace's finished steps (up to the first unfinished one), each verify
    pass tied to the step that drafted it (the request's last earlier sampling step)."""
    header, events = trace
    num_speculative_tokens = header["num_speculative_tokens"]
    if header.get("policy") != "fixed":
        raise ValueError(f"simulate needs a fixed-K workload trace at K_max; this one's policy is "
                         f"{header.get('policy')!r} (use the trace of a Sparrow engine at a fixed K = K_max)")
    steps = steps_of(events)
    finished = next((i for i, s in enumerate(steps) if s.seconds is None), len(steps))
    index = {s.step: i for i, s in enumerate(steps[:finished])}
    last_sampled: dict[str, int] = {}
    plan = []
    for i, step in enumerate(steps[:finished]):
        if step.k != num_speculative_tokens and any(r[3] for r in step.requests):
            raise ValueError(f"workload trace step {step.step} drafted K' = {step.k}, not K_max = "
                             f"{num_speculative_tokens}: record the workload with a fixed K = K_max")
        verify = []
        for row, (req, _, _, _) in enumerate(step.requests):
            if req in step.verified:
                d, a = step.verified[req]
                verify.append((row, d, a, last_sampled.get(req)))
        for req, _, _, samples in step.requests:
            if samples:
                last_sampled[req] = i
        plan.append(SimStep([(q, c, bool(s)) for _, q, c, s in step.requests], verify,
                            sum(1 for r in step.requests if r[3]), step.shape(num_speculative_tokens), step.k,
                            float(step.seconds)))
    if not plan:
        raise ValueError("the workload trace has no finished step (was the engine stopped before its first output?)")
    order = [(e["event"], index[e["step"]]) for e in events
             if e["event"] in ("schedule", "output") and e["step"] in index]
    return ReplayPlan(num_speculative_tokens, plan, order)


def _ratios(plan: ReplayPlan, theta: np.ndarray, keep_noise: bool, noise_theta: np.ndarray | None) -> np.ndarray:
    """Per step: recorded seconds / the seconds `noise_theta` (default: theta) gives the
    recorded step; all 1 without noise."""
    if not keep_noise:
        return np.ones(len(plan.steps))
    reference = theta if noise_theta is None else noise_theta
    predicted = np.array([float(reference @ s.recorded.features(s.k)) for s in plan.steps])
    if np.any(predicted <= 0):
        bad = int(np.argmax(predicted <= 0))
        raise ValueError(f"the cost model predicts {predicted[bad]:.3g} s for recorded step {bad}: "
                         "fit it on more varied steps, or simulate with keep_noise=False")
    return np.array([s.seconds for s in plan.steps]) / predicted


StepSeconds = Callable[[int, Callable[[int | None], int], int], float]  # (step, K' of a drafting step, own K') -> s


class StepCost(Protocol):
    """A step-cost model other than linear (e.g. measured_cost.MeasuredCost): the seconds of
    each simulated step of `plan`; tokens and seconds must stay sums of per-decision terms
    (a step's own K' and the K' of the steps whose drafts it verifies) for `oracle`."""

    def bind(self, plan: ReplayPlan, keep_noise: bool, noise_theta: np.ndarray | None) -> StepSeconds: ...


Cost = np.ndarray | StepCost  # theta [7] of the linear model, or another model


def _bind(cost: Cost, plan: ReplayPlan, keep_noise: bool, noise_theta: np.ndarray | None) -> StepSeconds:
    """The simulated seconds of a step of `plan` under `cost` (see the module's docstring)."""
    if not isinstance(cost, np.ndarray):
        return cost.bind(plan, keep_noise, noise_theta)
    ratios = _ratios(plan, cost, keep_noise, noise_theta)
    return lambda i, k_of, k: ratios[i] * float(cost @ plan.steps[i].shape(k_of, plan.num_speculative_tokens).features(k))


class Decider:
    """Chooses K' for each simulated step (`index`: the step's place in the workload
    trace) and hears how each step went (its shape, K', seconds and (drafts, accepted)
    of each verify pass that checked any)."""

    def choose(self, index: int, shape: StepShape) -> int:
        raise NotImplementedError

    def observe(self, shape: StepShape, k: int, seconds: float, drafts: list[tuple[int, int]]) -> None:
        return None


class FixedK(Decider):
    def __init__(self, k: int) -> None:
        self.k = k

    def choose(self, index: int, shape: StepShape) -> int:
        return self.k


class Planned(Decider):
    def __init__(self, ks: list[int]) -> None:
        self.ks = ks  # K' per step of the workload trace

    def choose(self, index: int, shape: StepShape) -> int:
        return self.ks[index]


class Adaptive(Decider):
    """A fresh DraftLengthPolicy, fed what SchedulerDraftLength would feed it."""

    def __init__(self, num_speculative_tokens: int, choices: tuple[int, ...] | None = None) -> None:
        self.policy = DraftLengthPolicy(num_speculative_tokens, clock=_constant_clock, choices=choices)

    def choose(self, index: int, shape: StepShape) -> int:
        return self.policy.choose(shape)

    def observe(self, shape: StepShape, k: int, seconds: float, drafts: list[tuple[int, int]]) -> None:
        self.policy.observe_step(shape, k, seconds)
        self.policy.observe_acceptance(drafts)


@dataclass
class SimResult:
    tokens: int
    seconds: float
    tokens_per_s: float
    k_counts: dict[int, int]  # K' -> steps with sampling requests that drafted it
    ks: list[int]  # K' per step


def _check_seconds(seconds: float, index: int) -> float:
    if not seconds > 0:
        raise ValueError(f"the cost model gives simulated step {index} {seconds:.3g} s: fit it on more "
                         "varied steps (or use gpu_theta)")
    return seconds


def simulate(trace: Trace, cost: Cost, decide: Decider, keep_noise: bool = True,
             noise_theta: np.ndarray | None = None) -> SimResult:
    """Runs `decide` over the workload trace's steps, in the trace's event order.
    `noise_theta` (linear cost only): the model the recorded times' residual ratios are
    taken against (the fitted one when simulating another cost, e.g. gpu_theta's); default theta."""
    plan = _plan(trace)
    step_seconds = _bind(cost, plan, keep_noise, noise_theta)
    n = len(plan.steps)
    ks: list[int] = [-1] * n
    shapes: list[StepShape | None] = [None] * n
    seconds = np.zeros(n)
    tokens = 0
    counts: dict[int, int] = {}

    def k_of(source: int | None) -> int:
        return plan.num_speculative_tokens if source is None else ks[source]

    for kind, i in plan.order:
        step = plan.steps[i]
        if kind == "schedule":
            shape = step.shape(k_of, plan.num_speculative_tokens)
            k = decide.choose(i, shape)
            if not 0 <= k <= plan.num_speculative_tokens:
                raise ValueError(f"a decider chose K' = {k} outside 0..{plan.num_speculative_tokens}")
            ks[i], shapes[i] = k, shape
            seconds[i] = _check_seconds(step_seconds(i, k_of, k), i)
            tokens += step.tokens(k_of)
            if shape.drafting_requests:
                counts[k] = counts.get(k, 0) + 1
        else:
            decide.observe(shapes[i], ks[i], float(seconds[i]), step.drafts(k_of))
    total = float(seconds.sum())
    return SimResult(tokens, total, tokens / total, dict(sorted(counts.items())), ks)


def _decision_tables(plan: ReplayPlan, step_seconds: StepSeconds,
                     choices: tuple[int, ...]) -> tuple[float, float, np.ndarray, np.ndarray]:
    """(tokens, seconds with every K' = 0, and per step and choice the tokens [n, C] and
    seconds [n, C] that K' of that step adds): step n's K' adds its own draft chain and
    the verify work and accepted tokens of the passes that check its drafts."""
    def only(i: int, k: int) -> Callable[[int | None], int]:
        return lambda source: k if source == i else (plan.num_speculative_tokens if source is None else 0)

    n = len(plan.steps)
    zero = only(-1, 0)
    base_s = [step_seconds(m, zero, 0) for m in range(n)]
    base_tokens = sum(s.tokens(zero) for s in plan.steps)
    checks: dict[int, set[int]] = {}  # step -> later steps that verify its drafts
    for m, step in enumerate(plan.steps):
        for _, _, _, source in step.verify:
            if source is not None:
                checks.setdefault(source, set()).add(m)
    d_tokens, d_seconds = np.zeros((n, len(choices))), np.zeros((n, len(choices)))
    for i in range(n):
        for j, k in enumerate(choices):
            k_of = only(i, k)
            d_seconds[i, j] = step_seconds(i, zero, k) - base_s[i]
            for m in checks.get(i, ()):
                d_seconds[i, j] += step_seconds(m, k_of, 0) - base_s[m]
                d_tokens[i, j] += plan.steps[m].tokens(k_of) - plan.steps[m].tokens(zero)
    return float(base_tokens), float(sum(base_s)), d_tokens, d_seconds


def oracle(trace: Trace, cost: Cost, keep_noise: bool = True, noise_theta: np.ndarray | None = None,
           choices: tuple[int, ...] | None = None) -> list[int]:
    """K' per step that maximises the trace's tokens / seconds in hindsight (Dinkelbach:
    lambda <- tokens / seconds, each K' <- argmax tokens(K) - lambda * seconds(K), until
    the choice repeats)."""
    plan = _plan(trace)
    choices = tuple(range(plan.num_speculative_tokens + 1)) if choices is None else tuple(sorted(choices))
    if choices[0] < 0 or choices[-1] > plan.num_speculative_tokens:
        raise ValueError(f"oracle: choices {choices} must lie in 0..{plan.num_speculative_tokens}, the workload's K_max")
    tokens0, seconds0, d_tokens, d_seconds = _decision_tables(plan, _bind(cost, plan, keep_noise, noise_theta),
                                                              choices)
    rows = np.arange(len(plan.steps))
    pick, rate = np.full(len(plan.steps), choices.index(plan.num_speculative_tokens)), 0.0
    for _ in range(1000):
        rate = (tokens0 + d_tokens[rows, pick].sum()) / (seconds0 + d_seconds[rows, pick].sum())
        better = np.argmax(d_tokens - rate * d_seconds, axis=1)
        gain = (d_tokens - rate * d_seconds)[rows, better] - (d_tokens - rate * d_seconds)[rows, pick]
        if np.all(gain <= 1e-12 * max(1.0, tokens0)):
            return [choices[j] for j in pick]
        pick = better
    raise RuntimeError("oracle: Dinkelbach iteration did not converge in 1000 rounds")


def regret(trace: Trace, cost: Cost, keep_noise: bool = True, noise_theta: np.ndarray | None = None,
           choices: tuple[int, ...] | None = None) -> dict[str, Any]:
    """Tokens/s of every fixed K, the best fixed K, adaptive (restricted to `choices`) and
    the per-step oracle on the workload trace; adaptive's regret against the best fixed K
    and the oracle."""
    num_speculative_tokens = trace[0]["num_speculative_tokens"]

    def run(decide: Decider) -> SimResult:
        return simulate(trace, cost, decide, keep_noise, noise_theta)

    fixed = {k: run(FixedK(k)).tokens_per_s for k in range(num_speculative_tokens + 1)}
    best_k = max(fixed, key=lambda k: fixed[k])
    adaptive = run(Adaptive(num_speculative_tokens, choices))
    best = run(Planned(oracle(trace, cost, keep_noise, noise_theta, choices)))
    return {
        "fixed": {str(k): r for k, r in fixed.items()}, "best_fixed_k": best_k, "best_fixed": fixed[best_k],
        "adaptive": adaptive.tokens_per_s, "oracle": best.tokens_per_s,
        "regret_vs_best_fixed": 1 - adaptive.tokens_per_s / fixed[best_k],
        "regret_vs_oracle": 1 - adaptive.tokens_per_s / best.tokens_per_s,
        "adaptive_k_counts": {str(k): c for k, c in adaptive.k_counts.items()},
        "oracle_k_counts": {str(k): c for k, c in best.k_counts.items()},
    }
