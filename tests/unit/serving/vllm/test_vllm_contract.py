"""sparrow-vllm's contract with vLLM (serving/vllm/contract.py), checked statically
(sparrow_vllm/serving/vllm/contract_check.py).

The installed vLLM (0.32 on CPU) is checked from site-packages; vLLM 0.33, which has no
CPU build, from its wheel's Python source in tests/network (it needs the network once).
Nothing imports vLLM here, and nothing reaches the network.
"""

import textwrap
from pathlib import Path

import pytest

from sparrow_vllm.serving.vllm import plugin
from sparrow_vllm.serving.vllm.contract import TouchPoint
from sparrow_vllm.serving.vllm.contract_check import check_source, validate_touch_points
from sparrow_vllm.serving.vllm.source_roots import installed_source, wheel_source


def _report(problems: list[str]) -> str:
    return "vLLM no longer offers what sparrow-vllm relies on:\n  " + "\n  ".join(problems)


def test_touch_point_list_is_well_formed():
    assert validate_touch_points() == []


def test_contract_holds_in_installed_vllm():
    root = installed_source()
    installed = plugin.installed_vllm_version()
    assert ".".join(installed.split("+")[0].split(".")[:2]) in plugin.SUPPORTED_VLLM
    problems = check_source(root)
    assert not problems, _report(problems)


# ---- the check itself: it must fail when vLLM changes ------------------------------------


def _tree(root: Path, files: dict[str, str]) -> Path:
    for rel, text in {"vllm/__init__.py": "", **files}.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
        for parent in path.relative_to(root).parents:
            init = root / parent / "__init__.py"
            if parent != Path(".") and not init.exists():
                init.write_text("")
    return root


_RUNNER_OK = """
    from vllm.v1.worker.base import Base

    class GPUModelRunner(Base):
        def __init__(self, vllm_config, device):
            self.drafter = None

        def _update_states(self, scheduler_output):
            pass
"""
_BASE = """
    from dataclasses import dataclass

    class Base:
        def _on_request_state_removed(self, req_id, req_state):
            pass

    @dataclass
    class CachedRequestData:
        req_ids: list[str]
        resumed_req_ids: set[str]
"""
_POINTS = [
    TouchPoint("vllm.v1.worker.gpu_model_runner", "GPUModelRunner.__init__", "method", "w",
               ("self", "vllm_config", "device")),
    TouchPoint("vllm.v1.worker.gpu_model_runner", "GPUModelRunner._update_states", "method",
               "w", ("self", "scheduler_output")),
    TouchPoint("vllm.v1.worker.gpu_model_runner", "GPUModelRunner._on_request_state_removed",
               "method", "inherited from a base in another module",
               ("self", "req_id", "req_state")),
    TouchPoint("vllm.v1.worker.gpu_model_runner", "GPUModelRunner.drafter", "attribute", "w"),
    TouchPoint("vllm.v1.worker.base", "CachedRequestData.resumed_req_ids", "attribute", "w"),
]


def test_fake_tree_that_matches_passes(tmp_path):
    root = _tree(tmp_path, {"vllm/v1/worker/gpu_model_runner.py": _RUNNER_OK,
                            "vllm/v1/worker/base.py": _BASE})
    assert check_source(root, _POINTS) == []


def test_renamed_parameter_missing_method_field_and_module_are_reported(tmp_path):
    runner = _RUNNER_OK.replace("scheduler_output", "sched_out")
    base = _BASE.replace("def _on_request_state_removed", "def _on_request_removed").replace(
        "resumed_req_ids", "resumed_ids")
    root = _tree(tmp_path, {"vllm/v1/worker/gpu_model_runner.py": runner,
                            "vllm/v1/worker/base.py": base})
    missing_module = TouchPoint("vllm.v1.gone", "X", "class", "w")
    problems = check_source(root, [*_POINTS, missing_module])
    assert len(problems) == 4, problems
    renamed, removed, field, module = problems
    assert "GPUModelRunner._update_states" in renamed
    assert "missing scheduler_output" in renamed and "new sched_out" in renamed
    assert "has no '_on_request_state_removed'" in removed
    assert "CachedRequestData.resumed_req_ids" in field and "has no 'resumed_req_ids'" in field
    assert "module vllm.v1.gone is missing" in module


def test_new_parameter_breaks_an_override_and_a_required_one_breaks_a_call(tmp_path):
    root = _tree(tmp_path, {"vllm/m.py": """
        class C:
            def overridden(self, a, b=1, *, c=None):
                pass

            def called(self, a, extra, more=2):
                pass

            def called_ok(self, a, more=2, *args, **kwargs):
                pass
    """})
    points = [
        TouchPoint("vllm.m", "C.overridden", "method", "w", ("self", "a", "b")),
        TouchPoint("vllm.m", "C.called", "method", "w", ("self", "a"), "prefix"),
        TouchPoint("vllm.m", "C.called_ok", "method", "w", ("self", "a"), "prefix"),
        TouchPoint("vllm.m", "C.called", "method", "w", ("a", "extra", "self"), "names"),
    ]
    overridden, called = check_source(root, points)
    assert "new *, c" in overridden
    assert "new required (no default) extra" in called


def test_real_touch_points_catch_a_changed_vllm(tmp_path):
    """The shipped TOUCH_POINTS, not only hand-made ones, report a vLLM that changed."""
    source = installed_source()
    rel = Path("vllm/v1/worker/gpu_model_runner.py")
    text = (source / rel).read_text()
    assert "def _update_states(self, scheduler_output" in text
    changed = text.replace("def _update_states(self, scheduler_output",
                           "def _update_states(self, sched_output")
    changed = changed.replace("def _on_request_state_removed(", "def _on_request_gone(")
    root = _tree(tmp_path, {str(rel): changed})
    problems = [p for p in check_source(root) if p.startswith("vllm.v1.worker.gpu_model_runner:")]
    assert any("GPUModelRunner._update_states" in p and "missing scheduler_output" in p
               for p in problems), problems
    assert any("has no '_on_request_state_removed'" in p for p in problems), problems


def test_kinds_are_checked(tmp_path):
    root = _tree(tmp_path, {"vllm/m.py": """
        from typing import TYPE_CHECKING
        if TYPE_CHECKING:
            from vllm.other import only_for_typing
        value = 1

        def f(x):
            pass
    """})
    problems = check_source(root, [
        TouchPoint("vllm.m", "value", "class", "w"),
        TouchPoint("vllm.m", "f", "class", "w"),
        TouchPoint("vllm.m", "value", "module-name", "w"),
        TouchPoint("vllm.m", "only_for_typing", "module-name", "w"),
    ])
    assert len(problems) == 3, problems
    assert "is a module-name" in problems[0] and "is a function" in problems[1]
    assert "no name 'only_for_typing'" in problems[2]


def test_failed_download_fails_with_pips_error(tmp_path, monkeypatch):
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple")
    monkeypatch.setenv("PIP_EXTRA_INDEX_URL", "")
    monkeypatch.setenv("PIP_FIND_LINKS", "")
    monkeypatch.setenv("PIP_NO_INDEX", "0")
    monkeypatch.setenv("PIP_RETRIES", "0")
    monkeypatch.setenv("PIP_TIMEOUT", "2")
    with pytest.raises(RuntimeError, match=r"pip download .*vllm==0\.0\.1.* failed"):
        wheel_source("0.0.1", tmp_path)
