"""sparrow-vllm: Sparrow speculative decoding for video LLMs, as a vLLM plugin.

Importing the package is cheap; vLLM loads it through the `vllm.general_plugins` entry
point (`sparrow_vllm.serving.vllm.plugin:register`).
"""

__version__ = "0.1.0"
