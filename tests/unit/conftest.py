"""Triton's interpreter for the kernel tests on a machine without CUDA.

TRITON_INTERPRET must be set before anything imports triton (importing vLLM does), or
kernels defined later fail with "Cannot call @triton.jit'd outside of the scope of a
kernel"; a conftest is imported before the test modules it collects.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"
