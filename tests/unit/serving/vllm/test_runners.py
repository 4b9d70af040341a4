"""The model-runner registry (sparrow_vllm/serving/vllm/runners.py): each runner's
environment, with and without the CPU recipe, and what a worker reports for it."""

from __future__ import annotations

import typing
from types import SimpleNamespace

import pytest

from sparrow_vllm.check.run import Runner
from sparrow_vllm.serving.vllm.runners import RUNNER_CHOICES, RUNNERS, drafting_adapter, runner_env


def test_each_runner_is_selected_by_vllms_variable():
    assert runner_env("v1") == {"VLLM_USE_V2_MODEL_RUNNER": "0"}
    assert runner_env("v2") == {"VLLM_USE_V2_MODEL_RUNNER": "1"}
    assert runner_env("auto") == {}


def test_on_a_cpu_model_runner_v2_runs_in_tritons_interpreter():
    assert runner_env("v1", cpu=True) == {"VLLM_USE_V2_MODEL_RUNNER": "0", "VLLM_TARGET_DEVICE": "cpu",
                                          "TRITON_INTERPRET": "0"}
    assert runner_env("v2", cpu=True) == {"VLLM_USE_V2_MODEL_RUNNER": "1", "VLLM_TARGET_DEVICE": "cpu",
                                          "TRITON_INTERPRET": "1", "SPARROW_TEST_TRITON_CPU": "1"}


def test_an_unknown_runner_is_refused_naming_the_known_ones():
    with pytest.raises(ValueError, match="known: v1, v2, auto"):
        runner_env("v3")


def test_checks_runner_setting_offers_the_registrys_choices():
    assert typing.get_args(Runner) == RUNNER_CHOICES


def test_what_a_worker_reports_for_each_runner():
    assert RUNNERS["v1"].runner_class == "vllm.v1.worker.gpu_model_runner.GPUModelRunner"
    assert RUNNERS["v2"].drafter_class("sparrow") == "sparrow_vllm.serving.vllm.v2_speculator.SparrowSpeculator"
    assert RUNNERS["v1"].drafter_class("eagle") == "vllm.v1.spec_decode.eagle.EagleProposer"
    for name, runner in RUNNERS.items():
        module, cls = runner.adapter.rsplit(".", 1)
        adapter_class = getattr(__import__(module, fromlist=[cls]), cls)
        assert adapter_class.adapter_name == name  # what `sparrow_adapter` reports


def test_the_drafting_adapter_is_the_speculator_on_v2_and_the_drafter_on_v1():
    assert drafting_adapter(SimpleNamespace(speculator="s", drafter=None)) == "s"
    assert drafting_adapter(SimpleNamespace(drafter="d")) == "d"
    assert drafting_adapter(SimpleNamespace()) is None
