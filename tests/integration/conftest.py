"""Integration tests share the session's toy models (tests/conftest.py) and run on both of
vLLM's model runners: module-scoped fixtures take `runner` ("v1" or "v2")."""

import pytest

from tests.toy_models import RUNNERS


@pytest.fixture(scope="module", params=RUNNERS)
def runner(request) -> str:
    return request.param
