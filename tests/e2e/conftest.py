"""`vllm serve` on 127.0.0.1 with the toy models of the integration suite."""

from __future__ import annotations

from pathlib import Path

import pytest

from sparrow_vllm.bench.server import CPU_SERVE_ARGS, VllmServer
from tests.toy_models import runner_env

SERVE_ARGS = [*CPU_SERVE_ARGS, "--max-model-len", "1024", "--max-num-seqs", "4",
              "--gpu-memory-utilization", "0.3", "--limit-mm-per-prompt", '{"video": 1, "image": 1}']


@pytest.fixture
def start_server(tmp_path):
    servers: list[VllmServer] = []

    def start(target: Path, extra: list[str], runner: str = "v1") -> VllmServer:
        log = tmp_path / f"serve-{len(servers)}.log"
        server = VllmServer(target, [*SERVE_ARGS, *extra], log, env=runner_env(runner))
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()
