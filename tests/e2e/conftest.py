"""`vllm serve` on 127.0.0.1 with the toy models of the integration suite."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from pathlib import Path

import pytest
import requests

from tests.toy_models import ENGINE_ENV

VENV_BIN = Path(os.sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_command(target: Path, port: int, extra: list[str]) -> list[str]:
    return [
        str(VENV_BIN / "vllm"), "serve", str(target),
        "--host", "127.0.0.1", "--port", str(port),
        "--dtype", "float32", "--enforce-eager", "--max-model-len", "1024",
        "--max-num-seqs", "4", "--gpu-memory-utilization", "0.3",
        "--limit-mm-per-prompt", '{"video": 1, "image": 1}',
        *extra,
    ]


class Server:
    def __init__(self, cmd: list[str], port: int, log: Path) -> None:
        self.port = port
        self.log = log
        self._log_file = log.open("w")
        self.proc = subprocess.Popen(
            cmd, env={**os.environ, **ENGINE_ENV}, stdout=self._log_file, stderr=subprocess.STDOUT
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def wait_ready(self, timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited {self.proc.returncode}:\n{self.log.read_text()[-5000:]}")
            try:
                if requests.get(self.url + "/health", timeout=2).status_code == 200:
                    return
            except requests.ConnectionError:
                pass
            time.sleep(1)
        raise AssertionError(f"server not ready in {timeout}s:\n{self.log.read_text()[-5000:]}")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._log_file.close()


@pytest.fixture
def start_server(tmp_path):
    servers: list[Server] = []

    def start(target: Path, extra: list[str]) -> Server:
        port = free_port()
        server = Server(serve_command(target, port, extra), port, tmp_path / f"serve-{port}.log")
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()
