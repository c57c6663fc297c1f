"""The engine: one-way stack from the public calls down to the streaming loop.

Sub-layers (import-linter enforces them, pyproject.toml): ``embed``/``slide_embeddings``/
``two_stage`` over ``features`` over ``distributed`` over ``bag_runner`` over
``extract``/``report``/``selection``/``progress`` over ``pipeline`` (the streaming loop) over
``tfrecord_decode``, ``outcome`` (per-slide outcomes, the run's summary.json / failures.csv)
and ``protocols`` (the Extractor protocol). Nothing is imported here, so ``import slideflow.engine.x`` loads only x.
"""
