"""One exception hierarchy: every error slideflow raises derives from `SlideflowError`.

Messages name the file involved and say how to fix the problem, because the person reading
them is usually looking at a batch log, not at the code.
"""

from __future__ import annotations


class SlideflowError(Exception):
    """Base class of every error raised by slideflow."""


class SlideError(SlideflowError):
    """A slide cannot be opened or read."""


class SlideNotFoundError(SlideError, FileNotFoundError):
    """The slide path does not exist."""


class UnsupportedSlideError(SlideError):
    """No backend can open the slide (or the requested backend cannot)."""


class MissingMPPError(SlideError):
    """The slide carries no microns-per-pixel value and none was given."""


class SlideReadError(SlideError):
    """A region read failed (truncated or corrupt file)."""


class UnsupportedChannelsError(SlideError):
    """The slide is not RGB brightfield and no channel rule applies."""


class NoTissueError(SlideError):
    """No tile survived QC, ROI and filters."""


class ROIError(SlideflowError):
    """An ROI file cannot be parsed."""


class TFRecordError(SlideflowError):
    """A TFRecord is corrupt, truncated or does not match its index."""


class BagError(SlideflowError):
    """A feature bag (.pt/.h5/.zarr) is missing, corrupt or inconsistent."""


class BagsConfigMismatchError(BagError):
    """An output folder already holds bags made with different settings."""


class ExtractorNotFound(SlideflowError, KeyError):
    """Unknown extractor name, or its distribution is not installed."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class WeightsError(SlideflowError):
    """Weights are missing, gated, unreadable or do not fit the architecture."""


class UnsafeConfigError(SlideflowError):
    """A bags_config.json names something that is not a registered extractor."""


class BagsConfigError(BagError, UnsafeConfigError):
    """A bags_config.json that is not a readable JSON object (the message names the file)."""


class NormalizerError(SlideflowError):
    """A stain normaliser cannot be fitted or applied."""


class ProjectError(SlideflowError):
    """A project folder, its annotations or its datasets are invalid."""


class DatasetError(SlideflowError):
    """A dataset selection is invalid (unknown column, no slides, ...)."""


class InvalidArgumentError(SlideflowError, ValueError):
    """An argument is out of range or of the wrong kind (checked where it enters)."""


class OutputConflictError(SlideflowError):
    """Two inputs would share one output, or a folder already belongs to another run's
    configuration."""


class SlideEncoderNotFound(ExtractorNotFound):
    """Unknown slide-encoder name, or its distribution is not installed."""


class TileMismatchError(SlideflowError):
    """Tile features do not fit a slide encoder (other extractor, width or tile geometry)."""


def exception_text(exc: BaseException) -> str:
    """An exception's message, never empty: a MemoryError (a `ulimit -v` or a job's memory
    request reached) and other bare exceptions get a sentence saying what happened."""
    text = str(exc).strip()
    if text:
        return text
    if isinstance(exc, MemoryError):
        return ("out of memory (a memory limit such as `ulimit -v` or the job's memory request "
                "was reached); give the job more memory or use fewer --workers")
    return f"{type(exc).__name__} raised without a message"
