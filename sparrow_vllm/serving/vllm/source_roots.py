"""Where vLLM's Python source is on disk, for `sparrow_vllm.serving.vllm.contract_check`: a release's
wheel, downloaded and extracted once into a cache kept between runs, or the installed
package. Neither imports vLLM.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from functools import cache
from pathlib import Path

WHEEL_CACHE_ENV = "SPARROW_WHEEL_CACHE"


def wheel_cache_dir() -> Path:
    """$SPARROW_WHEEL_CACHE, else ~/.cache/sparrow-vllm/wheels (kept between runs)."""
    env = os.environ.get(WHEEL_CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "sparrow-vllm" / "wheels"


def wheel_source(version: str, cache_dir: Path | None = None) -> Path:
    """The Python source of vLLM `version`, from its wheel: downloaded once with
    `pip download --no-deps`, its `vllm/**/*.py` extracted once, both kept in `cache_dir`
    (default `wheel_cache_dir()`). Returns the directory holding `vllm/`.

    Raises RuntimeError with pip's output when the download fails."""
    cache_dir = Path(cache_dir) if cache_dir is not None else wheel_cache_dir()
    target = cache_dir / f"vllm-{version}-src"
    if (target / ".complete").is_file():
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    wheels = sorted(cache_dir.glob(f"vllm-{version}-*.whl"))
    if not wheels:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--disable-pip-version-check", f"vllm=={version}", "-d", str(cache_dir)]
        out = subprocess.run(cmd, capture_output=True, text=True)
        wheels = sorted(cache_dir.glob(f"vllm-{version}-*.whl"))
        if out.returncode != 0 or not wheels:
            raise RuntimeError(
                f"`{' '.join(cmd)}` failed (exit {out.returncode}):\n"
                f"{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
            )
    staging = cache_dir / f".vllm-{version}-src.{os.getpid()}"
    with zipfile.ZipFile(wheels[0]) as wheel:
        for member in wheel.namelist():
            if member.startswith("vllm/") and member.endswith(".py") and ".." not in member:
                wheel.extract(member, staging)
    (staging / ".complete").write_text(wheels[0].name + "\n")
    try:
        staging.rename(target)
    except OSError:  # another run extracted it first
        shutil.rmtree(staging, ignore_errors=True)
        if not (target / ".complete").is_file():
            raise
    return target


@cache
def installed_source() -> Path:
    """The directory holding the installed `vllm` package, found without importing it."""
    import importlib.util

    spec = importlib.util.find_spec("vllm")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("vLLM is not installed")
    return Path(next(iter(spec.submodule_search_locations))).parent
