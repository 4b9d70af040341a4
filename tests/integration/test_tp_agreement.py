"""Tensor-parallel ranks size the same draft cache whatever their own free memory.

Two real ranks (processes) join a vLLM tensor-parallel group over gloo on the CPU, each
reporting a different amount of free memory; both must plan the same cache."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import textwrap

import torch

from sparrow_vllm.serving.serving_options import SparrowServingOptions
from sparrow_vllm.serving.vllm.draft_loading import plan_text_cache

RANK = textwrap.dedent("""
    import json, sys
    import torch
    from vllm.config import VllmConfig, set_current_vllm_config
    from vllm.distributed import parallel_state
    from sparrow_vllm.serving.vllm import draft_loading

    rank, port, free = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    with set_current_vllm_config(VllmConfig()):
        parallel_state.init_distributed_environment(
            world_size=2, rank=rank, distributed_init_method=f"tcp://127.0.0.1:{port}",
            local_rank=rank, backend="gloo")
        parallel_state.initialize_model_parallel(tensor_model_parallel_size=2, backend="gloo")
        draft_loading.free_device_memory = lambda device: free  # this rank's own reading
        agreed = draft_loading.agreed_free_memory(torch.device("cpu"))
    print(json.dumps({"rank": rank, "agreed": agreed}))
""")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _plan(free_bytes: int):
    return plan_text_cache(
        num_layers=1, num_kv_heads=2, head_dim=64, dtype=torch.float32, window=None,
        num_speculative_tokens=4, max_model_len=4096, max_num_seqs=64,
        options=SparrowServingOptions(), free_bytes=free_bytes,
    )


def test_ranks_with_different_free_memory_plan_the_same_cache():
    free = [3 * 2**30, 2 * 2**30]  # rank 1's device holds more of something else
    # the premise: on their own, the two ranks would size different caches
    assert _plan(free[0]).num_blocks != _plan(free[1]).num_blocks
    port = str(_free_port())
    procs = [
        subprocess.Popen([sys.executable, "-c", RANK, str(rank), port, str(free[rank])],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for rank in (0, 1)
    ]
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=240)
        assert proc.returncode == 0, err[-3000:]
        results.append(json.loads(out.strip().splitlines()[-1]))
    assert [r["agreed"] for r in results] == [min(free)] * 2
    plans = [_plan(r["agreed"]) for r in results]
    assert plans[0] == plans[1]
