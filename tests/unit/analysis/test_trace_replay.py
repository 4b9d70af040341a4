"""The offline replay of the adaptive draft length (sparrow_vllm/analysis/trace_replay.py):
a replay reproduces every K' a real SchedulerDraftLength wrote to its step trace, and the
counterfactual simulator ranks policies correctly where the answer is known."""

from __future__ import annotations

import importlib.util
import itertools
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from vllm.sampling_params import SamplingType

from sparrow_vllm.analysis.gpu_cost import gpu_theta
from sparrow_vllm.analysis.measured_cost import MeasuredCost, fit_quality
from sparrow_vllm.analysis.step_cost_fit import fit_step_cost, nonnegative_least_squares
from sparrow_vllm.analysis.trace_replay import (
    FixedK,
    Planned,
    oracle,
    regret,
    replay_decisions,
    simulate,
    steps_of,
)
from sparrow_vllm.serving.draft_length import StepShape, step_shape
from sparrow_vllm.serving.step_trace import StepTrace, read_trace
from sparrow_vllm.serving.vllm.scheduler_draft_length import SchedulerDraftLength

ROOT = Path(__file__).resolve().parents[3]
K_MAX = 4
TRUE_THETA = np.array([0.010, 0.020, 0.004, 0.015, 0.0008, 0.0009, 0.0003])


def fixed_trace(accepted: list[list[int]], seconds: list[float] | None = None, theta: np.ndarray = TRUE_THETA,
                num_speculative_tokens: int = K_MAX, context: int = 500) -> tuple[dict, list[dict]]:
    """A K_max workload trace: per step, the requests that verify (all sample) and what each
    accepted (step 0 has no drafts to verify); times theta . features unless given."""
    header = {"event": "engine", "version": 1, "method": "sparrow", "policy": "fixed",
              "num_speculative_tokens": num_speculative_tokens, "choices": None, "runner": "v2"}
    events = []
    for n, row in enumerate(accepted):
        q = 1 if n == 0 else 1 + num_speculative_tokens
        requests = [[f"r{i}", q, context + 5 * n + i, True] for i in range(len(row))]
        shape = step_shape([(q, c, s) for _, q, c, s in requests], 1 + num_speculative_tokens)
        verified = [] if n == 0 else [[f"r{i}", num_speculative_tokens, a] for i, a in enumerate(row)]
        events.append({"event": "schedule", "step": n, "num_draft_tokens": num_speculative_tokens, "seeded": False, "requests": requests})
        t = float(theta @ shape.features(num_speculative_tokens)) if seconds is None else seconds[n]
        events.append({"event": "output", "step": n, "seconds": t, "verified": verified})
    return header, events


@pytest.mark.parametrize(("acceptance", "best_k"), [(K_MAX, K_MAX), (0, 0)])
def test_simulate_finds_the_known_best_fixed_k(acceptance, best_k):
    """Full acceptance with cheap drafts: K_max is best; none accepted: K = 0 is best (every
    draft costs and gains nothing). The oracle is never worse than a fixed K."""
    trace = fixed_trace([[acceptance] * 3] * 30)
    result = regret(trace, TRUE_THETA)
    assert result["best_fixed_k"] == best_k
    assert result["oracle"] >= max(result["fixed"].values()) * (1 - 1e-12)
    assert result["oracle"] >= result["adaptive"] * (1 - 1e-12)
    # at K = 0 every sampling request gains one token a step
    assert simulate(trace, TRUE_THETA, FixedK(0)).tokens == 3 * 30
    # at K = 2 each verify pass checks 2 drafts (a query of 3 tokens, context 2 shorter)
    # and keeps min(a, 2); the step time is the model's at K' = 2
    at_2 = simulate(trace, TRUE_THETA, FixedK(2))
    assert at_2.tokens == 3 * 30 + 29 * 3 * min(acceptance, 2)
    expected = sum(float(TRUE_THETA @ step_shape([(1 if n == 0 else 3, 500 + 5 * n + i - (0 if n == 0 else 2), True)
                                                  for i in range(3)], 1 + K_MAX).features(2)) for n in range(30))
    assert at_2.seconds == pytest.approx(expected, rel=1e-12)
    assert at_2.k_counts == {2: 30}


@pytest.mark.parametrize("seed", [4, 11, 13, 36, 37])
def test_oracle_equals_brute_force_over_every_k_sequence(seed):
    """1 to 3 requests a step, mixed acceptance, recorded times off the model by a factor
    0.3 to 3: Dinkelbach's per-step choice equals the best of all 4^4 sequences of K' in
    0..3 (these seeds: a single Dinkelbach round, or residual ratios left out of the
    verify terms, fall short of it)."""
    rng = np.random.default_rng(seed)
    accepted = [[int(a) for a in rng.integers(0, 4, size=int(rng.integers(1, 4)))] for _ in range(4)]
    seconds = [float(TRUE_THETA @ np.ones(7)) * f for f in rng.uniform(0.3, 3.0, size=4)]
    trace = fixed_trace(accepted, seconds=seconds, num_speculative_tokens=3)
    brute = max(simulate(trace, TRUE_THETA, Planned(list(ks))).tokens_per_s
                for ks in itertools.product(range(4), repeat=4))
    best = simulate(trace, TRUE_THETA, Planned(oracle(trace, TRUE_THETA))).tokens_per_s
    assert best == pytest.approx(brute, rel=1e-12)
    assert best > max(simulate(trace, TRUE_THETA, FixedK(k)).tokens_per_s for k in range(4))


def test_fit_step_cost_recovers_a_known_theta():
    rng = np.random.default_rng(0)
    traces = []
    for num_speculative_tokens in (0, 1, 2, 4):
        events = []
        for n in range(40):
            k = num_speculative_tokens if rng.random() < 0.8 else 0
            requests = [[f"d{i}", int(rng.integers(1, 2 + num_speculative_tokens)), int(rng.integers(100, 9000)), True]
                        for i in range(int(rng.integers(1, 9)))]
            requests += [[f"p{i}", int(rng.integers(64, 512)), int(rng.integers(512, 9000)), bool(rng.random() < 0.5)]
                         for i in range(int(rng.integers(0, 3)))]
            shape = step_shape([tuple(r[1:]) for r in requests], 1 + num_speculative_tokens)
            events.append({"event": "schedule", "step": n, "num_draft_tokens": k, "seeded": False, "requests": requests})
            events.append({"event": "output", "step": n, "seconds": float(TRUE_THETA @ shape.features(k)),
                           "verified": []})
        traces.append(({"policy": "fixed", "num_speculative_tokens": num_speculative_tokens}, events))
    np.testing.assert_allclose(fit_step_cost(traces), TRUE_THETA, rtol=1e-6)


CPU_MEANS = {0: 0.020, 1: 0.033, 2: 0.044, 3: 0.045}  # seconds a step at K = 0..3: query tiles, not linear


def per_k_traces(means: dict[int, float] | None, noise: float = 0.3, steps: int = 30,
                 seed: int = 0) -> dict[int, tuple[dict, list[dict]]]:
    """none (K = 0) and fixed K = 1..3 traces of 3 decoding requests (acceptance 0..K); step
    seconds means[K] x uniform(1 -+ noise) (means None: TRUE_THETA . features, exactly linear)."""
    rng = np.random.default_rng(seed)
    traces = {}
    for k in range(4):
        accepted = [[int(a) for a in rng.integers(0, k + 1, size=3)] for _ in range(steps)]
        seconds = None if means is None else [means[k] * f for f in rng.uniform(1 - noise, 1 + noise, size=steps)]
        header, events = fixed_trace(accepted, seconds=seconds, num_speculative_tokens=k)
        traces[k] = ({**header, "policy": "none", "method": None} if k == 0 else header, events)
    return traces


def test_measured_cost_reproduces_every_fixed_k_trace_mean():
    """On the K_max = 3 workload, FixedK(k) under MeasuredCost takes m(k) x steps: the mean
    step time measured in the trace at K = k, though 20, 33, 44, 45 ms is far from linear in K
    (a linear fit of a profile with a query-tile jump, 20, 40, 41, 42 ms, is off by more than
    10% on some trace; of 20, 33, 44, 45 ms without noise, by up to 10%)."""
    traces = per_k_traces(CPU_MEANS)
    cost = MeasuredCost.from_traces(list(traces.values()))
    steps = len(steps_of(traces[3][1]))
    for k, (_, events) in traces.items():
        measured = np.mean([s.seconds for s in steps_of(events)])
        assert cost.means[k] == pytest.approx(CPU_MEANS[k], rel=0.1)
        assert simulate(traces[3], cost, FixedK(k)).seconds == pytest.approx(measured * steps, rel=1e-9)
    # without noise every sampling step takes its mean: a K = 2 step verifying K = 3 drafts
    mixed = simulate(traces[3], cost, Planned([3] + [2] * (steps - 1)), keep_noise=False)
    assert mixed.seconds == pytest.approx(cost.means[3] + 0.5 * (cost.means[3] + cost.means[2])
                                          + cost.means[2] * (steps - 2), rel=1e-12)
    exact = per_k_traces({0: 0.020, 1: 0.040, 2: 0.041, 3: 0.042}, noise=0.0)
    quality = fit_quality({f"k{k}": t for k, t in exact.items()}, fit_step_cost(list(exact.values())))
    assert max(q["relative_rms"] for q in quality.values()) > 0.1
    assert quality["k3"]["measured_mean_s"] == pytest.approx(0.042, rel=1e-12)
    with pytest.raises(ValueError, match="no trace at K = \\[2\\]"):
        simulate(traces[3], MeasuredCost({k: m for k, m in cost.means.items() if k != 2}), FixedK(1))
    with pytest.raises(ValueError, match="must lie in 0..3"):  # K' = 4 has no measured m(4) nor drafts to keep
        oracle(traces[3], cost, choices=(0, 3, 4))


def test_fit_quality_of_an_exact_linear_fit_is_zero():
    traces = per_k_traces(None)
    quality = fit_quality({f"k{k}": t for k, t in traces.items()}, fit_step_cost(list(traces.values())))
    assert set(quality) == {"k0", "k1", "k2", "k3"}
    for q in quality.values():
        assert q["relative_rms"] < 1e-6
        assert q["predicted_mean_s"] == pytest.approx(q["measured_mean_s"], rel=1e-6)


@pytest.mark.parametrize("seed", [8, 15, 24, 32, 45])
def test_oracle_under_measured_cost_equals_brute_force(seed):
    """As the linear test above, with MeasuredCost: steps verifying drafts of several earlier
    steps (1 to 3 requests a step), recorded times 0.3 to 3 x m(K_max) (these seeds: a verify
    width taken as the max over a step's passes, not a sum of per-decision terms, falls short)."""
    rng = np.random.default_rng(seed)
    accepted = [[int(a) for a in rng.integers(0, 4, size=int(rng.integers(1, 4)))] for _ in range(4)]
    trace = fixed_trace(accepted, seconds=[0.045 * f for f in rng.uniform(0.3, 3.0, size=4)], num_speculative_tokens=3)
    cost = MeasuredCost(CPU_MEANS)
    brute = max(simulate(trace, cost, Planned(list(ks))).tokens_per_s for ks in itertools.product(range(4), repeat=4))
    best = simulate(trace, cost, Planned(oracle(trace, cost))).tokens_per_s
    assert best == pytest.approx(brute, rel=1e-12)
    assert best >= max(simulate(trace, cost, FixedK(k)).tokens_per_s for k in range(4)) * (1 - 1e-12)


class FakeEngine:
    """Drives a real SchedulerDraftLength the way vLLM's scheduler does: requests arrive,
    prefill in chunks, decode verifying the K' their last step drafted; each step's output
    comes back one step later (asynchronous scheduling) on a deterministic clock."""

    def __init__(self, path: Path, header: dict, adaptive: bool, seed: int = 0) -> None:
        self.num_speculative_tokens = header["num_speculative_tokens"]
        self.now = 0.0
        self.adapter = SchedulerDraftLength(
            self.num_speculative_tokens, clock=lambda: self.now, adaptive=adaptive, trace=StepTrace(path, header),
            choices=tuple(header["choices"]) if adaptive else None)
        self.rng = np.random.default_rng(seed)
        self.requests: dict[str, SimpleNamespace] = {}
        self.drafts: dict[str, int] = {}
        self.arrived = 0

    def _admit(self, step: int) -> None:
        running = len(self.requests)
        target = 1 + (step // 15) % 6  # batches of 1 to 6 requests
        while running < target:
            prompt = int(self.rng.integers(200, 3000))
            seeded = self.arrived % 9 == 4  # a seeded request at T > 0 pins K' = K_max
            self.requests[f"r{self.arrived}"] = SimpleNamespace(
                num_computed_tokens=0, num_tokens=prompt, left=int(self.rng.integers(8, 40)),
                sampling_params=SimpleNamespace(sampling_type=SamplingType.RANDOM_SEED) if seeded else None)
            self.arrived += 1
            running += 1

    def step(self, step: int) -> tuple[SimpleNamespace, SimpleNamespace, float]:
        self._admit(step)
        scheduled = {}
        for req_id, r in self.requests.items():
            prefilling = r.num_tokens - r.num_computed_tokens
            scheduled[req_id] = 1 + self.drafts.get(req_id, 0) if prefilling <= 1 else min(prefilling, 512)
        out = SimpleNamespace(
            total_num_scheduled_tokens=sum(scheduled.values()), num_scheduled_tokens=scheduled,
            scheduled_spec_decode_tokens={i: [-1] * self.drafts[i] for i in scheduled if self.drafts.get(i)},
            num_spec_tokens_to_schedule=self.num_speculative_tokens)
        self.adapter.on_scheduled(out, self.requests)
        k = out.num_spec_tokens_to_schedule
        sampled, index = [], {}
        for req_id, q in scheduled.items():
            r = self.requests[req_id]
            index[req_id] = len(sampled)
            if r.num_computed_tokens + q < r.num_tokens:  # a prompt chunk: samples nothing
                r.num_computed_tokens += q
                sampled.append([])
                continue
            drafts = self.drafts.get(req_id, 0)
            accepted = next((i for i in range(drafts) if self.rng.random() > 0.75), drafts)
            sampled.append([7] * (1 + accepted))
            r.num_computed_tokens = r.num_tokens + accepted
            r.num_tokens += 1 + accepted
            r.left -= 1 + accepted
            self.drafts[req_id] = k
        for req_id in [i for i, r in self.requests.items() if r.left <= 0]:
            del self.requests[req_id], self.drafts[req_id]
        tokens = sum(scheduled.values())
        seconds = (0.004 + 2e-5 * tokens + 0.0007 * k) * float(self.rng.uniform(0.9, 1.1))
        return out, SimpleNamespace(sampled_token_ids=sampled, req_id_to_index=index), seconds

    def run(self, steps: int) -> None:
        waiting = None
        for n in range(steps):
            out, runner_out, seconds = self.step(n)
            if waiting is not None:
                self.now += waiting[2]
                self.adapter.on_output(*waiting[:2])
            waiting = (out, runner_out, seconds)
        self.now += waiting[2]
        self.adapter.on_output(*waiting[:2])
        self.adapter.trace.close()


def record(path: Path, policy: str, num_speculative_tokens: int, seed: int = 0, steps: int = 90) -> Path:
    header = {"method": "sparrow" if num_speculative_tokens else None, "policy": policy, "num_speculative_tokens": num_speculative_tokens,
              "choices": list(range(num_speculative_tokens + 1)) if policy == "adaptive" else None, "runner": "v2"}
    FakeEngine(path, header, adaptive=policy == "adaptive", seed=seed).run(steps)
    return path


def test_replay_reproduces_every_recorded_decision(tmp_path):
    header, events = read_trace(record(tmp_path / "sparrow.jsonl", "adaptive", K_MAX))
    decisions = replay_decisions(header, events)
    assert len(decisions) >= 40
    assert len({recorded for _, recorded, _ in decisions}) >= 3  # the policy did vary K'
    assert [d[1] for d in decisions] == [d[2] for d in decisions]
    assert sum(1 for s in steps_of(events) if s.verified) >= 20
    assert 5 <= sum(1 for s in steps_of(events) if s.seeded) <= len(decisions) - 20
    # one corrupted time (a step 1000x faster than measured) changes later decisions
    outputs = [e for e in events if e["event"] == "output"]
    outputs[10]["seconds"] *= 1e-3
    assert any(recorded != replayed for _, recorded, replayed in replay_decisions(header, events))
    with pytest.raises(ValueError, match="policy is 'fixed'"):
        replay_decisions({**header, "policy": "fixed"}, events)


def test_simulate_refuses_a_workload_not_at_k_max(tmp_path):
    trace = read_trace(record(tmp_path / "sparrow.jsonl", "adaptive", K_MAX, steps=20))
    with pytest.raises(ValueError, match="fixed K = K_max"):
        simulate(trace, TRUE_THETA, FixedK(1))


class Recording(Planned):
    """A planned K' per step that keeps what the simulator tells it after each step."""

    def __init__(self, ks: list[int]) -> None:
        super().__init__(ks)
        self.heard: list[tuple[StepShape, int, float, list[tuple[int, int]]]] = []
        self.calls: list[tuple[str, int]] = []

    def choose(self, index: int, shape: StepShape) -> int:
        self.calls.append(("schedule", index))
        return super().choose(index, shape)

    def observe(self, shape: StepShape, k: int, seconds: float, drafts: list[tuple[int, int]]) -> None:
        self.heard.append((shape, k, seconds, drafts))
        self.calls.append(("output", k))


def test_simulating_the_recorded_k_gives_back_the_recorded_steps(tmp_path):
    """At the workload's own K_max, the simulation is the recording: each step's shape,
    time (with its residual kept) and verified drafts, in the trace's event order; at K' = 0
    no step verifies anything."""
    trace = read_trace(record(tmp_path / "sparrow-k4.jsonl", "fixed", K_MAX, seed=3))
    steps = steps_of(trace[1])
    # fitted as the benchmark fits it: on traces at several K'
    theta = fit_step_cost([trace, read_trace(record(tmp_path / "none.jsonl", "none", 0, seed=1)),
                           read_trace(record(tmp_path / "sparrow-k2.jsonl", "fixed", 2, seed=2))])
    replayed = Recording([K_MAX] * len(steps))
    result = simulate(trace, theta, replayed)
    assert result.seconds == pytest.approx(sum(s.seconds for s in steps), rel=1e-9)
    assert result.tokens == sum(sum(1 for r in s.requests if r[3]) + sum(a for _, a in s.verified.values())
                                for s in steps)
    order = [e["step"] for e in trace[1] if e["event"] == "output"]
    assert [h[0] for h in replayed.heard] == [steps[n].shape(K_MAX) for n in order]
    assert [h[2] for h in replayed.heard] == pytest.approx([steps[n].seconds for n in order], rel=1e-9)
    assert [h[3] for h in replayed.heard] == [list(steps[n].verified.values()) for n in order]
    # a decider is asked and told in the recorded order (step n + 1 scheduled before step n's output)
    assert replayed.calls == [(e["event"], e["step"] if e["event"] == "schedule" else K_MAX) for e in trace[1]]
    assert replayed.calls[:3] == [("schedule", 0), ("schedule", 1), ("output", K_MAX)]
    none = Recording([0] * len(steps))
    simulate(trace, theta, none)
    assert all(h[3] == [] for h in none.heard) and any(h[3] for h in replayed.heard)


def test_gpu_theta_is_positive_and_a_batch_one_decode_step_reads_the_weights():
    theta = gpu_theta()
    assert np.all(theta > 0)
    decode = step_shape([(1, 4000, True)], 1 + K_MAX)
    assert 0.004 < float(theta @ decode.features(0)) < 0.006
    # a K = 4 step at batch 1 adds 4 draft steps of about 0.6 ms (one layer + LM head)
    extra = float(theta @ decode.features(K_MAX)) - float(theta @ decode.features(0))
    assert 0.002 < extra < 0.003


def test_benchmark_writes_json_markdown_and_plot(tmp_path):
    point = tmp_path / "traces" / "v1536-c4"
    record(point / "none.jsonl", "none", 0, seed=1)
    for k in range(1, K_MAX + 1):
        record(point / f"sparrow-k{k}.jsonl", "fixed", k, seed=1 + k)
    record(point / "sparrow.jsonl", "adaptive", K_MAX, seed=9)
    record(tmp_path / "traces" / "sparrow.jsonl", "adaptive", K_MAX, seed=9)  # the whole server's trace
    spec = importlib.util.spec_from_file_location("trace_replay_bench", ROOT / "benchmarks" / "trace_replay.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "result"
    bench.main([str(tmp_path / "traces"), "--out", str(out)])
    result = json.loads(out.with_suffix(".json").read_text())
    row = result["points"]["v1536-c4"]
    [whole] = result["replay"]
    assert whole["matches"] == whole["steps"] >= 40
    assert set(row["regret"]) == {"measured", "fitted", "gpu", "gpu_noisy"}
    assert set(row["fit_quality"]) == {"none", *(f"sparrow-k{k}" for k in range(1, K_MAX + 1))}
    assert row["regret"]["measured"]["fixed"][str(K_MAX)] == pytest.approx(row["regret"]["fitted"]["fixed"][str(K_MAX)])
    text = out.with_suffix(".md").read_text()
    assert "regret vs best fixed" in text and "v1536-c4 linear fit" in text and "measured cost: " in text
    assert out.with_suffix(".png").stat().st_size > 0


def test_nonnegative_least_squares_matches_brute_force_over_active_sets():
    """Every coefficient is a cost: the fit keeps them >= 0, and its optimum is the best
    unconstrained fit over every subset of free coefficients that comes out >= 0."""
    import itertools

    rng = np.random.default_rng(3)
    for _ in range(20):
        a, b = rng.normal(size=(30, 4)), rng.normal(size=30)
        x = nonnegative_least_squares(a, b)
        assert (x >= 0).all()
        best = np.sum(b ** 2)
        for size in range(1, 5):
            for free in itertools.combinations(range(4), size):
                z = np.linalg.lstsq(a[:, free], b, rcond=None)[0]
                if (z >= 0).all():
                    best = min(best, float(np.sum((a[:, free] @ z - b) ** 2)))
        assert np.sum((a @ x - b) ** 2) <= best + 1e-9


def test_measured_cost_leaves_prompt_chunk_steps_as_recorded():
    """A step with a prompt chunk is neither part of m(K) (the same prompts are served in
    fewer steps at a larger K, which would inflate it) nor rescaled with K."""

    def trace(k: int, decode_s: float) -> tuple[dict, list[dict]]:
        header = {"event": "engine", "version": 1, "policy": "fixed" if k else "none", "num_speculative_tokens": k,
                  "choices": None, "method": "sparrow", "runner": "v1"}
        events = [{"event": "schedule", "step": 0, "num_draft_tokens": k, "seeded": False, "requests": [["a", 500, 500, True]]},
                  {"event": "output", "step": 0, "seconds": 1.0, "verified": []}]
        for n in range(1, 4):
            events += [{"event": "schedule", "step": n, "num_draft_tokens": k, "seeded": False,
                        "requests": [["a", 1 + k, 500 + n * (1 + k), True]]},
                       {"event": "output", "step": n, "seconds": decode_s, "verified": [["a", k, 0]] if k else []}]
        return header, events

    traces = [trace(0, 0.010), trace(1, 0.015), trace(2, 0.030)]
    cost = MeasuredCost.from_traces(traces)
    assert cost.means == {0: 0.010, 1: 0.015, 2: 0.030}  # the 1-second prompt step left out
    # at K' = 0 the prompt step keeps its second and each decode step takes m(0); at K' = 1
    # the first decode step verifies the prompt step's K' = 1 drafts: m(1) for all three
    assert simulate(traces[2], cost, FixedK(0)).seconds == pytest.approx(1.0 + 3 * 0.010, rel=1e-9)
    assert simulate(traces[2], cost, FixedK(1)).seconds == pytest.approx(1.0 + 3 * 0.015, rel=1e-9)


def test_a_version_1_trace_reads_with_todays_names(tmp_path):
    """Traces recorded before the draft length had its two names (benchmarks/results'
    traces) read as version 2: max_drafts -> num_speculative_tokens, k -> num_draft_tokens."""
    path = tmp_path / "old.jsonl"
    path.write_text("\n".join(json.dumps(line) for line in (
        {"event": "engine", "version": 1, "method": "sparrow", "policy": "fixed", "max_drafts": 4, "choices": None},
        {"event": "schedule", "step": 0, "k": 3, "seeded": False, "requests": [["a", 1, 10, True]]},
        {"event": "output", "step": 0, "seconds": 0.01, "verified": []},
    )) + "\n")
    header, events = read_trace(path)
    assert header["version"] == 2 and header["num_speculative_tokens"] == 4 and "max_drafts" not in header
    assert events[0]["num_draft_tokens"] == 3 and "k" not in events[0]
