"""The tree matches docs/architecture.md: the newcomer's path names files that exist, in
the order of the serving path, and the vLLM boundary is where the folders say it is."""

from __future__ import annotations

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
DOC = REPO / "docs" / "architecture.md"
# the path a request's drafts take, one stage per numbered step of the page
STAGES = ["plugin.py", "patches.py", "v1_proposer.py", "drafter.py", "text_kv_cache.py", "text_cache_layout.py",
          "attention_op.py", "kernels/text_window_attention.py"]


def _path_section() -> str:
    text = DOC.read_text()
    start = text.index("## A newcomer's path")
    return text[start:text.index("\n## ", start + 1)]


def _resolve(name: str) -> Path | None:
    for base in (REPO, REPO / "sparrow_vllm"):
        if (base / name).exists():
            return base / name
    return None


def test_every_file_the_path_names_exists():
    names = [n for n in re.findall(r"`([\w./]+\.py)`", _path_section())]
    assert len(names) > 15
    missing = [n for n in names if _resolve(n) is None]
    assert not missing, f"docs/architecture.md names files the tree does not have: {missing}"


def test_the_path_is_in_serving_order():
    section = _path_section()
    positions = [section.index(stage) for stage in STAGES]
    assert positions == sorted(positions), list(zip(STAGES, positions, strict=True))


def _imports_vllm(path: Path) -> bool:
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import) and any(a.name.split(".")[0] == "vllm" for a in node.names):
            return True
        if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").split(".")[0] == "vllm":
            return True
    return False


def test_only_serving_vllm_imports_vllm_on_the_serving_path():
    core = [p for p in (REPO / "sparrow_vllm" / "serving").glob("*.py") if _imports_vllm(p)]
    core += [p for p in (REPO / "kernels").glob("*.py") if _imports_vllm(p)]
    core += [p for p in (REPO / "sparrow_vllm" / "draft").glob("*.py") if _imports_vllm(p)]
    assert not core, f"these modules import vLLM outside sparrow_vllm/serving/vllm/: {core}"
    boundary = [p.name for p in (REPO / "sparrow_vllm" / "serving" / "vllm").glob("*.py") if _imports_vllm(p)]
    assert {"patch_engine_args.py", "patch_cuda_graphs.py", "v1_proposer.py", "v2_speculator.py",
            "plugin.py"} <= set(boundary), boundary


def test_a_module_over_400_lines_says_why_at_its_top():
    long = []
    for path in [*(REPO / "sparrow_vllm").rglob("*.py"), *(REPO / "kernels").glob("*.py")]:
        lines = path.read_text().splitlines()
        if len(lines) > 400 and "400 lines" not in "\n".join(lines[:40]):
            long.append(f"{path.relative_to(REPO)} ({len(lines)} lines)")
    assert not long, f"split these, or say at the top why they run past 400 lines: {long}"
