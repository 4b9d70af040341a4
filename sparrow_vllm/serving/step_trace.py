"""StepTrace: every scheduled step of an engine as JSON lines, for replaying the draft-length
policy offline (sparrow_vllm/analysis/trace_replay.py).

Opt-in: set SPARROW_STEP_TRACE=PATH in the environment of `vllm serve` (or of any process
that builds a vLLM engine). The scheduler (serving/vllm/patches.py, ledger entry 10) then writes
PATH, for any engine: without speculation, with eagle, or with Sparrow at a fixed K, a
batch-size table or the adaptive draft length. It runs beside the scheduler on the host and
reads nothing from the device. One line per event, in the order the scheduler saw them
(with asynchronous scheduling, step n + 1 is scheduled before step n's output is back):

    {"event": "engine", "version": 2, "method": "sparrow", "policy": "adaptive",
     "num_speculative_tokens": 4, "choices": [0, 1, 2, 3, 4], "runner": "v2"}
    {"event": "schedule", "step": 7, "num_draft_tokens": 3, "seeded": false,
     "requests": [["req-a", 4, 1620, true], ["req-b", 512, 1024, false]]}
    {"event": "output", "step": 7, "seconds": 0.0213,
     "verified": [["req-a", 3, 2]]}

schedule: each scheduled request as [id, query tokens, context tokens after the step,
samples this step], and K', the drafts the step's sampling requests propose after it (the
next step verifies them); `seeded`: K' was pinned to num_speculative_tokens by a seeded request.
output: the step's time as the policy measures it (from when it was scheduled, or from the
previous output when steps overlap), and per request that verified drafts [id, drafts,
drafts accepted]. policy: "none" (no speculation), "fixed", "table" (vLLM's
num_speculative_tokens_per_batch_size) or "adaptive".
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

TRACE_ENV = "SPARROW_STEP_TRACE"
TRACE_VERSION = 2  # version 1 (still read) named num_speculative_tokens max_drafts, num_draft_tokens k


class StepTrace:
    """Appends one JSON line per event to `path` (line-buffered: a server stopped with
    SIGTERM keeps every step it finished)."""

    def __init__(self, path: Path, header: dict[str, Any]) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._file = path.open("w", buffering=1)
        self._write({"event": "engine", "version": TRACE_VERSION, **header})
        logger.info("Sparrow step trace: writing every scheduled step to %s (%s)", path, TRACE_ENV)

    @classmethod
    def from_env(cls, header: dict[str, Any]) -> StepTrace | None:
        """The trace SPARROW_STEP_TRACE asks for, or None when it is unset or empty."""
        path = os.environ.get(TRACE_ENV, "")
        return cls(Path(path), header) if path else None

    def scheduled(self, step: int, requests: list[tuple[str, int, int, bool]], k: int, seeded: bool) -> None:
        self._write({"event": "schedule", "step": step, "num_draft_tokens": k, "seeded": seeded,
                     "requests": [list(r) for r in requests]})

    def finished(self, step: int, seconds: float, verified: list[tuple[str, int, int]]) -> None:
        self._write({"event": "output", "step": step, "seconds": seconds, "verified": [list(v) for v in verified]})

    def close(self) -> None:
        self._file.close()

    def _write(self, record: dict[str, Any]) -> None:
        self._file.write(json.dumps(record, separators=(",", ":")) + "\n")


def read_trace(path: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(the engine header, the step events in order) of a trace file; a line cut short by
    a killed process ends the trace."""
    lines = Path(path).read_text().splitlines()
    if not lines:
        raise ValueError(f"{path}: an empty step trace (was {TRACE_ENV} set for the engine?)")
    header = json.loads(lines[0])
    version_1 = False
    if header.get("event") == "engine" and header.get("version") == 1:
        header["num_speculative_tokens"] = header.pop("max_drafts")
        header["version"] = TRACE_VERSION
        version_1 = True
    if header.get("event") != "engine" or header.get("version") != TRACE_VERSION:
        raise ValueError(f"{path}: not a version-{TRACE_VERSION} Sparrow step trace (first line {lines[0][:80]!r})")
    events = []
    for line in lines[1:]:
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            break
        if version_1 and "k" in event:
            event["num_draft_tokens"] = event.pop("k")
        events.append(event)
    return header, events
