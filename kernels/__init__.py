"""Attention kernels for the Sparrow draft (installed as `sparrow_vllm.kernels`).

`reference.py` holds the PyTorch reference of text-window attention; the public op that
chooses an implementation is `sparrow_vllm.serving.attention.text_window_attention`.
"""
