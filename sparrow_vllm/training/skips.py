"""Why a dataset row cannot be used, and the count of the rows skipped for each reason."""

from __future__ import annotations

import collections
from dataclasses import dataclass, field
from typing import Any

from sparrow_vllm.errors import SparrowError

SKIP_REASONS = ("bad_record", "missing_file", "unreadable_media", "too_long")
EXAMPLES_PER_REASON = 5


class SampleError(SparrowError):
    """A row that cannot be used; ``reason`` is one of SKIP_REASONS."""

    def __init__(self, reason: str, message: str) -> None:
        if reason not in SKIP_REASONS:
            raise ValueError(f"unknown skip reason {reason!r}; use one of {SKIP_REASONS}")
        super().__init__(message)
        self.reason = reason

    def __reduce__(self) -> tuple[Any, ...]:  # picklable across DataLoader workers
        return SampleError, (self.reason, str(self))


@dataclass
class SkipReport:
    counts: collections.Counter = field(default_factory=collections.Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)

    def add(self, sample_id: str, error: SampleError) -> None:
        self.counts[error.reason] += 1
        shown = self.examples.setdefault(error.reason, [])
        if len(shown) < EXAMPLES_PER_REASON:
            shown.append(f"{sample_id}: {error}")

    def total(self) -> int:
        return sum(self.counts.values())

    def summary(self) -> str:
        """One line, e.g. 'skipped 3 rows: missing_file 2 (e.g. ...), too_long 1 (e.g. ...)'."""
        parts = [f"{reason} {self.counts[reason]} (e.g. {self.examples[reason][0]})"
                 for reason in SKIP_REASONS if self.counts[reason]]
        return f"skipped {self.total()} rows" + (": " + ", ".join(parts) if parts else "")
