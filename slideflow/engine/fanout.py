"""The old home of several-extractors-in-one-pass (`slideflow.fanout`, a legacy path).

The engine calls `pipeline.run_many` itself: one read, and per extractor its re-chunking
(`engine.rebatch.Rebatcher`) and its overlapped batch runner, so each bag is byte-identical to
the one a separate run writes. `run_features_many` stays for code that imported it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from .pipeline import Batch, Sink, run_many
from .protocols import Extractor


def run_features_many(extractors: Sequence[Extractor], source: Iterable[Batch], sinks: Sequence[Sink],
                      *, normalizer: Any = None, queue_depth: int = 4,
                      batch_sizes: Sequence[int | None] | None = None) -> int:
    """`pipeline.run_many`'s tile count (the old signature: extractors first)."""
    return run_many(source, extractors, sinks, normalizer=normalizer,
                    queue_depth=queue_depth, batch_sizes=batch_sizes).tiles
