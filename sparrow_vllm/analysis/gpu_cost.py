"""A GPU-shaped step-cost model for the offline replay (trace_replay.py): theta of
DraftLengthPolicy's linear step cost (StepShape.features) for a Qwen2.5-VL-7B target with a
Sparrow draft on one H100 SXM, derived from datasheet and config figures. An estimate, not
a measurement: benchmarks/trace_replay.py reports it apart from the fitted costs."""

from __future__ import annotations

import numpy as np

from sparrow_vllm.bench.geometry import QWEN25_VL_7B


def gpu_theta(
    num_speculative_tokens: int = 4,  # the workload's K_max: c2 spreads a verify pass's KV read over 1 + K_max tokens
    hbm_bytes_per_s: float = 3.35e12,  # H100 SXM HBM3 (as benchmarks/draft_attention.py's PEAK_GBPS)
    peak_flops: float = 989e12,  # H100 SXM dense bf16 tensor core
    bandwidth_fraction: float = 0.8,  # of HBM peak a weight-streaming GEMV or KV read reaches
    gemm_fraction: float = 0.6,  # of bf16 peak a large GEMM reaches
    attention_fraction: float = 0.5,  # of bf16 peak a FlashAttention prefill reaches
) -> np.ndarray:
    """An ESTIMATE (a roofline sum, not a measurement) of theta [7] in seconds for a
    Qwen2.5-VL-7B target (geometry from sparrow_vllm.bench.geometry.QWEN25_VL_7B, i.e. the
    model's config.json: 28 layers, hidden 3584, MLP 18944, 28 query / 4 KV heads of 128,
    vocab 152064, untied LM head, bf16) with a Sparrow draft (one decoder layer of the
    target's width plus the LM head) on one H100 SXM (NVIDIA H100 datasheet: 3.35 TB/s
    HBM3, 989 TFLOP/s dense bf16), at the stated effective fractions of peak. Left out:
    the vision encoder (runs once per video, not in these features), sampling, launch
    gaps, and the draft's own attention (over text rows only). Memory and compute terms are
    added, which overstates steps near the roofline's knee."""
    g = QWEN25_VL_7B.text
    hidden, layers, vocab = g["hidden_size"], g["num_hidden_layers"], g["vocab_size"]
    head_dim = hidden // g["num_attention_heads"]
    kv = g["num_key_value_heads"] * head_dim
    layer_params = 2 * hidden * hidden + 2 * hidden * kv + hidden + 2 * kv + 3 * hidden * g["intermediate_size"]
    target_params = layers * layer_params + hidden * vocab  # 28 * 233.1M + 545.0M = 7.07e9
    draft_params = layer_params + hidden * vocab  # 233.1M + 545.0M = 7.78e8
    bandwidth, bf16 = bandwidth_fraction * hbm_bytes_per_s, 2
    # c0: every step streams the target's weights once: 14.14 GB / 2.68 TB/s = 5.28 ms
    step = target_params * bf16 / bandwidth
    # c1, per 1e3 verify tokens: 2 FLOPs per parameter (logits for every verify token):
    # 14.1 GFLOP / (0.6 * 989 TFLOP/s) = 23.8 us per token
    verify_token = 2 * target_params / (gemm_fraction * peak_flops)
    # c3, per 1e3 prompt tokens: the same without the LM head (logits for the last only):
    # 13.1 GFLOP -> 22.0 us per token
    prompt_token = 2 * layers * layer_params / (gemm_fraction * peak_flops)
    # attention FLOPs per (query, context) pair: QK^T and PV, 2 * 2 * hidden per layer
    # = 4 * 3584 * 28 = 401k FLOPs; at 0.5 * 989 TFLOP/s 0.81 ns
    pair_flops = 4 * hidden * layers / (attention_fraction * peak_flops)
    # c2, per 1e6 verify (query, context) pairs: a verify pass reads each context token's KV
    # (2 * 28 layers * 4 heads * 128 * 2 B = 57 kB: 21.4 ns) once for its 1 + K query tokens;
    # the features have no per-request context term, so the read is spread over the workload's
    # own verify length 1 + K_max (exact at K_max, cheaper than real at smaller K):
    # 21.4 / 5 + 0.81 = 5.1 ns per pair
    kv_bytes = 2 * layers * kv * bf16
    verify_pair = kv_bytes / bandwidth / (1 + num_speculative_tokens) + pair_flops
    # c4, per 1e6 prompt (query, context) pairs: compute-bound, 0.81 ns
    # c5, per draft step: the draft streams its layer and the LM head, 1.56 GB: 0.58 ms
    draft_step = draft_params * bf16 / bandwidth
    # c6, per draft token: 2 FLOPs per draft parameter, 1.56 GFLOP: 2.6 us
    draft_token = 2 * draft_params / (gemm_fraction * peak_flops)
    return np.array([step, 1e3 * verify_token, 1e6 * verify_pair, 1e3 * prompt_token,
                     1e6 * pair_flops, draft_step, draft_token])
