"""Several extractors in one pass over a slide's tiles (`slideflow features -e a,b`).

Each source batch is read (and stain-normalised) once, then re-chunked for every extractor
to exactly the batch sizes a run of that extractor alone would see (full batches of its
`batch_size`, a shorter last one), so each bag is byte-identical to the one a separate run
writes, while the slide is read and decoded once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

from .pipeline import Batch, Sink, _Prefetcher, forward_batch, run_features
from .rebatch import Rebatcher


def run_features_many(extractors: Sequence[Any], source: Iterable[Batch], sinks: Sequence[Sink],
                      *, normalizer: Any = None, queue_depth: int = 4) -> int:
    """Stream `source` once through every extractor into its sink; returns the tile count.

    One extractor is the plain engine (`pipeline.run_features`).
    """
    if len(extractors) != len(sinks):
        raise ValueError(f"{len(extractors)} extractors but {len(sinks)} sinks")
    if len(extractors) == 1:
        return run_features(extractors[0], source, sinks[0], normalizer=normalizer,
                            queue_depth=queue_depth).tiles
    transform: Callable | None = normalizer.transform if normalizer is not None else None
    chunkers = [Rebatcher(e.batch_size) for e in extractors]
    prefetch = _Prefetcher(source, transform, queue_depth)
    tiles_seen = 0
    try:
        for tiles, coords in prefetch:
            tiles_seen += len(tiles)
            for ext, chunker, sink in zip(extractors, chunkers, sinks):
                for t, c in chunker.push(tiles, coords):
                    sink(forward_batch(ext, t), c)
        for ext, chunker, sink in zip(extractors, chunkers, sinks):
            for t, c in chunker.flush():
                sink(forward_batch(ext, t), c)
    finally:
        prefetch.close()
    return tiles_seen
