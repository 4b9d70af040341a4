"""Shared test set-up: offline, CPU, deterministic."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("VLLM_TARGET_DEVICE", "cpu")


import pytest  # noqa: E402

from tests.toy_models import build_family_models, build_toy_models  # noqa: E402


@pytest.fixture(scope="session")
def toy_models(tmp_path_factory):
    return build_toy_models(tmp_path_factory.mktemp("toy-models"))


@pytest.fixture(scope="session")
def family_models(tmp_path_factory):
    return build_family_models(tmp_path_factory.mktemp("family-models"))
