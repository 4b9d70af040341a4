"""DraftLengthPolicy against a simulated server whose true step cost and acceptance are
known: it must find the K that maximises tokens per second per request (0 when speculation
does not pay), and follow a change of load within a few steps."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import numpy as np
import pytest

from sparrow_vllm.serving.draft_length import (
    PROBE_EVERY,
    AcceptanceByPosition,
    DraftLengthPolicy,
    StepCostModel,
    StepShape,
    step_shape,
)
from sparrow_vllm.serving.vllm.scheduler_draft_length import SchedulerDraftLength
from tests.unit.helpers import LoggerRecords

K_MAX = 4
FIRST_ACCEPTED = np.array([0.9, 0.75, 0.6, 0.45])  # P(first i drafts accepted)


def true_seconds(shape: StepShape, k: int, per_token: float, per_attention: float) -> float:
    """A server: fixed cost, linear in tokens, attention work, and the draft chain."""
    tokens = shape.decode_tokens + shape.prefill_tokens
    work = shape.decode_work + 0.3 * shape.prefill_work  # a prompt chunk's attention is cheaper per unit
    return 0.010 + per_token * tokens + per_attention * work + 0.0008 * k + 0.0002 * k * shape.drafting_requests


def true_best(shape: StepShape, per_token: float, per_attention: float) -> int:
    lengths = np.concatenate(([1.0], 1 + np.cumsum(FIRST_ACCEPTED)))
    rates = [lengths[k] / true_seconds(shape.next_step(k), k, per_token, per_attention)
             for k in range(K_MAX + 1)]
    return int(np.argmax(rates))


def decode_shape(batch: int, context: int, verified: int, prefill: int = 0, prefill_context: int = 0) -> StepShape:
    reqs = [(1 + verified, context, True)] * batch
    if prefill:
        reqs.append((prefill, prefill_context, False))
    return step_shape(reqs, 1 + K_MAX)


def serve(policy: DraftLengthPolicy, steps: int, load, rng: np.random.Generator) -> list[tuple[int, int]]:
    """Run `steps` steps; `load(step)` gives (batch, context, prefill, per_token, per_attention).
    Returns (chosen K, best K) per step."""
    history, k_prev = [], K_MAX
    for step in range(steps):
        batch, context, prefill, per_token, per_attention = load(step)
        shape = decode_shape(batch, context, k_prev, prefill, context)
        k = policy.choose(shape)
        seconds = true_seconds(shape, k, per_token, per_attention) * rng.uniform(0.97, 1.03)
        policy.observe_step(shape, k, seconds)
        # drafts verified in this step (the previous step's K), accepted per the true rates
        policy.observe_acceptance([(k_prev, int((rng.random() < FIRST_ACCEPTED[:k_prev]).sum()))
                                   for _ in range(batch)] if k_prev else [])
        history.append((k, true_best(shape, per_token, per_attention)))
        k_prev = k
    return history


SHORT = (1, 600, 0, 2e-4, 1e-9)  # short clip: speculation pays
LONG = (4, 17000, 0, 2e-4, 2e-6)  # 17k-token videos: verifying costs attention over the video


@pytest.mark.parametrize("load", [SHORT, LONG], ids=["short", "long"])
def test_converges_to_the_best_draft_length(load):
    policy = DraftLengthPolicy(K_MAX)
    history = serve(policy, 80, lambda step: load, np.random.default_rng(0))
    best = history[-1][1]
    assert best == (K_MAX if load is SHORT else 0)
    # after warm-up, every decision that is not a probe is the true best
    settled = [k for i, (k, _) in enumerate(history[20:], start=20) if i % PROBE_EVERY != 0]
    assert settled.count(best) >= 0.9 * len(settled)


def test_follows_a_change_of_load_within_a_few_steps():
    policy = DraftLengthPolicy(K_MAX)
    rng = np.random.default_rng(1)
    history = serve(policy, 120, lambda step: SHORT if step < 60 or step >= 90 else LONG, rng)
    assert history[59][1] == K_MAX and history[60][1] == 0
    # the cost model generalises across loads: the switch is immediate
    assert [k for k, _ in history[61:68]].count(0) >= 6
    assert [k for k, _ in history[91:98]].count(K_MAX) >= 6


def test_prefill_in_the_batch_raises_the_value_of_drafting():
    """With another request's prompt chunk in every step, a step costs much more whatever
    K is, so each accepted draft is worth more: the best K goes up."""
    load = (4, 3000, 2048, 2e-4, 2e-8)
    without = true_best(decode_shape(4, 3000, 0), 2e-4, 2e-8)
    with_prefill = true_best(decode_shape(4, 3000, 0, 2048, 3000), 2e-4, 2e-8)
    assert with_prefill > without
    policy = DraftLengthPolicy(K_MAX)
    history = serve(policy, 60, lambda step: load, np.random.default_rng(2))
    assert history[-2][0] == with_prefill


def test_probes_neighbours_every_few_decisions():
    policy = DraftLengthPolicy(K_MAX)
    history = serve(policy, 64, lambda step: SHORT, np.random.default_rng(3))
    probes = [history[i][0] for i in range(16, 64, PROBE_EVERY)]
    assert all(k == K_MAX - 1 for k in probes)


def test_acceptance_counts_only_the_positions_a_step_drafted():
    acc = AcceptanceByPosition(4)
    for _ in range(200):
        acc.record(3, 2)  # three drafts offered, the third rejected
        acc.record(4, 1)  # four offered, the second rejected: positions 3 and 4 not verified
    np.testing.assert_allclose(acc.reached, [400, 400, 200, 0])
    np.testing.assert_allclose(acc.accepted, [400, 200, 0, 0])
    c = acc.conditional()
    assert c[0] == pytest.approx(1.0, abs=0.01) and c[1] == pytest.approx(0.5, abs=0.01)
    assert c[2] < 0.02  # measured: never accepted after the second
    assert c[3] == pytest.approx(c[2])  # never verified: keeps the previous position's rate
    assert acc.expected_tokens()[0] == 1.0
    assert np.all(np.diff(acc.first_accepted()) <= 0)


def test_rarely_drafted_positions_do_not_look_worse_than_measured_ones():
    """Drafting K - 1 for a while must not make the K-th draft look useless: its estimate
    follows the measured conditional rate of the positions before it."""
    acc = AcceptanceByPosition(4)
    for _ in range(100):
        acc.record(3, 3)
    assert acc.first_accepted()[3] > 0.9


def test_cost_model_recovers_a_linear_cost():
    model = StepCostModel(num_features=5)
    theta = np.array([0.01, 0.2, 0.05, 0.001, 0.0005])
    rng = np.random.default_rng(4)
    for _ in range(50):
        f = np.array([1.0, *rng.uniform(0, 5, 4)])
        model.observe(f, float(f @ theta))
    np.testing.assert_allclose(model.theta(), theta, rtol=1e-3, atol=1e-5)


def test_step_shape_counts_verify_passes_and_prompt_chunks_apart():
    # two verify passes, a request's last prompt chunk (it samples), another's middle chunk
    shape = step_shape([(5, 1000, True), (5, 2000, True), (300, 300, True), (512, 512, False)], 5)
    assert (shape.decode_tokens, shape.decode_work) == (10, 15000)
    assert (shape.prefill_tokens, shape.prefill_work) == (812, 300 * 300 + 512 * 512)
    assert shape.drafting_requests == 3 and shape.drafting_context == 3300
    nxt = shape.next_step(1)  # all three verify 1 draft; the middle chunk repeats
    assert (nxt.decode_tokens, nxt.decode_work) == (6, 2 * 3300)
    assert (nxt.prefill_tokens, nxt.prefill_work) == (512, 512 * 512)


def test_an_unusable_fit_keeps_the_configured_k():
    policy = DraftLengthPolicy(K_MAX)
    policy.cost.observe(np.ones(7), -1.0)  # a fit that predicts negative times
    assert policy.best(decode_shape(1, 600, 4))[0] == K_MAX


def test_refuses_a_zero_draft_budget():
    with pytest.raises(ValueError, match="num_speculative_tokens >= 1"):
        DraftLengthPolicy(0)


def test_scheduler_adapter_sets_k_and_counts_accepted_drafts():
    clock = iter(np.arange(0, 100, 0.01)).__next__
    adapter = SchedulerDraftLength(K_MAX, clock=lambda: float(clock()))
    requests = {"a": SimpleNamespace(num_computed_tokens=99, num_tokens=100, sampling_params=None),
                "b": SimpleNamespace(num_computed_tokens=10, num_tokens=100, sampling_params=None)}
    out = SimpleNamespace(total_num_scheduled_tokens=5 + 50, num_scheduled_tokens={"a": 5, "b": 50},
                          scheduled_spec_decode_tokens={"a": [-1] * 4}, num_spec_tokens_to_schedule=K_MAX)
    adapter.on_scheduled(out, requests)
    assert out.num_spec_tokens_to_schedule == K_MAX  # warm-up starts at the configured K
    runner_out = SimpleNamespace(sampled_token_ids=[[1, 2, 3], []], req_id_to_index={"a": 0, "b": 1})
    adapter.on_output(out, runner_out)
    # "a" verified 4 drafts and kept 2 (3 tokens sampled); "b" is mid-prompt
    np.testing.assert_allclose(adapter.policy.acceptance.reached, [1, 1, 1, 0])
    np.testing.assert_allclose(adapter.policy.acceptance.accepted, [1, 1, 0, 0])
    assert adapter.policy.cost.observations == 1


def test_a_seeded_request_pins_k():
    """Both runners' rejection samplers make a seeded request's token depend on whether and
    what was drafted at its position (V1: its generator advances with every draw; Model
    Runner V2: a drafted position is an accept test on u(seed, pos), an undrafted one a
    Gumbel(seed, pos) draw). While a seeded request at T > 0 is scheduled, every step
    drafts K_max (as the scheduler builds the adapter, on either runner), with one WARNING
    naming the cost; greedy and unseeded requests leave the policy choosing."""
    adapter = SchedulerDraftLength(K_MAX)
    from vllm import SamplingParams

    seeded = SamplingParams(seed=7, temperature=1.0)
    unseeded = SamplingParams(temperature=1.0)
    greedy_seeded = SamplingParams(seed=7, temperature=0.0)

    def step(*params: SamplingParams) -> int:
        requests = {f"r{i}": SimpleNamespace(num_computed_tokens=99, num_tokens=100, sampling_params=p)
                    for i, p in enumerate(params)}
        out = SimpleNamespace(total_num_scheduled_tokens=len(params), num_scheduled_tokens=dict.fromkeys(requests, 1),
                              scheduled_spec_decode_tokens={}, num_spec_tokens_to_schedule=K_MAX)
        adapter.on_scheduled(out, requests)
        return out.num_spec_tokens_to_schedule

    with LoggerRecords("sparrow_vllm.serving.vllm.scheduler_draft_length", logging.WARNING) as caught:
        assert step(unseeded) == K_MAX  # warm-up decision 1: K_max
        assert step(greedy_seeded) == 0  # greedy draws nothing: warm-up decision 2, K = 0
        ks = [step(seeded), step(unseeded, seeded), step(seeded, greedy_seeded), step(seeded)]
        resumed = [step(unseeded), step(unseeded)]
    assert ks == [K_MAX] * 4
    # pinned steps are no decisions: the policy resumes at warm-up decisions 3 and 4
    assert resumed == [K_MAX, round(0.5 * K_MAX)]
    warnings = caught.messages
    assert len(warnings) == 1 and "seeded request" in warnings[0] and "Model Runner V2" in warnings[0], warnings
