"""Every change sparrow-vllm makes to vLLM 0.32 / 0.33, in one place.

(Over 400 lines on purpose: the house rule keeps every monkeypatch and its ledger entry in
one module, so that what sparrow-vllm changes in vLLM can be read in one place.)

Ledger (what / why / how / what upstream change removes it):

1. EngineArgs.create_speculative_config and EngineArgs.add_cli_args (vllm/engine/arg_utils.py)
   why:  SpeculativeConfig.method is a closed Literal; "sparrow" is rejected (and
         --spec-method's argparse choices are that Literal).
   how:  add "sparrow" to --spec-method's choices. For method "sparrow", given in
         --speculative-config or as vLLM's flags (--spec-method/--spec-model/--spec-tokens,
         which vLLM folds into the dict inside the original, so the wrapper folds them
         itself, by vLLM's rule, and hands the original a dict with the flags cleared):
         resolve a hub id `model` (with `revision`) through the Hugging Face cache as vLLM
         resolves an EAGLE draft's (draft/locate.py; a missing id fails here) and hand vLLM
         the resolved directory, validate the draft against the target (so a bad draft
         fails at start-up, before any worker), take Sparrow's own keys
         (serving_options.py) out of the dict, then
         build the config as method "eagle" and attach the options to it as
         `sparrow_options` (workers refuse a Sparrow draft without them). The draft's
         architecture (SparrowDraftForCausalLM, renamed EagleSparrowDraftForCausalLM by
         EAGLEConfig) marks it as Sparrow in every process; a Sparrow draft given with
         another method ("eagle") is refused. With `adaptive_draft_length` on (the
         default) it turns vLLM's dynamic speculation on with the table
         draft_length.dynamic_table(K): batch sizes 1..K+1 get K, 0, K-1, ..., 1, larger
         ones K, so that the dense schedule vLLM expands it to holds every K in 0..K when
         max_num_seqs > K. Model Runner V2 captures FULL decode graphs for exactly the K in
         it (cudagraph_utils.CudaGraphManager._init_candidates); the old table [(1, 1, K)]
         gave graphs for K only, and every step with fewer drafts ran PIECEWISE.
   gone: when vLLM accepts plugin-registered speculative methods.

2. GPUModelRunner.__init__ (vllm/v1/worker/gpu_model_runner.py; the CPU runner subclasses it)
   why:  the runner builds EagleProposer for method "eagle"; Sparrow needs its own
         proposer (text-only KV cache) and, for an intermediate feature layer, the
         target's auxiliary hidden states.
   how:  after the original __init__, when the draft is Sparrow, replace `drafter` with
         SparrowProposer and set `use_aux_hidden_state_outputs` from the draft config.
   gone: with a proposer registry in the model runner.

3. GPUModelRunner._on_request_state_removed
   why:  the draft cache must free a request's slot when it finishes or is aborted.
   how:  call the original, then `drafter.on_request_finished(req_id)` for Sparrow.
   gone: with a drafter hook for finished requests.

4. GPUModelRunner._update_states
   why:  a preempted request that resumes is recomputed from an earlier position; the
         draft cache must rewind it, and the drafter skips host bookkeeping on steps whose
         batch is unchanged, so it must be told. New requests' prompts (token ids and
         multimodal hashes) key the text rows the draft cache keeps for reuse after a
         prefix-cache hit.
   how:  before the original, pass `preempted_req_ids` (set by the scheduler on every
         step, documented as V2's) to `drafter.on_requests_preempted` (their rows are the
         ones given up first when the draft cache runs out; a live request merely not
         scheduled this step keeps its rows), `scheduled_cached_reqs.resumed_req_ids` to
         `drafter.on_requests_resumed` and `scheduled_new_reqs` to
         `drafter.on_requests_added`.
   gone: with drafter hooks for resumed and new requests.

5. vllm.v1.worker.gpu.model_runner.init_speculator (Model Runner V2; the name the module
   imported from vllm/v1/worker/gpu/spec_decode/__init__.py)
   why:  V2 builds EagleSpeculator for method "eagle", which loads the Sparrow checkpoint
         with vLLM's EAGLE loader (and fails, or would draft wrongly).
   how:  when the draft is Sparrow, return v2_speculator.SparrowSpeculator; otherwise call
         the original.
   gone: with a speculator registry in Model Runner V2.

6. GPUModelRunner.__init__, _remove_request and add_requests (Model Runner V2,
   vllm/v1/worker/gpu/model_runner.py; the CPU V2 runner subclasses it)
   why:  V2 asks the target for auxiliary hidden states only for methods eagle3 / dflash /
         dspark / extract_hidden_states; a Sparrow draft whose feature layer is not the
         final one needs them too. V2 removes finished, aborted and preempted requests
         through _remove_request; the draft cache must free their rows.
   how:  after __init__, set `use_aux_hidden_state_outputs` from the draft config (vLLM
         then picks the layer from `eagle_aux_hidden_state_layer_ids`, as on V1); after
         _remove_request, call `speculator.on_request_finished(req_id)`.
         After add_requests, pass `scheduled_new_reqs` to `speculator.on_requests_added`
         (prompts key the reusable text rows, as in entry 4).
   gone: with a speculator hook for hidden-state needs, new and removed requests.

7. Not a patch: CUDA graphs of the draft. SparrowSpeculator.init_cudagraph_manager /
   capture (V2) and SparrowProposer.initialize_cudagraph_keys (V1) capture nothing.
   What runs instead: whenever vLLM compiles (compilation mode not NONE, so not under
   enforce-eager), the draft forward (draft layers plus the registered attention op
   `sparrow::text_window_attention`) is compiled with vLLM's torch.compile backend
   (inductor), dynamic shapes, its decode shape families at warm-up. A decode step reads
   nothing back from the device (tests/unit/serving/test_decode_sync_free.py) and traces as one
   graph (tests/unit/serving/test_compiled_drafter.py, fullgraph); the host bookkeeping of slots,
   blocks and the row-count mirror runs before it. Eager: prefill chunks (they read their
   row counts back), the cache writes and the sampling between chain forwards.
   Why not captured: a CUDA graph of the decode step needs static input buffers per
   (padded batch, K') and the host bounds of visible rows rounded to buckets; without a
   GPU to verify it on, it is not built (scripts/gpu_check.sh measures what it would save).
   gone: when the decode step is captured per (padded batch, K') (sparrow-vllm change).

8. vllm.utils.cpu_triton_utils._expand_kernel_impl (CPU build of vLLM only)
   why:  on a CPU build without a Triton CPU backend, vLLM replaces the rejection sampler's
         Triton `expand_kernel` with this function, which hands `_ensure_int64(output)` (an
         int64 *copy* of a float output) and int64-truncated values to the C++ op. The real
         output is never written: `expand_batch_to_tokens` returns uninitialised memory,
         so per-request temperatures (and other per-request values) reach the draft
         positions as garbage, and every speculative method (Sparrow, eagle, ...) samples
         from the wrong distribution at T > 0, greedy rows of a mixed batch included.
   how:  replace the function (before the CPU platform registers it) with a PyTorch
         expansion for any dtype that writes into the real output: value b repeated for
         request b's tokens, `replace_from` replaced by `replace_to`. CUDA builds never
         call it; Model Runner V2 has its own sampler and does not use it.
   gone: when vLLM's CPU override writes into the caller's output (upstream fix of
         vllm/utils/cpu_triton_utils.py `_expand_kernel_impl`).

9. vllm.v1.sample.ops.topk_topp_sampler.apply_top_k_only (used without Triton: CPU builds)
   why:  with speculative decoding the V1 runner runs the rejection sampler on every step,
         also on steps where no request has draft tokens (every request's first step);
         it applies top-k to a [0, vocab] tensor of draft positions, and this function
         calls `k.max()` on an empty tensor. Any request with `top_k` (and no `top_p`)
         kills the engine ("max(): Expected reduction dim ...") for every speculative
         method on the CPU build.
   how:  return the logits unchanged when there are no rows; otherwise call the original.
   gone: when vLLM's `apply_top_k_only` returns early on empty input.

10. Scheduler.__init__, _update_after_schedule and update_from_output
    (vllm/v1/core/sched/scheduler.py; AsyncScheduler subclasses it)
   why:  vLLM can change the draft length per step (dynamic speculation:
         `SchedulerOutput.num_spec_tokens_to_schedule`, which both model runners pass to
         the drafter, and no padding of decode queries to K + 1), but only from a fixed
         batch-size table (`num_speculative_tokens_per_batch_size`). Sparrow sizes each
         step from measured acceptance and step cost (serving/draft_length.py).
   how:  entry 1 turns vLLM's dynamic speculation on with draft_length.dynamic_table(K)
         when `adaptive_draft_length` is on (the default); after __init__, a scheduler whose
         draft is Sparrow gets a SchedulerDraftLength, which on Model Runner V2 with FULL
         graphs chooses among the K in the dense schedule only (those with FULL graphs:
         all of 0..K unless max_num_seqs <= K, which an INFO line names), elsewhere among
         all of 0..K; before _update_after_schedule it
         sets the step's num_spec_tokens_to_schedule; before update_from_output it
         records the step's time and accepted drafts. When vLLM has turned dynamic
         speculation off (data parallel), it logs a WARNING and drafts K every step. On
         both runners, steps with a seeded request at T > 0 draft K (WARNING once), so
         that its output does not change with load and batch: its token at a position
         depends on whether and what was drafted there (V1: per-request generators
         advance with every draw; V2: accept test on u(seed, pos) at a drafted position,
         a Gumbel(seed, pos) draw at an undrafted one). On the V1 runner with CUDA graphs
         entry 13 turns the adaptive draft length off unless it was asked for. With
         SPARROW_STEP_TRACE set, any engine's scheduler (no speculation, eagle, fixed K,
         table) gets one that only observes, and every step goes to a trace file
         (serving/step_trace.py) for the offline replay of the policy.
   gone: when vLLM's scheduler takes a pluggable draft-length policy (and vLLM's
         per-step stats carry what the trace records).

11. GPUModelRunner._input_fits_in_drafter (V1 model runner)
   why:  V1 skips the drafter for the whole batch on a step where any request is within K
         tokens of max_model_len (EAGLE's own KV cache has no slots past it). The Sparrow
         draft keeps no vLLM KV cache (its positions are clamped below max_model_len), but
         a skipped step leaves a gap in every request's text rows. The drafter detects
         such gaps anyway (TextCacheLayout.note_holes: rows before a gap are dropped, counted
         and logged); this patch keeps them from happening.
   how:  for a Sparrow drafter, the input fits whenever the runner built drafter
         metadata; otherwise call the original.
   gone: when vLLM asks the proposer whether it can draft near max_model_len.

12. NewRequestData.from_request (vllm/v1/core/sched/output.py; both model runners)
   why:  vLLM's prefix cache keys KV blocks by the request's cache_salt (and LoRA adapter),
         so requests with other salts never share them; the draft's reusable text rows
         (text_row_reuse.py) must follow the same rule, but NewRequestData, all the model
         runner learns of a new request, has the LoRA request and not the salt.
   how:  after the original, set `cache_salt` on the NewRequestData from the scheduler's
         Request (it reaches the workers with the rest: SchedulerOutput is pickled);
         `NewRequestData.cache_salt = None` for those built otherwise (V2's warm-up).
   gone: when NewRequestData carries cache_salt.

13. VllmConfig._maybe_override_dynamic_sd_cudagraph_mode (vllm/config/vllm.py)
   why:  on the V1 runner, vLLM forces the whole engine to PIECEWISE CUDA graphs while
         dynamic speculation is on (the adaptive draft length); estimated 10-47% slower
         decode steps (vLLM PRs #42885, #25444), more than the adaptive draft length gained
         over a fixed K in Sparrow's serving benchmark (docs/serving.md, "Draft length under load").
   how:  before the original, for a Sparrow draft on CUDA/ROCm with FULL graphs on and
         the V1 runner: when `adaptive_draft_length` was left at its default, drop entry
         1's table and turn the option off (every step drafts K, FULL graphs kept; one
         WARNING names `"adaptive_draft_length": true` to turn it on); when it was asked
         for, keep it (vLLM goes PIECEWISE; one WARNING gives the cost). Model Runner V2
         (vLLM's default on CUDA) is left alone.
   gone: when the V1 runner captures FULL graphs per draft length (as V2 does).

14. vllm.v1.worker.gpu.cudagraph_utils.CudaGraphManager._init_candidates (Model Runner V2)
   why:  dispatch looks a uniform decode batch of B requests x q tokens up among the graphs
         of the smallest captured size >= B * q only; with several draft lengths captured
         (entry 1) that size often holds other lengths' graphs only, and the step ran
         PIECEWISE although a larger FULL graph of its length exists (max_num_seqs 256,
         K = 4: 58 of the 100 batch sizes a K = 4 graph holds got one).
   how:  after the original, for a Sparrow draft with dynamic speculation on, add to each
         token count's candidates the smallest FULL graph of every captured query length
         at least that large (not already there), ahead of the PIECEWISE ones; every
         (B, K) that a captured graph holds then replays a FULL graph (padded to it).
   gone: when vLLM's dispatch searches past the smallest size for a graph of the batch's
         query length.

15. Sparrow's metrics on /metrics: GPUModelRunner.sample_tokens (V1 runner and Model Runner V2),
    Scheduler.update_from_output (entry 10's wrapper), SchedulerStats (vllm/v1/metrics/stats.py),
    PrometheusStatLogger.__init__ and record (vllm/v1/metrics/loggers.py)
   why:  the numbers live in each worker's drafter (draft cache, draft steps), /metrics is
         served by the API server process, and vLLM's stat path carries only its own
         fields: ModelRunnerOutput and SchedulerStats have no place for a plugin's stats,
         and msgspec drops attributes that are not dataclass fields on the way out of the
         engine-core process. vLLM's stat-logger plugins (`vllm.stat_logger_plugins`) are
         loaded by AsyncLLM only (not by LLM(...)) and turn stats on for every engine of the
         environment whatever --disable-log-stats says; Prometheus' multiprocess mode is set
         up by `vllm serve` only with api_server_count > 1.
   how:  after sample_tokens, the adapter's DraftStepMetrics.report() (host values only,
         serving/draft_metrics.py) goes on the returned ModelRunnerOutput as
         `sparrow_draft_metrics` (pickled from a worker process; under tensor parallelism
         the executor returns rank 0's output, so rank 0 reports); update_from_output moves
         it onto the SchedulerStats it made; SchedulerStats gains the dataclass field
         `sparrow_draft_metrics` (default None) so msgspec carries it to the API server;
         PrometheusStatLogger builds Sparrow's metrics beside vLLM's for a Sparrow engine,
         with vLLM's labels, and records each step's report (serving/vllm/metrics.py).
   gone: when vLLM's ModelRunnerOutput and SchedulerStats carry plugin stats, or its
         stat-logger plugins load for LLM(...) too and can read worker-side values.

Any path not listed here that reaches the draft (another runner, a renamed factory) ends in
SparrowDraftForCausalLM's constructor with a vLLM config, which raises
errors.UnknownRunnerError naming the fix: a Sparrow checkpoint never runs as plain EAGLE.

Patches are applied when their module is first imported (an import hook), so register()
itself imports nothing heavy, and applying twice is a no-op.
"""

from __future__ import annotations

import functools
import importlib.abc
import importlib.machinery
import logging
import sys
from collections.abc import Callable
from types import ModuleType
from typing import Any

import torch

from sparrow_vllm.serving.step_trace import StepTrace
from sparrow_vllm.serving.vllm.metrics import (
    REPORT_ATTRIBUTE,
    attach_report,
    carry_to_scheduler_stats,
)

logger = logging.getLogger(__name__)

SPARROW_METHOD = "sparrow"
SPARROW_ARCHITECTURES = ("SparrowDraftForCausalLM", "EagleSparrowDraftForCausalLM")
_MARK = "__sparrow_patched__"


def is_sparrow_draft(speculative_config: Any) -> bool:
    """True when vLLM's (eagle) speculative config carries a Sparrow draft."""
    draft = getattr(speculative_config, "draft_model_config", None)
    archs = getattr(draft, "architectures", None) or []
    return any(a in SPARROW_ARCHITECTURES for a in archs)


# ---- 1. configuration boundary -----------------------------------------------------------


def _target_supports_aux_hidden_states(target_model_config: Any) -> bool:
    from vllm.model_executor.models.interfaces import supports_eagle3

    model_cls, _ = target_model_config.registry.resolve_model_cls(
        target_model_config.architectures, model_config=target_model_config
    )
    return supports_eagle3(model_cls)


# vLLM's flag form of the speculative config: (EngineArgs field, key in the dict, flag)
_SPEC_FLAGS = (
    ("spec_method", "method", "--spec-method"),
    ("spec_model", "model", "--spec-model"),
    ("spec_tokens", "num_speculative_tokens", "--spec-tokens"),
)


def _merged_speculative_config(engine_args: Any) -> dict[str, Any]:
    """The user's speculative config dict with the flag form folded in, as vLLM folds it
    (a flag and the same key in the dict are mutually exclusive)."""
    from sparrow_vllm.errors import SparrowConfigError

    merged = {k.replace("-", "_"): v for k, v in (engine_args.speculative_config or {}).items()}
    for field, key, flag in _SPEC_FLAGS:
        value = getattr(engine_args, field, None)
        if value is None:
            continue
        if key in merged:
            raise SparrowConfigError(
                f"{flag} and --speculative-config['{key}'] are mutually exclusive; give {key} once"
            )
        merged[key] = value
    return merged


def _refuse_sparrow_draft_under_another_method(created: Any) -> None:
    if is_sparrow_draft(created):
        from sparrow_vllm.errors import SparrowConfigError

        raise SparrowConfigError(
            f"{created.draft_model_config.model} is a Sparrow draft, given with method "
            f'"{created.method}": it would run without Sparrow\'s start-up checks and settings. '
            'Use "method": "sparrow" in --speculative-config (or --spec-method sparrow)'
        )


def _accept_sparrow_spec_method(parser: Any) -> None:
    """Add "sparrow" to the choices vLLM's parser gives --spec-method (its Literal)."""
    action = parser._option_string_actions.get("--spec-method")
    if action is not None and action.choices is not None and SPARROW_METHOD not in action.choices:
        action.choices = [*action.choices, SPARROW_METHOD]


def _patch_arg_utils(module: ModuleType) -> None:
    engine_args = module.EngineArgs
    original = engine_args.create_speculative_config
    original_add_cli_args = engine_args.add_cli_args

    @functools.wraps(original_add_cli_args)
    def add_cli_args(parser: Any) -> Any:
        parser = original_add_cli_args(parser)
        _accept_sparrow_spec_method(parser)
        return parser

    @functools.wraps(original)
    def create_speculative_config(self: Any, target_model_config: Any, target_parallel_config: Any):
        flag = getattr(self, "spec_method", None)
        given = flag if flag is not None else (self.speculative_config or {}).get("method")
        if given != SPARROW_METHOD:
            created = original(self, target_model_config, target_parallel_config)
            _refuse_sparrow_draft_under_another_method(created)
            return created
        from sparrow_vllm.draft.checkpoint import check_draft_for_target
        from sparrow_vllm.draft.locate import locate_draft
        from sparrow_vllm.errors import SparrowConfigError
        from sparrow_vllm.families import resolve_family

        spec = _merged_speculative_config(self)
        if not spec.get("model"):
            raise SparrowConfigError(
                'method "sparrow" needs a draft: --speculative-config '
                '\'{"method":"sparrow","model":"<draft dir>","num_speculative_tokens":4}\' '
                "or --spec-method sparrow --spec-model <draft dir> --spec-tokens 4"
            )
        # a hub id resolves through the Hugging Face cache as vLLM resolves an EAGLE
        # draft's; vLLM and every worker then get the resolved directory
        draft_dir = locate_draft(spec["model"], spec.get("revision"),
                                 cache_dir=getattr(self, "download_dir", None))
        family = resolve_family(target_model_config.hf_config)
        check_draft_for_target(
            draft_dir, family, _target_supports_aux_hidden_states(target_model_config)
        )
        logger.info("Sparrow target family: %s", family.describe())
        from sparrow_vllm.serving.serving_options import (
            OPTIONS_ATTRIBUTE,
            SparrowServingOptions,
        )

        rest, options = SparrowServingOptions.pop_from(spec)
        saved = {field: getattr(self, field) for field, _, _ in _SPEC_FLAGS if hasattr(self, field)}
        saved["speculative_config"] = self.speculative_config
        for field in saved:
            setattr(self, field, None)
        # the directory is the revision's snapshot: vLLM gets no revision to resolve again
        rest = {k: v for k, v in rest.items() if k != "revision"}
        self.speculative_config = {**rest, "model": str(draft_dir), "method": "eagle"}
        logger.info("Sparrow speculative decoding with draft %s", spec["model"]
                    + ("" if str(draft_dir) == str(spec["model"]) else f" ({draft_dir})"))
        try:
            created = original(self, target_model_config, target_parallel_config)
        finally:
            for field, value in saved.items():
                setattr(self, field, value)
        setattr(created, OPTIONS_ATTRIBUTE, options)
        if options.adaptive_draft_length:
            if created.num_speculative_tokens_per_batch_size is not None:
                raise SparrowConfigError(
                    "adaptive_draft_length and num_speculative_tokens_per_batch_size both "
                    "choose the draft length; pass \"adaptive_draft_length\": false in "
                    "--speculative-config to use your batch-size schedule"
                )
            # vLLM's dynamic speculation (entry 10 sizes each step within K); a table whose
            # dense schedule holds every K, so that V2 captures FULL graphs for each
            from sparrow_vllm.serving.vllm.scheduler_draft_length import dynamic_table

            created.num_speculative_tokens_per_batch_size = dynamic_table(created.num_speculative_tokens)
        return created

    for fn in (add_cli_args, create_speculative_config):
        setattr(fn, _MARK, True)
    engine_args.add_cli_args = staticmethod(add_cli_args)
    engine_args.create_speculative_config = create_speculative_config


# ---- 2, 3 and 4. V1 model runner ---------------------------------------------------------------


def _patch_model_runner(module: ModuleType) -> None:
    runner_cls = module.GPUModelRunner
    original_init = runner_cls.__init__
    original_removed = runner_cls._on_request_state_removed
    original_update = runner_cls._update_states
    original_fits = runner_cls._input_fits_in_drafter
    original_sample = runner_cls.sample_tokens

    @functools.wraps(original_init)
    def __init__(self: Any, vllm_config: Any, device: Any) -> None:
        original_init(self, vllm_config, device)
        if getattr(self, "drafter", None) is not None and is_sparrow_draft(self.speculative_config):
            from sparrow_vllm.serving.vllm.v1_proposer import SparrowProposer

            self.drafter = SparrowProposer(vllm_config, self.device, self)
            self.use_aux_hidden_state_outputs = (
                self.drafter.checkpoint.sparrow.aux_layer_index() is not None
            )

    @functools.wraps(original_removed)
    def _on_request_state_removed(self: Any, req_id: str, req_state: Any) -> None:
        original_removed(self, req_id, req_state)
        finished = getattr(getattr(self, "drafter", None), "on_request_finished", None)
        if finished is not None:
            finished(req_id)

    @functools.wraps(original_update)
    def _update_states(self: Any, scheduler_output: Any) -> Any:
        drafter = getattr(self, "drafter", None)
        resumed = getattr(drafter, "on_requests_resumed", None)
        if resumed is not None:
            drafter.on_requests_preempted(set(scheduler_output.preempted_req_ids or ()))
            resumed(set(scheduler_output.scheduled_cached_reqs.resumed_req_ids))
            drafter.on_requests_added(scheduler_output.scheduled_new_reqs)
        return original_update(self, scheduler_output)

    @functools.wraps(original_fits)
    def _input_fits_in_drafter(self: Any, common_attn_metadata: Any) -> bool:
        if getattr(getattr(self, "drafter", None), "adapter_name", None) == "v1":
            return common_attn_metadata is not None  # entry 11: Sparrow drafts every step
        return original_fits(self, common_attn_metadata)

    sample_tokens = _reporting_sample_tokens(original_sample, "drafter")
    for fn in (__init__, _on_request_state_removed, _update_states, _input_fits_in_drafter):
        setattr(fn, _MARK, True)
    runner_cls.__init__ = __init__
    runner_cls._on_request_state_removed = _on_request_state_removed
    runner_cls._update_states = _update_states
    runner_cls._input_fits_in_drafter = _input_fits_in_drafter
    runner_cls.sample_tokens = sample_tokens


# ---- 5 and 6. Model Runner V2 ---------------------------------------------------------


def _patch_v2_model_runner(module: ModuleType) -> None:
    original_factory = module.init_speculator
    runner_cls = module.GPUModelRunner
    original_init = runner_cls.__init__
    original_remove = runner_cls._remove_request
    original_add = runner_cls.add_requests
    original_sample = runner_cls.sample_tokens

    @functools.wraps(original_factory)
    def init_speculator(vllm_config: Any, device: Any, req_states: Any) -> Any:
        if is_sparrow_draft(vllm_config.speculative_config):
            from sparrow_vllm.serving.vllm.v2_speculator import SparrowSpeculator

            return SparrowSpeculator(vllm_config, device)
        return original_factory(vllm_config, device, req_states)

    @functools.wraps(original_init)
    def __init__(self: Any, vllm_config: Any, device: Any) -> None:
        original_init(self, vllm_config, device)
        speculator = getattr(self, "speculator", None)
        setup = getattr(speculator, "setup", None)
        if setup is not None and setup.aux_layer_index is not None:
            self.use_aux_hidden_state_outputs = True

    @functools.wraps(original_remove)
    def _remove_request(self: Any, req_id: str) -> bool:
        removed = original_remove(self, req_id)
        finished = getattr(getattr(self, "speculator", None), "on_request_finished", None)
        if finished is not None:
            finished(req_id)
        return removed

    @functools.wraps(original_add)
    def add_requests(self: Any, scheduler_output: Any) -> None:
        original_add(self, scheduler_output)
        added = getattr(getattr(self, "speculator", None), "on_requests_added", None)
        if added is not None:
            added(scheduler_output.scheduled_new_reqs)

    for fn in (init_speculator, __init__, _remove_request, add_requests):
        setattr(fn, _MARK, True)
    module.init_speculator = init_speculator
    runner_cls.__init__ = __init__
    runner_cls._remove_request = _remove_request
    runner_cls.add_requests = add_requests
    runner_cls.sample_tokens = _reporting_sample_tokens(original_sample, "speculator")


# ---- 10. scheduler: the draft length of each step --------------------------------------


def _patch_scheduler(module: ModuleType) -> None:
    scheduler_cls = module.Scheduler
    original_init = scheduler_cls.__init__
    original_after = scheduler_cls._update_after_schedule
    original_update = scheduler_cls.update_from_output

    @functools.wraps(original_init)
    def __init__(self: Any, vllm_config: Any, *args: Any, **kwargs: Any) -> None:
        original_init(self, vllm_config, *args, **kwargs)
        self.sparrow_draft_length = None
        from sparrow_vllm.serving.vllm.scheduler_draft_length import SchedulerDraftLength

        spec = vllm_config.speculative_config
        choices = _sparrow_adaptive_choices(self, vllm_config)
        trace = StepTrace.from_env(_trace_header(self, vllm_config, choices))
        if choices is not None or trace is not None:
            self.sparrow_draft_length = SchedulerDraftLength(
                self.num_spec_tokens, choices=choices, adaptive=choices is not None, trace=trace)
        if spec is None or not is_sparrow_draft(spec) or choices is None:
            return
        if choices == tuple(range(self.num_spec_tokens + 1)):
            logger.info("Sparrow draft length: adaptive, 0..%d drafts per step", self.num_spec_tokens)
        else:
            logger.info(
                "Sparrow draft length: adaptive, one of %s drafts per step: max_num_seqs=%d "
                "leaves vLLM's dynamic table room for %d draft lengths, and the target's FULL "
                "CUDA graphs are captured for those only (max_num_seqs >= %d gives all of "
                "0..%d)",
                list(choices), len(self.dynamic_sd_lookup) - 1, len(choices),
                self.num_spec_tokens + 1, self.num_spec_tokens,
            )

    @functools.wraps(original_after)
    def _update_after_schedule(self: Any, scheduler_output: Any) -> None:
        policy = getattr(self, "sparrow_draft_length", None)
        if policy is not None:
            policy.on_scheduled(scheduler_output, self.requests)
        original_after(self, scheduler_output)

    @functools.wraps(original_update)
    def update_from_output(self: Any, scheduler_output: Any, model_runner_output: Any) -> Any:
        policy = getattr(self, "sparrow_draft_length", None)
        if policy is not None:
            policy.on_output(scheduler_output, model_runner_output)
        report = getattr(model_runner_output, REPORT_ATTRIBUTE, None)  # entry 15
        outputs = original_update(self, scheduler_output, model_runner_output)
        if report is not None:
            carry_to_scheduler_stats(outputs, report)
        return outputs

    for fn in (__init__, _update_after_schedule, update_from_output):
        setattr(fn, _MARK, True)
    scheduler_cls.__init__ = __init__
    scheduler_cls._update_after_schedule = _update_after_schedule
    scheduler_cls.update_from_output = update_from_output


def _sparrow_adaptive_choices(scheduler: Any, vllm_config: Any) -> tuple[int, ...] | None:
    """The draft lengths Sparrow's adaptive policy may choose for this scheduler's engine,
    or None where it does not choose (not Sparrow, adaptive off, or vLLM turned dynamic
    speculation off: a WARNING says so)."""
    spec = vllm_config.speculative_config
    if spec is None or not is_sparrow_draft(spec):
        return None
    from sparrow_vllm.serving.serving_options import SparrowServingOptions

    if not SparrowServingOptions.of(spec).adaptive_draft_length:
        logger.info("Sparrow draft length: fixed (adaptive_draft_length is false)")
        return None
    if scheduler.dynamic_sd_lookup is None:
        logger.warning(
            "Sparrow adaptive draft length is off: vLLM turned dynamic speculation off "
            "for this engine (data parallel ranks must draft alike); every step drafts "
            "%d tokens, which costs throughput when speculation does not pay",
            scheduler.num_spec_tokens,
        )
        return None
    from sparrow_vllm.serving.vllm.scheduler_draft_length import choices_in

    # with FULL decode graphs on Model Runner V2, only the K captured (entry 1's table)
    graphs = vllm_config.compilation_config.cudagraph_mode.has_full_cudagraphs()
    if graphs and vllm_config.use_v2_model_runner:
        return choices_in(scheduler.dynamic_sd_lookup)
    return tuple(range(scheduler.num_spec_tokens + 1))


def _trace_header(scheduler: Any, vllm_config: Any, choices: tuple[int, ...] | None) -> dict[str, Any]:
    """What a step trace's first line says about the engine (step_trace.py)."""
    spec = vllm_config.speculative_config
    if spec is None:
        policy = "none"
    elif choices is not None:
        policy = "adaptive"
    else:
        policy = "table" if scheduler.dynamic_sd_lookup is not None else "fixed"
    method = None if spec is None else (SPARROW_METHOD if is_sparrow_draft(spec) else spec.method)
    return {"method": method, "policy": policy,
            "num_speculative_tokens": scheduler.num_spec_tokens, "choices": None if choices is None else list(choices),
            "runner": "v2" if vllm_config.use_v2_model_runner else "v1"}


# ---- 13. V1 runner on CUDA: adaptive draft length off by default (keeps FULL graphs) -----

# Estimates of what PIECEWISE costs against FULL CUDA graphs on decode steps, from vLLM's own
# measurements (not Sparrow's): vLLM PR #42885 (TPOT -10%, throughput +14% when decode
# attention joined the FULL graph) and PR #25444 (+47% requests/s for a small-active MoE on
# one H100 when FULL_AND_PIECEWISE became the default). docs/serving.md, "Draft length under load".
PIECEWISE_COST_ESTIMATE = "about 10-47% slower decode steps (vLLM PRs #42885, #25444; an estimate)"


def _sparrow_adaptive_on_v1_cuda(config: Any) -> None:
    """Before vLLM forces PIECEWISE for dynamic speculation on the V1 runner: a Sparrow
    engine whose adaptive draft length is on by default drafts K every step instead (its
    table dropped, the option turned off), so the target keeps its FULL graphs; one asked
    for explicitly stays on, and vLLM goes PIECEWISE (a WARNING gives the cost)."""
    from vllm.platforms import current_platform

    from sparrow_vllm.serving.serving_options import OPTIONS_ATTRIBUTE, SparrowServingOptions

    spec = config.speculative_config
    if (
        not current_platform.is_cuda_alike()
        or not config.compilation_config.cudagraph_mode.has_full_cudagraphs()
        or config.use_v2_model_runner
    ):
        return
    options = SparrowServingOptions.of(spec)
    if not options.adaptive_draft_length:  # the user's own batch-size table: vLLM's rule
        return
    if "adaptive_draft_length" in options.model_fields_set:
        logger.warning(
            "Sparrow adaptive draft length on the V1 model runner (asked for): vLLM runs the "
            "target with PIECEWISE CUDA graphs while the draft length varies, %s. Model "
            "Runner V2 (vLLM's default on CUDA) keeps FULL graphs with it",
            PIECEWISE_COST_ESTIMATE,
        )
        return
    spec.num_speculative_tokens_per_batch_size = None
    setattr(spec, OPTIONS_ATTRIBUTE, options.model_copy(update={"adaptive_draft_length": False}))
    logger.warning(
        "Sparrow adaptive draft length is off on the V1 model runner with CUDA graphs: vLLM "
        "would run the target with PIECEWISE instead of FULL CUDA graphs whenever the draft "
        "length varies (%s), more than the adaptive draft length gained over a fixed K in "
        "Sparrow's serving benchmark. Every step drafts %d. To turn it on anyway, pass "
        '"adaptive_draft_length": true in --speculative-config; Model Runner V2 (vLLM\'s '
        "default on CUDA, VLLM_USE_V2_MODEL_RUNNER=1) keeps both",
        PIECEWISE_COST_ESTIMATE, spec.num_speculative_tokens,
    )


def _patch_vllm_config(module: ModuleType) -> None:
    config_cls = module.VllmConfig
    original = config_cls._maybe_override_dynamic_sd_cudagraph_mode

    @functools.wraps(original)
    def _maybe_override_dynamic_sd_cudagraph_mode(self: Any) -> None:
        spec = self.speculative_config
        if spec is not None and spec.uses_dynamic_speculative_decoding() and is_sparrow_draft(spec):
            _sparrow_adaptive_on_v1_cuda(self)
        original(self)

    setattr(_maybe_override_dynamic_sd_cudagraph_mode, _MARK, True)
    config_cls._maybe_override_dynamic_sd_cudagraph_mode = _maybe_override_dynamic_sd_cudagraph_mode


# ---- 14. Model Runner V2: a FULL graph for every captured draft length ------------------


def _widen_full_decode_candidates(manager: Any) -> None:
    """Let each token count's candidates hold, for every uniform query length captured in
    FULL mode, the smallest FULL graph of that length at least that large, ahead of the
    PIECEWISE ones (vLLM lists only the graphs of the smallest captured size, which with
    several query lengths is often another length's)."""
    from vllm.config.compilation import CUDAGraphMode

    full_mode = CUDAGraphMode.FULL
    graphs = sorted(
        (d for d in manager._capture_descs.get(full_mode, ()) if d.uniform_token_count),
        key=lambda d: d.num_tokens,
    )
    for (num_tokens, loras), candidates in manager._candidates.items():
        held = {(d.uniform_token_count, d.num_ubatches) for d in candidates if d.cg_mode == full_mode}
        extra = []
        for d in graphs:
            kind = (d.uniform_token_count, d.num_ubatches)
            if d.num_tokens >= num_tokens and d.num_active_loras == loras and kind not in held:
                held.add(kind)
                extra.append(d)
        if extra:
            at = next((i for i, d in enumerate(candidates) if d.cg_mode != full_mode), len(candidates))
            candidates[at:at] = extra


def _patch_v2_cudagraph_utils(module: ModuleType) -> None:
    manager_cls = module.CudaGraphManager
    original = manager_cls._init_candidates

    @functools.wraps(original)
    def _init_candidates(self: Any) -> None:
        original(self)
        spec = self.vllm_config.speculative_config
        if spec is not None and spec.uses_dynamic_speculative_decoding() and is_sparrow_draft(spec):
            _widen_full_decode_candidates(self)

    setattr(_init_candidates, _MARK, True)
    manager_cls._init_candidates = _init_candidates


# ---- 15. Sparrow's metrics on /metrics ------------------------------------------------------


def _reporting_sample_tokens(original: Callable[..., Any], adapter_attribute: str) -> Callable[..., Any]:
    """A runner's sample_tokens that puts its Sparrow adapter's metrics report on the
    ModelRunnerOutput it returns (V1: the `drafter`, V2: the `speculator`)."""

    @functools.wraps(original)
    def sample_tokens(self: Any, grammar_output: Any) -> Any:
        result = original(self, grammar_output)
        metrics = getattr(getattr(self, adapter_attribute, None), "draft_metrics", None)
        if metrics is not None:
            attach_report(result, metrics)
        return result

    setattr(sample_tokens, _MARK, True)
    return sample_tokens


def _patch_metrics_stats(module: ModuleType) -> None:
    """SchedulerStats gains the dataclass field `sparrow_draft_metrics` (default None): msgspec
    encodes and decodes a dataclass's fields only. The class is changed in place: vLLM's
    modules hold it by reference (EngineCoreOutputs' annotation among them)."""
    import dataclasses

    stats_cls = module.SchedulerStats
    if REPORT_ATTRIBUTE in stats_cls.__dataclass_fields__:
        return

    @dataclasses.dataclass
    class _Carrier:
        sparrow_draft_metrics: dict[str, Any] | None = None

    [field] = dataclasses.fields(_Carrier)
    assert field.name == REPORT_ATTRIBUTE
    stats_cls.__dataclass_fields__[REPORT_ATTRIBUTE] = field
    stats_cls.__annotations__[REPORT_ATTRIBUTE] = dict[str, Any] | None
    setattr(stats_cls, REPORT_ATTRIBUTE, None)


def _patch_stat_loggers(module: ModuleType) -> None:
    logger_cls = module.PrometheusStatLogger
    original_init = logger_cls.__init__
    original_record = logger_cls.record

    @functools.wraps(original_init)
    def __init__(self: Any, vllm_config: Any, engine_indexes: list[int] | None = None) -> None:
        original_init(self, vllm_config, engine_indexes)
        self.sparrow_prom = None
        spec = vllm_config.speculative_config
        if spec is not None and is_sparrow_draft(spec):
            from sparrow_vllm.serving.vllm.metrics import SparrowPrometheus

            self.sparrow_prom = SparrowPrometheus(
                self._gauge_cls, self._counter_cls, self._histogram_cls, self.per_engine_labelvalues,
                spec.num_speculative_tokens)

    @functools.wraps(original_record)
    def record(self: Any, scheduler_stats: Any, iteration_stats: Any, mm_cache_stats: Any = None,
               engine_idx: int = 0) -> None:
        original_record(self, scheduler_stats, iteration_stats, mm_cache_stats, engine_idx)
        prom = getattr(self, "sparrow_prom", None)
        report = getattr(scheduler_stats, REPORT_ATTRIBUTE, None)
        if prom is not None and report is not None:
            prom.observe(report, engine_idx)

    for fn in (__init__, record):
        setattr(fn, _MARK, True)
    logger_cls.__init__ = __init__
    logger_cls.record = record


# ---- 8. CPU build: the rejection sampler's per-token expansion ----------------------------


def expand_per_request(
    # [num_tokens] written in place (its first cu_num_tokens[-1] entries)
    output: torch.Tensor,
    # [batch] one value per request
    input_val: torch.Tensor,
    # [batch] inclusive cumulative token count per request
    cu_num_tokens: torch.Tensor,
    replace_from: Any,
    replace_to: Any,
    MAX_NUM_TOKENS: Any = None,  # noqa: N803 (the Triton kernel's keyword)
) -> None:
    """What vLLM's `expand_kernel` computes: output[t] = value of t's request, with
    `replace_from` replaced by `replace_to`."""
    del MAX_NUM_TOKENS
    counts = torch.diff(cu_num_tokens.long(), prepend=cu_num_tokens.new_zeros(1).long())
    values = torch.where(input_val == replace_from, torch.as_tensor(replace_to, dtype=input_val.dtype), input_val)
    total = int(cu_num_tokens[-1]) if cu_num_tokens.numel() else 0
    output[:total] = torch.repeat_interleave(values, counts, output_size=total).to(output.dtype)


def _patch_cpu_triton_utils(module: ModuleType) -> None:
    setattr(expand_per_request, _MARK, True)
    module._expand_kernel_impl = expand_per_request


# ---- 9. CPU build: top-k on a step without draft tokens ---------------------------------


def _patch_topk_topp_sampler(module: ModuleType) -> None:
    original = module.apply_top_k_only

    @functools.wraps(original)
    def apply_top_k_only(logits: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        # logits: [num_rows, vocab]; k: [num_rows]
        if logits.shape[0] == 0:
            return logits
        return original(logits, k)

    setattr(apply_top_k_only, _MARK, True)
    module.apply_top_k_only = apply_top_k_only


# ---- 12. the cache_salt of new requests, for the draft's reusable rows -------------------


def _patch_sched_output(module: ModuleType) -> None:
    data_cls = module.NewRequestData
    original = data_cls.from_request.__func__

    @functools.wraps(original)
    def from_request(cls: Any, request: Any, *args: Any, **kwargs: Any) -> Any:
        data = original(cls, request, *args, **kwargs)
        data.cache_salt = request.cache_salt
        return data

    setattr(from_request, _MARK, True)
    data_cls.cache_salt = None  # NewRequestData not built from a Request (V2's warm-up)
    data_cls.from_request = classmethod(from_request)


# ---- applying patches on import ----------------------------------------------------------

_PATCHES: dict[str, Callable[[ModuleType], None]] = {
    "vllm.engine.arg_utils": _patch_arg_utils,
    "vllm.v1.worker.gpu_model_runner": _patch_model_runner,
    "vllm.v1.worker.gpu.model_runner": _patch_v2_model_runner,
    "vllm.utils.cpu_triton_utils": _patch_cpu_triton_utils,
    "vllm.v1.sample.ops.topk_topp_sampler": _patch_topk_topp_sampler,
    "vllm.v1.core.sched.scheduler": _patch_scheduler,
    "vllm.v1.core.sched.output": _patch_sched_output,
    "vllm.config.vllm": _patch_vllm_config,
    "vllm.v1.worker.gpu.cudagraph_utils": _patch_v2_cudagraph_utils,
    "vllm.v1.metrics.stats": _patch_metrics_stats,
    "vllm.v1.metrics.loggers": _patch_stat_loggers,
}


def _apply(name: str, module: ModuleType) -> None:
    if getattr(module, _MARK, False):
        return
    _PATCHES[name](module)
    setattr(module, _MARK, True)
    logger.debug("sparrow-vllm patched %s", name)


def _find_spec_after(finder: Any, fullname: str, path: Any, target: Any) -> Any:
    """The spec the finders after `finder` on sys.meta_path give (so other import hooks,
    e.g. a test environment's, still see the module)."""
    finders = sys.meta_path[sys.meta_path.index(finder) + 1 :] if finder in sys.meta_path else []
    for other in finders:
        find = getattr(other, "find_spec", None)
        spec = find(fullname, path, target) if find is not None else None
        if spec is not None:
            return spec
    return importlib.machinery.PathFinder.find_spec(fullname, path)


class _PatchOnImport(importlib.abc.MetaPathFinder):
    """Runs the patch for a module right after the module executes."""

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
        if fullname not in _PATCHES:
            return None
        spec = _find_spec_after(self, fullname, path, target)
        if spec is None or spec.loader is None:
            return None
        exec_module = spec.loader.exec_module

        def exec_and_patch(module: ModuleType) -> None:
            exec_module(module)
            _apply(fullname, module)

        spec.loader.exec_module = exec_and_patch  # type: ignore[method-assign]
        return spec


def apply_all() -> None:
    """Patch modules already imported; patch the others when they are imported."""
    for name in _PATCHES:
        if name in sys.modules:
            _apply(name, sys.modules[name])
    if not any(isinstance(f, _PatchOnImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _PatchOnImport())


def applied() -> dict[str, bool]:
    """Which patch targets are patched in this process (imported modules only)."""
    return {name: bool(getattr(sys.modules.get(name), _MARK, False)) for name in _PATCHES}
