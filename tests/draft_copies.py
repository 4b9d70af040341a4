"""Serving-time variants of a trained test draft, made by editing a copy's config.json."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

UNSET: Any = object()


def with_visual_budget(draft: Path, root: Path, budget: int | str, window: int | None = UNSET) -> Path:
    """A copy of `draft` under `root` with `visual_budget` set (and `window`, when given):
    no retraining, so a draft trained without visual rows drafts over kept ones less well;
    exactness does not depend on that."""
    copy = root / f"{draft.name}-budget-{budget}"
    shutil.copytree(draft, copy)
    config = json.loads((copy / "config.json").read_text())
    sparrow = {**config["sparrow"], "visual_budget": budget}
    if window is not UNSET:
        sparrow["window"] = window
    config["sparrow"] = sparrow
    (copy / "config.json").write_text(json.dumps(config))
    return copy
