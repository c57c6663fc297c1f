"""Several extractors in one pass over a slide's tiles (`slideflow features -e a,b`).

Each source batch is read (and stain-normalised) once, then re-chunked for every extractor
to exactly the batch sizes a run of that extractor alone would see (full batches of its
`batch_size`, a shorter last one), so each bag is byte-identical to the one a separate run
writes, while the slide is read and decoded once. The loop itself is the engine's
(`pipeline.run_many`): every extractor gets its own overlapped batch runner, and its
re-chunking (`engine.rebatch.Rebatcher`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from .pipeline import Batch, Sink, run_many
from .protocols import Extractor


def run_features_many(extractors: Sequence[Extractor], source: Iterable[Batch], sinks: Sequence[Sink],
                      *, normalizer: Any = None, queue_depth: int = 4,
                      batch_sizes: Sequence[int | None] | None = None) -> int:
    """Stream `source` once through every extractor into its sink; returns the tile count.

    The engine's own loop (`pipeline.run_many`): one read, and per extractor its re-chunking
    (`Rebatcher`) and its overlapped batch runner.
    """
    return run_many(source, extractors, sinks, normalizer=normalizer,
                    queue_depth=queue_depth, batch_sizes=batch_sizes).tiles
