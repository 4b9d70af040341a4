"""sparrow-vllm's contract with the newest GPU release of vLLM (0.33, which has no CPU
build), checked statically from its wheel's Python source.

Needs the network once: the wheel (~330 MB) is downloaded with pip into
$SPARROW_WHEEL_CACHE (default ~/.cache/sparrow-vllm/wheels) and reused from there by every
later run and clone. Without a cached wheel and with the package index unreachable, the
test is skipped, saying so; a download that fails while the index answers fails it.
Deselect with `-m "not network"`.
"""

from __future__ import annotations

import os
import urllib.error
import urllib.request

import pytest

from sparrow_vllm.serving.vllm import plugin
from sparrow_vllm.serving.vllm.contract_check import check_source
from sparrow_vllm.serving.vllm.source_roots import wheel_cache_dir, wheel_source

pytestmark = pytest.mark.network

NEWEST_GPU_VLLM = "0.33.0"


def _cached(version: str) -> bool:
    cache = wheel_cache_dir()
    return (cache / f"vllm-{version}-src" / ".complete").is_file() or any(cache.glob(f"vllm-{version}-*.whl"))


def _index_unreachable() -> str | None:
    """Why pip's package index (PIP_INDEX_URL, else PyPI) cannot be reached, or None."""
    index = os.environ.get("PIP_INDEX_URL") or "https://pypi.org/simple"
    try:
        with urllib.request.urlopen(index.rstrip("/") + "/vllm/", timeout=15):
            return None
    except urllib.error.HTTPError:
        return None  # the index answered
    except (urllib.error.URLError, OSError) as e:
        return f"{index}: {e}"


def test_contract_holds_in_newest_gpu_vllm_wheel():
    assert NEWEST_GPU_VLLM.rsplit(".", 1)[0] in plugin.SUPPORTED_VLLM
    if not _cached(NEWEST_GPU_VLLM) and (why := _index_unreachable()) is not None:
        pytest.skip(f"needs the network: vllm=={NEWEST_GPU_VLLM}'s wheel is not in {wheel_cache_dir()} "
                    f"and the package index is unreachable ({why}); put the wheel there (or point "
                    f"$SPARROW_WHEEL_CACHE at a folder holding it) to run this offline")
    root = wheel_source(NEWEST_GPU_VLLM)  # RuntimeError with pip's output if it fails
    assert (root / "vllm" / "v1" / "worker" / "gpu_model_runner.py").is_file(), root
    problems = check_source(root)
    assert not problems, "vLLM no longer offers what sparrow-vllm relies on:\n  " + "\n  ".join(problems)
