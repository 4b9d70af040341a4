"""The adaptive draft length keeps the target's full CUDA graphs (issue 28, item 3).

Model Runner V2 captures FULL decode graphs only for the query lengths in the dense
schedule of vLLM's dynamic-speculation table (vllm/v1/worker/gpu/cudagraph_utils.py,
`CudaGraphManager._init_candidates`); a step whose K is not among them runs PIECEWISE or
eager. These tests build the config Sparrow hands vLLM through vLLM's own EngineArgs, the
scheduler through vLLM's own Scheduler and the graph manager's capture list and dispatch
through vLLM's own code (no engine, no GPU: the manager is built with FULL_AND_PIECEWISE
as on CUDA, and nothing is captured), and check that every K the policy may choose has
FULL graphs. On the V1 runner vLLM forces PIECEWISE while dynamic speculation is on, so
Sparrow turns the adaptive draft length off there by default on CUDA (ledger entry 13).
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from unittest import mock

import pytest
import torch

TOY_WORLD = Path(__file__).resolve().parents[4] / "models" / "toy-world"
K = 4


def _vllm_config(max_num_seqs: int, k: int = K, **spec):
    from vllm.engine.arg_utils import EngineArgs
    from vllm.plugins import load_general_plugins

    load_general_plugins()
    return EngineArgs(
        model=str(TOY_WORLD / "target"), dtype="float32", max_model_len=1024, max_num_seqs=max_num_seqs,
        speculative_config={"method": "sparrow", "model": str(TOY_WORLD / "sparrow-draft"),
                            "num_speculative_tokens": k, **spec},
    ).create_engine_config()


def _graph_manager(vllm_config):
    """vLLM's V2 CudaGraphManager for this config as on CUDA with default settings
    (FULL_AND_PIECEWISE, capture sizes from vLLM's defaults), marked captured so that
    `dispatch` answers as it would at run time."""
    from vllm.config.compilation import CUDAGraphMode
    from vllm.v1.worker.gpu import cudagraph_utils

    config = copy.deepcopy(vllm_config)
    compilation = config.compilation_config
    compilation.cudagraph_mode = CUDAGraphMode.FULL_AND_PIECEWISE
    compilation.cudagraph_capture_sizes = None
    compilation.max_cudagraph_capture_size = None
    config.model_config.enforce_eager = False
    config._set_cudagraph_sizes()  # vLLM's default capture sizes (per dynamic-table tier)
    decode_query_len = config.speculative_config.num_speculative_tokens + 1
    with mock.patch.object(cudagraph_utils, "get_pp_group"), \
            mock.patch.object(cudagraph_utils.current_platform, "get_global_graph_pool", create=True):
        manager = cudagraph_utils.CudaGraphManager(
            config, torch.device("cpu"), CUDAGraphMode.FULL_AND_PIECEWISE, decode_query_len=decode_query_len)
    manager._graphs_captured = True
    return manager


def _full_decode_graphs(manager) -> list:
    from vllm.config.compilation import CUDAGraphMode

    return [d for d in manager._capture_descs.get(CUDAGraphMode.FULL, []) if d.uniform_token_count]


def _scheduler(vllm_config, *, cuda_v2: bool):
    """vLLM's own Scheduler (with Sparrow's entry 10) for this config; `cuda_v2`: as on
    CUDA with Model Runner V2 and default settings (FULL_AND_PIECEWISE graphs)."""
    from vllm.config.compilation import CUDAGraphMode
    from vllm.v1.core.sched.scheduler import Scheduler
    from vllm.v1.kv_cache_interface import FullAttentionSpec, KVCacheConfig, KVCacheGroupSpec
    from vllm.v1.structured_output import StructuredOutputManager

    config = copy.deepcopy(vllm_config)
    config.cache_config.num_gpu_blocks = 64
    if cuda_v2:
        config.compilation_config.cudagraph_mode = CUDAGraphMode.FULL_AND_PIECEWISE
    spec = FullAttentionSpec(block_size=16, num_kv_heads=1, head_size=16, dtype=torch.float32)
    kv = KVCacheConfig(num_blocks=64, kv_cache_tensors=[], kv_cache_groups=[KVCacheGroupSpec(["layer.0"], spec)])
    with mock.patch.dict("os.environ", {"VLLM_USE_V2_MODEL_RUNNER": "1" if cuda_v2 else "0"}):
        return Scheduler(config, kv, StructuredOutputManager(config), block_size=16)


@pytest.mark.parametrize("max_num_seqs", [256, 16, K + 1, 3, 1])
def test_every_draft_length_the_policy_may_choose_has_full_decode_graphs(max_num_seqs):
    """On CUDA with Model Runner V2, the K the scheduler's policy may choose are all among
    the uniform decode query lengths (K + 1) V2 captures FULL graphs for: every K in
    0..K_max where max_num_seqs leaves room (the dense schedule holds one K per batch
    size), else K_max, 0 and the largest others. Without FULL graphs (this CPU build, or
    V1 with adaptive asked for, which runs PIECEWISE) the policy keeps every K."""
    config = _vllm_config(max_num_seqs)
    choices = set(_scheduler(config, cuda_v2=True).sparrow_draft_length.policy.choices)
    captured = {d.uniform_token_count - 1 for d in _full_decode_graphs(_graph_manager(config))}
    assert choices <= captured, f"policy may draft {sorted(choices - captured)} without a FULL graph"
    assert choices == set([K, 0, *range(K - 1, 0, -1)][:max_num_seqs])
    assert set(_scheduler(config, cuda_v2=False).sparrow_draft_length.policy.choices) == set(range(K + 1))


@pytest.mark.parametrize(("max_num_seqs", "k"), [(256, 4), (16, 4), (64, 7)])
def test_every_uniform_decode_a_captured_graph_can_hold_replays_one(max_num_seqs, k):
    """vLLM's dispatch looks a batch of B requests x q tokens up among the graphs of the
    smallest captured size >= B * q only; with several query lengths captured, that size
    is often another length's graph, and the step ran PIECEWISE (max_num_seqs 256, K = 4:
    58 of the 100 batch sizes a K = 4 graph holds got one). Ledger entry 14 lets a Sparrow engine
    replay the smallest FULL graph of its own length instead: every (B, K) that some
    captured graph holds gets a FULL graph."""
    from vllm.config.compilation import CUDAGraphMode

    manager = _graph_manager(_vllm_config(max_num_seqs, k))
    graphs = _full_decode_graphs(manager)
    missed = []
    for q in range(1, k + 2):
        for batch in range(1, max_num_seqs + 1):
            holdable = any(d.uniform_token_count == q and d.num_tokens >= batch * q for d in graphs)
            full = manager.dispatch(batch, batch * q, q, 0).cg_mode == CUDAGraphMode.FULL
            if holdable and not full:
                missed.append((batch, q - 1))
    assert not missed, f"(batch, K) run without a FULL graph that exists: {missed[:10]} ({len(missed)})"


def test_only_sparrow_engines_get_the_wider_dispatch():
    """Entry 14 changes nothing for an engine without a Sparrow draft."""
    from vllm.engine.arg_utils import EngineArgs
    from vllm.plugins import load_general_plugins

    load_general_plugins()
    eagle = EngineArgs(
        model=str(TOY_WORLD / "target"), dtype="float32", max_model_len=1024, max_num_seqs=16,
        speculative_config={"method": "eagle", "model": str(TOY_WORLD / "eagle-draft"), "num_speculative_tokens": K,
                            "num_speculative_tokens_per_batch_size": [(1, 1, 4), (2, 2, 1), (3, 16, 2)]},
    ).create_engine_config()
    for config, widened in ((eagle, False), (_vllm_config(16), True)):
        manager = _graph_manager(config)
        with mock.patch("sparrow_vllm.serving.vllm.patch_cuda_graphs._widen_full_decode_candidates") as widen:
            manager._candidates.clear()
            type(manager)._init_candidates(manager)
        assert widen.called == widened


def _as_on_cuda(config, *, v2: bool):
    """Rerun vLLM's V1 cudagraph override on `config` as on a CUDA machine whose default
    cudagraph mode is FULL_AND_PIECEWISE (the CPU build turns graphs off)."""
    from vllm.config.compilation import CUDAGraphMode
    from vllm.platforms import current_platform

    config.compilation_config.cudagraph_mode = CUDAGraphMode.FULL_AND_PIECEWISE
    with mock.patch.object(type(current_platform), "is_cuda_alike", return_value=True), \
            mock.patch.dict("os.environ", {"VLLM_USE_V2_MODEL_RUNNER": "1" if v2 else "0"}):
        config._maybe_override_dynamic_sd_cudagraph_mode()
    return config


class _Records(logging.Handler):
    """The records of one logger (the plugin's loggers hand theirs to vLLM's, not to the
    root logger pytest's caplog listens on)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(f"{record.levelname} {record.getMessage()}")


def test_v1_on_cuda_keeps_full_graphs_and_drafts_k_unless_adaptive_is_asked_for():
    from vllm.config.compilation import CUDAGraphMode

    from sparrow_vllm.serving.serving_options import SparrowServingOptions

    config = _vllm_config(16)
    records = _Records()
    logging.getLogger("sparrow_vllm.serving.vllm.patch_cuda_graphs").addHandler(records)
    try:
        default = _as_on_cuda(config, v2=False)
    finally:
        logging.getLogger("sparrow_vllm.serving.vllm.patch_cuda_graphs").removeHandler(records)
    assert default.compilation_config.cudagraph_mode == CUDAGraphMode.FULL_AND_PIECEWISE
    assert default.speculative_config.num_speculative_tokens_per_batch_size is None
    assert not SparrowServingOptions.of(default.speculative_config).adaptive_draft_length
    [line] = records.messages
    assert line.startswith("WARNING") and '"adaptive_draft_length": true' in line and "PIECEWISE" in line

    asked = _as_on_cuda(_vllm_config(16, adaptive_draft_length=True), v2=False)
    assert asked.compilation_config.cudagraph_mode == CUDAGraphMode.PIECEWISE  # vLLM's override
    assert SparrowServingOptions.of(asked.speculative_config).adaptive_draft_length
    assert asked.speculative_config.num_speculative_tokens_per_batch_size is not None


def test_v2_on_cuda_keeps_adaptive_and_full_graphs():
    from vllm.config.compilation import CUDAGraphMode

    from sparrow_vllm.serving.serving_options import SparrowServingOptions

    v2 = _as_on_cuda(_vllm_config(16), v2=True)
    assert v2.compilation_config.cudagraph_mode == CUDAGraphMode.FULL_AND_PIECEWISE
    assert SparrowServingOptions.of(v2.speculative_config).adaptive_draft_length
    assert v2.speculative_config.num_speculative_tokens_per_batch_size is not None


def test_a_restricted_policy_chooses_and_probes_only_its_choices():
    """With max_num_seqs <= K on CUDA V2 the policy gets the K the dense schedule holds:
    warm-up, argmax and probes stay among them, also under a load whose best K (2) is not
    among them."""
    import numpy as np
    from vllm.v1.spec_decode.dynamic.utils import build_dynamic_sd_schedule_lookup

    from sparrow_vllm.serving.draft_length import DraftLengthPolicy
    from sparrow_vllm.serving.vllm.scheduler_draft_length import choices_in, dynamic_table
    from tests.unit.serving.test_draft_length import K_MAX, decode_shape, serve, true_best

    choices = choices_in(build_dynamic_sd_schedule_lookup(dynamic_table(K_MAX), 3, K_MAX))
    assert choices == (0, K_MAX - 1, K_MAX)
    load = (4, 600, 0, 2e-4, 2e-6)
    assert true_best(decode_shape(4, 600, K_MAX), *load[3:]) == 2
    policy = DraftLengthPolicy(K_MAX, choices=choices)
    history = serve(policy, 64, lambda step: load, np.random.default_rng(0))
    assert {k for k, _ in history} <= set(choices)
    assert len({k for k, _ in history[16:]}) >= 2  # probes try a neighbour among the choices
    with pytest.raises(ValueError, match="must lie in"):
        DraftLengthPolicy(K_MAX, choices=(0, 1))  # K_max missing: seeded requests draft it
