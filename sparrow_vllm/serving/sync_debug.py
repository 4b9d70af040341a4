"""CUDA's sync-debug mode around the drafter's steps, inside a running engine
(scripts/gpu_check.py turns it on; serving never does unless asked).

`SPARROW_SYNC_DEBUG` (read when this module is first imported, so set it before the engine
starts) and `on_decode_steps`, the decorator of `TextAnchoredDrafter.step`:

- unset or "0" (the default): the decorator returns the method itself; steps are untouched;
- "error": every decode step (each request's query at most K + 1 rows, the drafter's own
  test of a decode step) runs under `torch.cuda.set_sync_debug_mode("error")`, so its
  first synchronising call raises (and stops the engine);
- "warn": every step runs under "warn" mode, and the synchronising calls torch reports
  (one Python warning each) are counted, split into decode steps and other steps (prefill
  chunks), with where each came from (file:line torch attributes the warning to).

`SPARROW_SYNC_DEBUG_OUT=DIR`: after every step the counts are written to
DIR/sync_debug_<pid>.json (one file per engine process). `stats()` returns them in-process.
Without CUDA the mode cannot be set: steps are counted and a WARNING says so once.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

logger = logging.getLogger(__name__)

ENV_MODE = "SPARROW_SYNC_DEBUG"
ENV_OUT = "SPARROW_SYNC_DEBUG_OUT"
MODES = ("warn", "error")
SYNC_WARNING = "synchronizing"  # torch's text: "called a synchronizing CUDA operation"
_FIRST_KEPT = 20  # decode step indices with syncs kept in the counts

F = TypeVar("F", bound=Callable[..., Any])


def mode_from_env(environ: dict[str, str] | None = None) -> str | None:
    """The mode asked for, None when off; an unknown value stops start-up naming the fix."""
    value = (environ if environ is not None else os.environ).get(ENV_MODE, "").strip().lower()
    if value in ("", "0"):
        return None
    if value not in MODES:
        raise ValueError(f"{ENV_MODE}={value!r}: use 'warn' (count synchronising calls) or "
                         "'error' (raise at the first one on a decode step), or unset it")
    return value


def _empty_stats(mode: str) -> dict[str, Any]:
    return {"mode": mode, "pid": os.getpid(), "cuda": None,
            "steps": {"decode": 0, "other": 0}, "syncs": {"decode": 0, "other": 0},
            "decode_steps_with_syncs": 0, "first_decode_steps_with_syncs": [],
            "where": {"decode": {}, "other": {}}, "error": None}


_STATS: dict[str, Any] | None = None


def stats() -> dict[str, Any] | None:
    """The counts of this process (None when the mode is off)."""
    return _STATS


def _set_mode(mode: str | int) -> None:
    import torch

    torch.cuda.set_sync_debug_mode(mode)


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _write(out_dir: str | None) -> None:
    if out_dir and _STATS is not None:
        path = Path(out_dir) / f"sync_debug_{_STATS['pid']}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(_STATS, indent=1) + "\n")


def _is_decode(drafter: Any, inputs: Any) -> bool:
    """The drafter's own test of a decode step (TextAnchoredDrafter.step)."""
    return inputs.max_query_len <= drafter.num_speculative_tokens + 1


def _count(kind: str, index: int, caught: list[warnings.WarningMessage]) -> None:
    """Count the step's synchronising calls; hand its other warnings on."""
    assert _STATS is not None
    syncs = [w for w in caught if SYNC_WARNING in str(w.message)]
    for w in caught:
        if SYNC_WARNING not in str(w.message):
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    if not syncs:
        return
    _STATS["syncs"][kind] += len(syncs)
    where = _STATS["where"][kind]
    for w in syncs:
        key = f"{w.filename}:{w.lineno}"
        where[key] = where.get(key, 0) + 1
    if kind == "decode":
        _STATS["decode_steps_with_syncs"] += 1
        if len(_STATS["first_decode_steps_with_syncs"]) < _FIRST_KEPT:
            _STATS["first_decode_steps_with_syncs"].append(index)


def wrap(step: F, mode: str, out_dir: str | None = None) -> F:
    """`step` (TextAnchoredDrafter.step) under CUDA's sync-debug `mode`, counted."""
    global _STATS
    _STATS = _empty_stats(mode)

    @functools.wraps(step)
    def debugged(self: Any, inputs: Any, *args: Any, **kwargs: Any) -> Any:
        assert _STATS is not None
        kind = "decode" if _is_decode(self, inputs) else "other"
        if _STATS["cuda"] is None:
            _STATS["cuda"] = _cuda()
            if not _STATS["cuda"]:
                logger.warning("%s=%s: no CUDA device, so no sync-debug mode; steps are only counted",
                               ENV_MODE, mode)
        watched = _STATS["cuda"] and (mode == "warn" or kind == "decode")
        index = _STATS["steps"][kind]
        _STATS["steps"][kind] += 1
        caught: list[warnings.WarningMessage] = []
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                if watched:
                    _set_mode(mode)
                try:
                    return step(self, inputs, *args, **kwargs)
                finally:
                    if watched:
                        _set_mode(0)
        except RuntimeError as err:
            _STATS["error"] = f"{kind} step {index}: {err}"
            raise
        finally:
            _count(kind, index, caught)
            _write(out_dir)

    return debugged  # type: ignore[return-value]


def on_decode_steps(step: F) -> F:
    """Decorator of TextAnchoredDrafter.step: itself unless SPARROW_SYNC_DEBUG is set."""
    mode = mode_from_env()
    if mode is None:
        return step
    logger.warning("%s=%s: the drafter's steps run under CUDA's sync-debug mode (debugging only)",
                   ENV_MODE, mode)
    return wrap(step, mode, os.environ.get(ENV_OUT))
