"""A Sparrow speculative config reaches vLLM the same way whatever form the user gives it:
`--speculative-config` JSON or vLLM's flags (`--spec-method/--spec-model/--spec-tokens`),
parsed by vLLM's own parser and built by `EngineArgs.create_engine_config` (no engine)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from sparrow_vllm.errors import SparrowConfigError
from sparrow_vllm.serving.serving_options import SparrowServingOptions
from sparrow_vllm.serving.vllm.scheduler_draft_length import dynamic_table
from tests.unit.helpers import engine_config

TOY_WORLD = Path(__file__).resolve().parents[4] / "models" / "toy-world"
TARGET = str(TOY_WORLD / "target")
DRAFT = str(TOY_WORLD / "sparrow-draft")
FLAGS = ["--spec-method", "sparrow", "--spec-model", DRAFT, "--spec-tokens", "4"]


def _engine_config(engine_args_cls, *argv: str):
    return engine_config(engine_args_cls, TARGET, *argv)


def _speculative_config(engine_args_cls, *argv: str):
    return _engine_config(engine_args_cls, *argv).speculative_config


def _json(engine_args_cls, spec: dict):
    return _speculative_config(engine_args_cls, "--speculative-config", json.dumps(spec))


@pytest.fixture(scope="module")
def json_form(engine_args_cls):
    return _json(engine_args_cls, {"method": "sparrow", "model": DRAFT, "num_speculative_tokens": 4})


def _same(a, b) -> None:
    from sparrow_vllm.serving.vllm.patch_common import is_sparrow_draft

    assert is_sparrow_draft(a) and is_sparrow_draft(b)
    assert (a.method, a.model, a.num_speculative_tokens, a.num_speculative_tokens_per_batch_size) == (
        b.method, b.model, b.num_speculative_tokens, b.num_speculative_tokens_per_batch_size)
    assert SparrowServingOptions.of(a) == SparrowServingOptions.of(b)
    assert a == b


def test_flag_form_builds_the_json_forms_sparrow_config(engine_args_cls, json_form):
    flags = _speculative_config(engine_args_cls, *FLAGS)
    _same(flags, json_form)
    assert flags.method == "eagle" and flags.num_speculative_tokens_per_batch_size == dynamic_table(4)
    # the same fields given in Python (LLM(..., spec_method="sparrow", ...))
    python = engine_args_cls(model=TARGET, dtype="float32", max_model_len=1024, spec_method="sparrow",
                             spec_model=DRAFT, spec_tokens=4).create_engine_config().speculative_config
    _same(python, json_form)


def test_flags_and_json_mix_like_vllm_and_take_sparrow_options(engine_args_cls):
    spec = {"text_row_budget": 5000, "adaptive_draft_length": False}
    mixed = _speculative_config(engine_args_cls, *FLAGS, "--speculative-config", json.dumps(spec))
    _same(mixed, _json(engine_args_cls, {"method": "sparrow", "model": DRAFT, "num_speculative_tokens": 4, **spec}))
    assert SparrowServingOptions.of(mixed).text_row_budget == 5000
    assert mixed.num_speculative_tokens_per_batch_size is None
    # the method in the JSON, the draft and K as flags
    _same(_speculative_config(engine_args_cls, "--spec-model", DRAFT, "--spec-tokens", "4",
                              "--speculative-config", '{"method": "sparrow"}'), _json(
        engine_args_cls, {"method": "sparrow", "model": DRAFT, "num_speculative_tokens": 4}))


def test_flag_form_validates_the_draft_at_start_up(engine_args_cls):
    eagle = str(TOY_WORLD / "eagle-draft")
    with pytest.raises(SparrowConfigError, match="expected \\['SparrowDraftForCausalLM'\\]"):
        _speculative_config(engine_args_cls, "--spec-method", "sparrow", "--spec-model", eagle, "--spec-tokens", "4")
    with pytest.raises(SparrowConfigError, match="--spec-model"):
        _speculative_config(engine_args_cls, "--spec-method", "sparrow", "--spec-tokens", "4")
    with pytest.raises(SparrowConfigError, match="text_block_size"):
        _speculative_config(engine_args_cls, *FLAGS, "--speculative-config", '{"text_block_size": 0}')


def test_flag_and_json_key_conflict_is_vllms_error(engine_args_cls):
    with pytest.raises(ValueError, match="mutually exclusive"):
        _speculative_config(engine_args_cls, *FLAGS, "--speculative-config", json.dumps({"model": DRAFT}))


def test_a_sparrow_draft_under_method_eagle_is_refused_at_start_up(engine_args_cls):
    """Run as "eagle" the draft would get no Sparrow options and skip Sparrow's checks."""
    for argv in (["--speculative-config", json.dumps({"method": "eagle", "model": DRAFT, "num_speculative_tokens": 4})],
                 ["--spec-method", "eagle", "--spec-model", DRAFT, "--spec-tokens", "4"]):
        with pytest.raises(SparrowConfigError, match='"method": "sparrow"'):
            _speculative_config(engine_args_cls, *argv)


def test_workers_refuse_a_sparrow_draft_without_sparrow_options(engine_args_cls, json_form):
    """A speculative config not built by entry 1 (no `sparrow_options`) is an error that
    names the cause, never silent defaults: in the options themselves and in each caller."""
    from sparrow_vllm.serving.serving_options import OPTIONS_ATTRIBUTE
    from sparrow_vllm.serving.vllm.draft_loading import SparrowDraftSetup

    assert SparrowServingOptions.of(json_form) == SparrowServingOptions()
    bare = SimpleNamespace(method="eagle", draft_model_config=json_form.draft_model_config)
    with pytest.raises(SparrowConfigError, match='"method": "sparrow"'):
        SparrowServingOptions.of(bare)
    config = _engine_config(engine_args_cls, "--speculative-config", json.dumps(
        {"method": "sparrow", "model": DRAFT, "num_speculative_tokens": 4, "text_block_size": 32}))
    assert SparrowDraftSetup(config).options.text_block_size == 32
    delattr(config.speculative_config, OPTIONS_ATTRIBUTE)
    with pytest.raises(SparrowConfigError, match="no Sparrow options"):
        SparrowDraftSetup(config)  # both runner adapters build this in the worker


def test_local_argmax_reduction_takes_the_argmax_of_the_drafts_lm_head(engine_args_cls):
    """`use_local_argmax_reduction` (vLLM's vocab-parallel greedy drafting): a draft's own
    LM head needs no reduction; a target language model without an LM head to reduce over
    is refused when the drafter is built (start-up), naming the fix. The target-head path
    runs in tests/integration/test_toy_world.py."""
    import torch
    from torch import nn

    from sparrow_vllm.serving.vllm.draft_architecture import SparrowDraftForCausalLM
    from sparrow_vllm.serving.vllm.draft_loading import SparrowDraftSetup

    own = SparrowDraftForCausalLM()
    own.own_lm_head = torch.randn(50, 8)
    hidden = torch.randn(5, 8)
    assert own.supports_top_tokens()
    assert torch.equal(own.get_top_tokens(hidden), (hidden @ own.own_lm_head.t()).argmax(dim=-1))
    config = _engine_config(engine_args_cls, "--speculative-config", json.dumps(
        {"method": "sparrow", "model": DRAFT, "num_speculative_tokens": 4, "use_local_argmax_reduction": True}))
    with pytest.raises(SparrowConfigError, match="remove use_local_argmax_reduction"):
        SparrowDraftSetup(config).build_drafter(nn.Module(), torch.float32, torch.device("cpu"))
