"""Run one vLLM engine job in this process and write its results as JSON.

Usage: python engine_job.py JOB.json RESULT.json

The job names the target, the speculative config (or none), engine settings, prompts
(text, optionally with a synthetic video and/or image), and what to record:
  outputs        greedy output token ids per prompt, per round (every second round in
                 reverse order with alternate_order)
  more_outputs   greedy outputs of further prompt sets, each with its own max_tokens, after
                 the rounds (more_prompt_sets: one target-alone engine serves the
                 references of several tests)
  prefix_cache   vLLM's prefix-cache queries and hits (tokens) of each round
  metrics        vLLM's spec-decode counters
  drafts         every [B, K] draft the runner's drafter returned (record_drafts)
  cached_rows    the Sparrow draft cache after a prefill (inspect_after_prefill)
  sampled_outputs  one extra round at temperature 0.8, and the spec-decode counters of
                 that round alone (sampled_metrics) (sampled_round)
  mixed_greedy_outputs  the greedy requests of a batch that interleaves greedy and T = 1
                 requests (mixed_round)
  distribution   per sampling setting, `samples` sampled outputs of one prompt in one
                 batch, and the acceptance counters of that setting (distribution)
  seeded_outputs the outputs of requests with per-request seeds, twice (seeded_round)
  seeded_alone_batched  seeded requests at T > 0 run alone, then batched with greedy
                 long-video requests, and the draft length of every step that scheduled
                 one (seeded_alone_batched; runs before the rounds, so the policy starts
                 fresh)
  draft_lengths  steps per draft length chosen by the adaptive draft-length policy
  step_inputs    what the target handed the Sparrow drafter at each step, and the
                 prompts' token ids (record_step_inputs)
  late_starts    each time the Sparrow draft cache set a request up past its first row
                 (a prefix-cache hit, or a preempted request resuming), the rows it then
                 held (record_late_starts)
  ranks          per tensor-parallel rank: the Sparrow cache's stats and rows, and its
                 recorded drafts (per_rank)
"""

from __future__ import annotations

import json
import sys

import numpy as np

from sparrow_vllm.serving.vllm.runners import drafting_adapter

VIDEO = "<|vision_start|><|video_pad|><|vision_end|>"
IMAGE = "<|vision_start|><|image_pad|><|vision_end|>"


def synthetic_video(frames: int, size: int, seed: int):
    rng = np.random.default_rng(seed)
    data = rng.integers(0, 255, (frames, size, size, 3), dtype=np.uint8)
    meta = {
        "total_num_frames": frames,
        "fps": 2.0,
        "duration": frames / 2.0,
        "video_backend": "numpy",
        "frames_indices": list(range(frames)),
        "do_sample_frames": False,
    }
    return data, meta


def synthetic_image(size: int, seed: int):
    from PIL import Image

    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8))


def toy_scene_prompt(spec: dict, tokenizer) -> dict:
    """A toy-world question about a rendered scene, in the chat form the target learned."""
    from sparrow_vllm.toy_world.render import render
    from sparrow_vllm.toy_world.scene import sample_scene
    from sparrow_vllm.toy_world.target import prompt_messages, video_metadata

    frames = render(sample_scene(spec["seed"], spec["index"]), spec["frames"])
    text = tokenizer.apply_chat_template(prompt_messages(spec["question"]), add_generation_prompt=True, tokenize=False)
    meta = {**video_metadata(spec["frames"]), "do_sample_frames": False}
    return {"prompt": text, "multi_modal_data": {"video": (frames, meta)}}


def build_prompt(spec: dict, tokenizer=None) -> dict:
    if spec.get("toy_scene"):
        return toy_scene_prompt(spec["toy_scene"], tokenizer)
    if spec.get("chat"):  # a `sparrow-vllm check` prompt: the target's own chat template
        from sparrow_vllm.check.prompts import build_prompt as check_prompt

        return check_prompt(spec["chat"], tokenizer, spec.get("seed", 0))
    media, data = [], {}
    if spec.get("video"):
        media.append(VIDEO)
        data["video"] = synthetic_video(**spec["video"])
    if spec.get("image"):
        media.append(IMAGE)
        data["image"] = synthetic_image(**spec["image"])
    if not media:
        return {"prompt": spec["text"]}
    text = f"<|im_start|> user {' '.join(media)} {spec['text']} <|im_end|> <|im_start|> assistant"
    return {"prompt": text, "multi_modal_data": data}


def _speculative_adapter(worker):
    """The runner's drafter: `drafter` on the V1 runner, `speculator` on Model Runner V2."""
    return drafting_adapter(worker.model_runner)


def _runner_info(worker) -> dict:
    """Which runner ran, and which drafting adapter (proves the path, not just the output)."""
    runner = worker.model_runner
    adapter = _speculative_adapter(worker)
    return {
        "runner": f"{type(runner).__module__}.{type(runner).__name__}",
        "runner_bases": [f"{c.__module__}.{c.__name__}" for c in type(runner).__mro__],
        "adapter": None if adapter is None else f"{type(adapter).__module__}.{type(adapter).__name__}",
        "sparrow_adapter": getattr(adapter, "adapter_name", None),
        "sparrow_steps": getattr(getattr(adapter, "drafter", None), "steps", None),
        # the directory the Sparrow adapter loaded its draft from (a hub id's snapshot)
        "draft_path": _sparrow_draft_path(adapter),
        "draft_cache": (adapter.drafter.cache.stats()
                        if getattr(adapter, "drafter", None) is not None else None),
        **_draft_compilation(adapter),
    }


def _sparrow_draft_path(adapter) -> str | None:
    checkpoint = getattr(getattr(adapter, "setup", None), "checkpoint", None)
    return None if checkpoint is None else str(checkpoint.path)


def _draft_compilation(adapter) -> dict:
    """The draft forward's torch.compile backend and how many graphs dynamo holds for it."""
    drafter = getattr(adapter, "drafter", None)
    if drafter is None:
        return {}
    from torch._dynamo.eval_frame import _debug_get_cache_entry_list

    code = type(drafter)._forward_eager.__code__
    return {"draft_compile_backend": drafter.compile_backend,
            "draft_forward_graphs": len(_debug_get_cache_entry_list(code))}


def _install_draft_recorder(worker):
    drafter = _speculative_adapter(worker)
    drafter.recorded = []
    propose = drafter.propose

    def recording_propose(*args, **kwargs):
        drafts = propose(*args, **kwargs)
        drafter.recorded.append(drafts.tolist())
        return drafts

    drafter.propose = recording_propose
    return True


def _install_step_recorder(worker):
    """Record what the target hands the drafter (StepInputs) at every step."""
    drafter = _speculative_adapter(worker).drafter
    drafter.recorded_inputs = []
    step = drafter.step

    def recording_step(inputs, num_tokens, sample):
        drafter.recorded_inputs.append({
            "token_ids": inputs.token_ids.tolist(), "positions": inputs.positions.tolist(),
            "hidden_states": inputs.hidden_states.float().tolist(), "seq_start": inputs.seq_start.tolist(),
            "query_start": inputs.query_start.tolist(),
        })
        return step(inputs, num_tokens, sample)

    drafter.step = recording_step
    return True


def _install_late_start_recorder(worker):
    """Record each request the draft cache sets up at a target index > 0 (a new slot: a
    new request after a prefix-cache hit, or Model Runner V2 re-sending a preempted one;
    or a rewound slot: V1 resuming a preempted one) and the rows it then holds."""
    cache = _speculative_adapter(worker).drafter.cache
    cache.recorded_late_starts = []
    prepare_batch = cache.prepare_batch

    def recording_prepare_batch(req_ids, seq_start, seq_start_host, resumed):
        new = {r for r in req_ids if cache.slot_of(r) is None}
        out = prepare_batch(req_ids, seq_start, seq_start_host, resumed)
        for req_id, start in zip(req_ids, seq_start_host, strict=True):
            if start > 0 and (req_id in new or req_id in resumed):
                cache.recorded_late_starts.append(
                    {"req_id": req_id, "seq_start": start, "new_slot": req_id in new,
                     "rows": cache.committed(req_id)[0]}
                )
        return out

    cache.prepare_batch = recording_prepare_batch
    return True


def _recorded_late_starts(worker):
    return _speculative_adapter(worker).drafter.cache.recorded_late_starts


def _recorded_step_inputs(worker):
    return _speculative_adapter(worker).drafter.recorded_inputs


def _recorded_drafts(worker):
    return _speculative_adapter(worker).recorded


def _cached_rows(worker):
    return _speculative_adapter(worker).cached_rows()


def draft_lengths_chosen(llm) -> dict[str, int] | None:
    """Steps per draft length the Sparrow scheduler policy chose (None: no policy). The
    engine core runs in this process (VLLM_ENABLE_V1_MULTIPROCESSING=0)."""
    scheduler = llm.llm_engine.engine_core.engine_core.scheduler
    adapter = getattr(scheduler, "sparrow_draft_length", None)
    if adapter is None or adapter.policy is None:  # none, or one that only records a step trace
        return None
    return {str(k): n for k, n in sorted(adapter.policy.chosen.items())}


def _record_seeded_steps(llm) -> list[int]:
    """The draft length (num_spec_tokens_to_schedule) of every step from now on that
    schedules a request sampling at T > 0 with its own seed."""
    from vllm.sampling_params import SamplingType

    scheduler = llm.llm_engine.engine_core.engine_core.scheduler
    schedule, steps = scheduler.schedule, []

    def recording_schedule(*args, **kwargs):
        out = schedule(*args, **kwargs)
        if any(scheduler.requests[r].sampling_params.sampling_type == SamplingType.RANDOM_SEED
               for r in out.num_scheduled_tokens):
            steps.append(out.num_spec_tokens_to_schedule)
        return out

    scheduler.schedule = recording_schedule
    return steps


def seeded_alone_batched(llm, spec: dict) -> dict:
    """Requests with seeds spec["seeds"] at T = spec["temperature"], on prompt
    spec["seeded"], run alone, then again batched (first, so they are admitted and
    scheduled first) with greedy requests of spec["companions"] (long videos): the tokens
    of both runs and the draft length of each step that scheduled a seeded request. The
    alone run is meant to be the engine's first generate call: the draft-length policy then
    starts with its warm-up (K_max, 0, K_max, K_max / 2, ...); the batched run sees a fitted
    policy and other step shapes."""
    from vllm import SamplingParams

    tokenizer = llm.get_tokenizer()
    n = len(spec["seeds"])
    seeded = [build_prompt(spec["seeded"], tokenizer)] * n
    companions = [build_prompt(p, tokenizer) for p in spec["companions"]]
    hot = [SamplingParams(temperature=spec["temperature"], seed=seed, max_tokens=spec["max_tokens"],
                          ignore_eos=True) for seed in spec["seeds"]]
    greedy = SamplingParams(temperature=0.0, max_tokens=spec["max_tokens"], ignore_eos=True)
    steps = _record_seeded_steps(llm)
    alone = llm.generate(seeded, hot, use_tqdm=False)
    alone_ks = list(steps)
    steps.clear()
    batched = llm.generate(seeded + companions, hot + [greedy] * len(companions), use_tqdm=False)[:n]
    return {"alone": [list(g.outputs[0].token_ids) for g in alone],
            "batched": [list(g.outputs[0].token_ids) for g in batched],
            "alone_ks": alone_ks, "batched_ks": list(steps)}


def spec_metrics(llm) -> dict:
    out = {}
    for metric in llm.get_metrics():
        if metric.name.startswith("vllm:spec_decode"):
            out[metric.name] = getattr(metric, "values", None) or getattr(metric, "value", None)
    return out


def sparrow_metrics(llm) -> dict:
    """Sparrow's own metrics (vllm:sparrow_*) as LLM.get_metrics() reads them: the value of a
    gauge or counter, count, sum and buckets of a histogram, the labels of the info metric."""
    out: dict = {}
    for metric in llm.get_metrics():
        if not metric.name.startswith("vllm:sparrow_"):
            continue
        if hasattr(metric, "buckets"):
            out[metric.name] = {"count": metric.count, "sum": metric.sum, "buckets": metric.buckets}
        elif metric.name.endswith("_info"):
            out[metric.name] = metric.labels
        else:
            out[metric.name] = metric.value
    return out


def prefix_cache_counters(llm) -> dict:
    """vLLM's prefix-cache counters (tokens queried and tokens found cached) so far."""
    names = {"vllm:prefix_cache_queries": "queries", "vllm:prefix_cache_hits": "hits"}
    return {names[m.name]: m.value for m in llm.get_metrics() if m.name in names}


def metrics_delta(before: dict, after: dict) -> dict:
    return {name: (after.get(name) or 0) - (before.get(name) or 0) for name in after
            if not isinstance(after[name], list)}


def inspect_after_prefill(llm, prompt: dict, params) -> dict:
    """Prefill one request with the step API, then read the draft cache."""
    engine = llm.llm_engine
    engine.add_request("inspect", prompt, params)
    for _ in range(100):
        outputs = engine.step()
        if any(o.outputs and o.outputs[0].token_ids for o in outputs):
            break
    rows = llm.collective_rpc(_cached_rows)[0]
    engine.abort_request(["inspect"])
    return rows


def _counter(llm, name: str) -> float:
    return spec_metrics(llm).get(name) or 0


def sample_distribution(llm, prompt: dict, spec: dict) -> list[dict]:
    """`spec["samples"]` draws of `prompt` in one batch for each of `spec["settings"]`
    (SamplingParams fields), with the drafts and accepted tokens each setting cost."""
    from vllm import SamplingParams

    out = []
    for setting in spec["settings"]:
        drafts = _counter(llm, "vllm:spec_decode_num_drafts")
        accepted = _counter(llm, "vllm:spec_decode_num_accepted_tokens")
        params = SamplingParams(max_tokens=spec["max_tokens"], ignore_eos=True, **setting)
        generated = llm.generate([prompt] * spec["samples"], params, use_tqdm=False)
        out.append({
            "setting": setting,
            "outputs": [list(g.outputs[0].token_ids) for g in generated],
            "drafts": _counter(llm, "vllm:spec_decode_num_drafts") - drafts,
            "accepted": _counter(llm, "vllm:spec_decode_num_accepted_tokens") - accepted,
        })
    return out


def main(job_path: str, result_path: str) -> None:
    from vllm import LLM, SamplingParams

    job = json.loads(open(job_path).read())
    llm = LLM(
        model=job["target"],
        speculative_config=job.get("speculative_config"),
        dtype="float32",
        seed=job.get("seed", 0),
        disable_log_stats=False,
        gpu_memory_utilization=0.3,
        # eager unless a job asks for vLLM's default compile mode
        **{"enforce_eager": True, **job.get("engine", {})},
    )
    params = SamplingParams(
        temperature=0.0, max_tokens=job.get("max_tokens", 24), ignore_eos=job.get("ignore_eos", True)
    )
    prompts = [build_prompt(p, llm.get_tokenizer()) for p in job["prompts"]]
    result: dict = {}
    if job.get("record_drafts"):
        llm.collective_rpc(_install_draft_recorder)
    if job.get("record_step_inputs"):
        llm.collective_rpc(_install_step_recorder)
    if job.get("record_late_starts"):
        llm.collective_rpc(_install_late_start_recorder)
    if job.get("inspect_after_prefill") is not None:
        spec = job["prompts"][job["inspect_after_prefill"]]
        result["inspected_prompt_ids"] = llm.get_tokenizer()(build_prompt(spec)["prompt"]).input_ids
        result["cached_rows"] = inspect_after_prefill(llm, prompts[job["inspect_after_prefill"]], params)
    if job.get("seeded_alone_batched"):
        result["seeded_alone_batched"] = seeded_alone_batched(llm, job["seeded_alone_batched"])
    result["outputs"], result["prefix_cache"] = [], []
    for round_index in range(job.get("rounds", 1)):
        before = prefix_cache_counters(llm)
        # alternate_order: every second round asks the prompts in reverse order
        ordered = prompts[::-1] if job.get("alternate_order") and round_index % 2 else prompts
        generated = llm.generate(ordered, params, use_tqdm=False)
        result["outputs"].append([list(g.outputs[0].token_ids) for g in generated])
        result["prefix_cache"].append(metrics_delta(before, prefix_cache_counters(llm)))
        result["prompt_lens"] = [len(g.prompt_token_ids) for g in generated]
    if job.get("more_prompt_sets"):
        result["more_outputs"] = {}
        for name, more in job["more_prompt_sets"].items():
            more_params = SamplingParams(temperature=0.0, max_tokens=more["max_tokens"], ignore_eos=True)
            generated = llm.generate([build_prompt(p, llm.get_tokenizer()) for p in more["prompts"]],
                                     more_params, use_tqdm=False)
            result["more_outputs"][name] = [list(g.outputs[0].token_ids) for g in generated]
    if job.get("record_drafts"):
        recorded = llm.collective_rpc(_recorded_drafts)[0]
        result["greedy_draft_steps"] = len(recorded)
        # drafts per request at each step (Model Runner V2 pads with -1 past the drafted ones)
        result["draft_widths"] = sorted({max((sum(t >= 0 for t in row) for row in d), default=0)
                                         for d in recorded})
    if job.get("sampled_round"):
        # no per-request seed: vLLM 0.32 on CPU cannot restore a seeded generator after
        # preemption ("CPU Generator does not use offset"); the engine seed fixes the stream
        # no top-p: Model Runner V2's top-k/top-p Triton kernel does not run in Triton's
        # interpreter (AttributeError inside the kernel), which is how V2 runs on this CPU
        sampled = SamplingParams(temperature=0.8, max_tokens=16, ignore_eos=True)
        before = spec_metrics(llm)
        generated = llm.generate(prompts, sampled, use_tqdm=False)
        result["sampled_outputs"] = [list(g.outputs[0].token_ids) for g in generated]
        result["sampled_metrics"] = metrics_delta(before, spec_metrics(llm))
    if job.get("mixed_round"):
        # greedy requests interleaved with sampled ones (T = 1) in one batch: the greedy
        # ones must still give their greedy-only tokens
        greedy = SamplingParams(temperature=0.0, max_tokens=job.get("max_tokens", 24), ignore_eos=True)
        hot = SamplingParams(temperature=1.0, max_tokens=job.get("max_tokens", 24), ignore_eos=True)
        mixed = [p for prompt in prompts for p in (prompt, prompt)]
        generated = llm.generate(mixed, [greedy, hot] * len(prompts), use_tqdm=False)
        result["mixed_greedy_outputs"] = [list(g.outputs[0].token_ids) for g in generated[::2]]
    if job.get("distribution"):
        spec = job["distribution"]
        result["distribution"] = sample_distribution(llm, build_prompt(spec["prompt"], llm.get_tokenizer()), spec)
    if job.get("seeded_round"):
        # per-request seeds: the same request twice, in batches of different make-up, must
        # give the same tokens
        seeded = [SamplingParams(temperature=1.0, seed=100 + i, max_tokens=job.get("max_tokens", 24),
                                 ignore_eos=True) for i in range(len(prompts))]
        first = llm.generate(prompts, seeded, use_tqdm=False)
        second = llm.generate(prompts[::-1], seeded[::-1], use_tqdm=False)[::-1]
        result["seeded_outputs"] = [[list(g.outputs[0].token_ids) for g in run] for run in (first, second)]
    if job.get("record_step_inputs"):
        result["step_inputs"] = llm.collective_rpc(_recorded_step_inputs)[0]
        result["prompt_token_ids"] = [list(g.prompt_token_ids) for g in generated]
    result["metrics"] = spec_metrics(llm)
    result["sparrow_metrics"] = sparrow_metrics(llm)
    result["draft_lengths"] = draft_lengths_chosen(llm)
    result["runner_info"] = llm.collective_rpc(_runner_info)[0]
    if job.get("record_late_starts"):
        result["late_starts"] = llm.collective_rpc(_recorded_late_starts)[0]
    if job.get("record_drafts"):
        result["drafts"] = llm.collective_rpc(_recorded_drafts)[0]
    if job.get("per_rank"):
        result["ranks"] = llm.collective_rpc(_rank_state)
    if job.get("speculative_config"):
        result["cached_rows_after"] = llm.collective_rpc(
            _cached_rows if job["speculative_config"]["method"] == "sparrow" else _no_rows
        )[0]
    with open(result_path, "w") as f:
        json.dump(result, f)


def _no_rows(worker):
    return {}


def _rank_state(worker) -> dict:
    """One tensor-parallel rank's drafter: its cache's stats and rows, and every draft it
    made (when recorded): ranks must agree on all of it."""
    adapter = _speculative_adapter(worker)
    return {"draft_cache": adapter.drafter.cache.stats(), "cached_rows": adapter.cached_rows(),
            "drafts": getattr(adapter, "recorded", None)}


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
