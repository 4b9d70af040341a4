"""Build sparrow-vllm's wheel, install it into a fresh environment, import every module.

`make check-wheel` (part of `make test`). It catches a package folder left out of the wheel
(setup.py's package list), a module that imports only from the source tree, and a broken
entry point; it fails (exit 1) naming the module and the error.

    1. copy what a fresh clone holds (git's tracked and not-ignored files; no build/, no
       *.egg-info) to a temporary directory and build the wheel there:
       `pip wheel --no-deps -w DIST .`; a stale build/ can hide a missing package
    2. compare the wheel with the source: every .py file under sparrow_vllm/ (and kernels/,
       installed as sparrow_vllm.kernels: setup.py's package_dir) must be in the wheel,
       including folders without an __init__.py, which find_packages skips
    3. create a fresh venv (no pip) and `pip --python FRESH install --no-deps` the wheel
    4. make the project's dependencies visible without reinstalling them (vLLM and torch
       are 3.5 GB): a .pth file puts .venv's site-packages on the fresh env's sys.path, and
       .venv's other .pth files are copied (sparrow_cpu_shim.pth: torchvision imports on
       CPU) except the editable install of sparrow-vllm, so the source tree stays invisible
    5. in the fresh interpreter (`-I`, cwd outside the repository, no PYTHONPATH): check
       that `sparrow_vllm` and the `sparrow-vllm` distribution come from the fresh env,
       import every module found by pkgutil.walk_packages (each must come from the fresh
       env too), and load the distribution's entry points

Benchmarks (benchmarks/) are not part of the package and are not checked.

Usage: .venv/bin/python scripts/check_wheel.py [--keep]   (--keep: leave the temporary
directory for inspection; its path is printed)
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
import venv
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = "sparrow_vllm"
DISTRIBUTION = "sparrow-vllm"
BASE_PTH = "00-sparrow-check-wheel-base.pth"  # sorts before the copied .pth files

# Runs in the fresh interpreter: argv[1] is the report path.
_CHILD = r"""
import importlib, importlib.metadata, json, pkgutil, sys, traceback
from pathlib import Path

prefix = Path(sys.prefix).resolve()
report = {"prefix": str(prefix), "modules": [], "failures": [], "outside": []}

def inside(path):
    return path is not None and Path(path).resolve().is_relative_to(prefix)

def fail(name, exc_text):
    report["failures"].append({"module": name, "error": exc_text})

def error_text():
    # the traceback without the import machinery's frames
    te = traceback.TracebackException.from_exception(sys.exc_info()[1])
    te.stack = traceback.StackSummary.from_list(
        [f for f in te.stack if "importlib" not in f.filename and "<frozen" not in f.filename]
    )
    return "".join(te.format())

try:
    import sparrow_vllm
except BaseException:
    fail("sparrow_vllm", error_text())
else:
    report["modules"].append("sparrow_vllm")
    if not inside(sparrow_vllm.__file__):
        report["outside"].append(f"sparrow_vllm from {sparrow_vllm.__file__}")

    def onerror(name):
        fail(name, error_text())

    for info in pkgutil.walk_packages(sparrow_vllm.__path__, "sparrow_vllm.", onerror=onerror):
        report["modules"].append(info.name)
        try:
            module = importlib.import_module(info.name)
        except BaseException:
            fail(info.name, error_text())
            continue
        if not inside(getattr(module, "__file__", None)):
            report["outside"].append(f"{info.name} from {getattr(module, '__file__', None)}")

    dist = importlib.metadata.distribution("sparrow-vllm")
    if not inside(dist.locate_file("")):
        report["outside"].append(f"distribution sparrow-vllm from {dist.locate_file('')}")
    for ep in dist.entry_points:
        try:
            ep.load()
        except BaseException:
            fail(f"entry point {ep.group}:{ep.name} = {ep.value}", error_text())

Path(sys.argv[1]).write_text(json.dumps(report))
"""


class CheckFailed(RuntimeError):
    pass


def run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
    out = subprocess.run(cmd, capture_output=True, text=True, **kwargs)
    if out.returncode != 0:
        raise CheckFailed(
            f"`{' '.join(map(str, cmd))}` failed (exit {out.returncode}):\n"
            f"{out.stdout[-4000:]}{out.stderr[-4000:]}"
        )
    return out


def clean_copy(repo: Path, dest: Path) -> Path:
    """What a fresh clone holds: tracked and untracked-but-not-ignored files."""
    listing = run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                  cwd=repo).stdout
    for rel in filter(None, listing.split("\0")):
        src = repo / rel
        if src.is_file():  # skips files deleted but still in the index
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    return dest


def package_dirs(setup_py: Path) -> dict[str, str]:
    """setup()'s package_dir, read from setup.py (without running it), plus the package."""
    dirs = {PACKAGE: PACKAGE}
    for node in ast.walk(ast.parse(setup_py.read_text())):
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "setup":
            for kw in node.keywords:
                if kw.arg == "package_dir":
                    dirs.update(ast.literal_eval(kw.value))
    return dirs


def expected_modules(src: Path) -> dict[str, str]:
    """Module name -> source file, for every .py file the package should ship."""
    modules: dict[str, str] = {}
    for package, folder in package_dirs(src / "setup.py").items():
        root = src / folder
        for path in root.rglob("*.py"):
            rel = path.relative_to(root).with_suffix("")
            if "__pycache__" in rel.parts:
                continue
            parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
            modules[".".join((package, *parts))] = path.relative_to(src).as_posix()
    return modules


def wheel_modules(wheel: Path) -> set[str]:
    with zipfile.ZipFile(wheel) as zf:
        names = [n for n in zf.namelist() if n.endswith(".py") and n.startswith(PACKAGE + "/")]
    return {
        ".".join(p.parts[:-1] if p.name == "__init__" else p.parts)
        for p in (Path(n).with_suffix("") for n in names)
    }


def site_packages(prefix: Path) -> Path:
    path = sysconfig.get_path("purelib", vars={"base": str(prefix), "platbase": str(prefix)})
    return Path(path)


def fresh_env(env_dir: Path, wheel: Path, base_site: Path, repo: Path) -> Path:
    """A venv with only the wheel installed, seeing `base_site`'s packages through .pth
    files, but not the editable install of this repository."""
    venv.EnvBuilder(with_pip=False, clear=True).create(env_dir)
    python = env_dir / "bin" / "python"
    # Install before the dependencies become visible: pip sees an empty environment.
    run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps",
         "--no-index", "--disable-pip-version-check", "-q", str(wheel)])
    site = site_packages(env_dir)
    (site / BASE_PTH).write_text(f"{base_site}\n")
    for pth in sorted(base_site.glob("*.pth")):
        text = pth.read_text()
        if pth.name.startswith("__editable__") or "__editable__" in text or str(repo) in text:
            continue  # the editable sparrow-vllm (or anything else pointing at the repo)
        lines = []
        for line in text.splitlines():
            stripped = line.strip()
            if stripped and not stripped.startswith(("#", "import ", "import\t")):
                line = str((base_site / stripped).resolve())  # paths are site-relative
            lines.append(line)
        (site / pth.name).write_text("\n".join(lines) + "\n")
    return python


def child_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env.pop("VIRTUAL_ENV", None)
    # As the Makefile and tests/conftest.py: offline, and name vLLM's platform (its
    # auto-detection can import AVX-512 code on AVX2 CPUs).
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TRANSFORMERS_OFFLINE", "1")
    has_gpu = shutil.which("nvidia-smi") and subprocess.run(
        ["nvidia-smi", "-L"], capture_output=True).returncode == 0
    env.setdefault("VLLM_TARGET_DEVICE", "cuda" if has_gpu else "cpu")
    return env


def check(work: Path) -> int:
    t0 = time.monotonic()
    src = clean_copy(REPO, work / "src")
    dist_dir = work / "dist"
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--disable-pip-version-check",
         "-q", "-w", str(dist_dir), str(src)])
    wheels = sorted(dist_dir.glob("sparrow_vllm-*.whl"))
    if len(wheels) != 1:
        raise CheckFailed(f"expected one sparrow_vllm wheel in {dist_dir}, found {wheels}")
    wheel = wheels[0]
    print(f"built {wheel.name} ({time.monotonic() - t0:.1f}s)")

    problems: list[str] = []
    expected = expected_modules(src)
    shipped = wheel_modules(wheel)
    for name in sorted(set(expected) - shipped):
        problems.append(f"{name} ({expected[name]}) is missing from the wheel: is its folder "
                        "a package (__init__.py) that setup.py's find_packages finds?")
    for name in sorted(shipped - set(expected)):
        problems.append(f"{name} is in the wheel but not in the source tree")

    base_site = Path(sysconfig.get_path("purelib"))
    python = fresh_env(work / "env", wheel, base_site, REPO)
    report_path = work / "report.json"
    out = subprocess.run([str(python), "-I", "-c", _CHILD, str(report_path)],
                         cwd=work, env=child_env(), capture_output=True, text=True)
    if out.returncode != 0 or not report_path.is_file():
        raise CheckFailed(f"the import check died (exit {out.returncode}):\n"
                          f"{out.stdout[-4000:]}{out.stderr[-4000:]}")
    report = json.loads(report_path.read_text())
    for failure in report["failures"]:
        error = failure["error"].rstrip().splitlines()
        problems.append(f"{failure['module']} does not import from the installed wheel: "
                        f"{error[-1]}\n    " + "\n    ".join(error[-12:]))
    problems += [f"not from the fresh environment: {what}" for what in report["outside"]]
    for name in sorted(shipped - set(report["modules"])):
        problems.append(f"{name} is in the wheel but pkgutil.walk_packages did not find it")

    elapsed = time.monotonic() - t0
    if problems:
        print(f"check-wheel FAILED ({elapsed:.1f}s):", file=sys.stderr)
        for problem in problems:
            print(f"  - {problem}", file=sys.stderr)
        return 1
    print(f"check-wheel ok: {len(report['modules'])} modules import from {wheel.name} "
          f"installed in a fresh environment ({report['prefix']}), {elapsed:.1f}s")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="sparrow-check-wheel-"))
    try:
        return check(work)
    except CheckFailed as exc:
        print(f"check-wheel FAILED: {exc}", file=sys.stderr)
        return 1
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
