"""Dataset: the slides of one or more sources, their annotations, one tile geometry.

    ds = P.dataset(tile_px=256, tile_um=128, filters={"site": ["A", "B"]})
    ds.slides(); ds.labels("subtype"); ds.extract_tiles(qc="otsu"); ds.manifest()

A slide belongs to the dataset when it has an annotation row that passes the filters and it is
present in a source, as a slide file or as a TFRecord of this geometry. Slide names are file
stems (folder names for DICOM folders). Datasets are immutable: `filter()` returns a new one.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from ..engine.extract import is_incomplete
from ..engine.features import SlideJob, generate_feature_bags
from ..errors import DatasetError
from ..io.tfrecord import get_tfrecord_label
from ..mil.splits import kfold_split
from ..slide.geometry import TileGeometry
from .annotations import (
    PATIENT,
    SLIDE,
    blank_annotations,
    column_labels,
    read_annotations,
    validate_annotations,
)
from .dataset_display import DatasetDisplay
from .dataset_index import Present, SourceIndex, load_config, norm_filters, tile_counts
from .dataset_work import extract_dataset
from .sources import Source

log = logging.getLogger("slideflow")


def dataset_geometry(tile_px: Any, tile_um: Any) -> TileGeometry | None:
    """The tile geometry a dataset was given (`TileGeometry.parse`, as `sf.WSI` and the CLI
    parse it), or None when it was given none."""
    if tile_px is None and tile_um is None:
        return None
    if tile_px is None or (tile_um is None and not isinstance(tile_px, TileGeometry)):
        raise DatasetError("give both tile_px and tile_um (or a TileGeometry as tile_px), "
                           "or neither")
    return TileGeometry.parse(tile_px, tile_um)


class Dataset(DatasetDisplay):
    """Slides + annotations + one tile geometry (`tile_px` px covering `tile_um`; `tile_px`
    may be a `TileGeometry`, then no `tile_um`), kept as `geometry` (None without one)."""

    def __init__(
        self,
        config: str | os.PathLike | Mapping[str, Any] | None = None,
        sources: str | Iterable[str] | None = None,
        tile_px: int | TileGeometry | None = None,
        tile_um: int | float | str | None = None,
        *,
        annotations: str | os.PathLike | pd.DataFrame | None = None,
        filters: Mapping[str, Any] | None = None,
        filter_blank: str | Iterable[str] | None = None,
        min_tiles: int = 0,
        root: str | os.PathLike | None = None,
    ):
        all_sources = load_config(config, root)
        if sources is None:
            names = list(all_sources)
        else:
            names = [sources] if isinstance(sources, str) else list(sources)
            unknown = [n for n in names if n not in all_sources]
            if unknown:
                raise DatasetError(f"unknown source(s) {unknown}; configured: "
                                   f"{sorted(all_sources)} (add one with P.add_source)")
        self._sources = {n: all_sources[n] for n in names}
        self.geometry = dataset_geometry(tile_px, tile_um)
        self.tile_px = self.geometry.tile_px if self.geometry else None
        self.tile_um = self.geometry.tile_um if self.geometry else None
        self.label = None
        if self.geometry is not None:
            self.label = get_tfrecord_label(self.tile_px, self.tile_um)
        self._files = SourceIndex(self._sources)
        if isinstance(annotations, pd.DataFrame):
            self._ann: pd.DataFrame | None = validate_annotations(annotations, "annotations")
        elif annotations is not None:
            self._ann = read_annotations(annotations)
        else:
            self._ann = None
        self.annotations_path = Path(annotations) if isinstance(annotations, (str, os.PathLike)) \
            else None
        self.filters = norm_filters(filters)
        self.filter_blank = [filter_blank] if isinstance(filter_blank, str) else \
            list(filter_blank or [])
        self.min_tiles = int(min_tiles or 0)
        self._check_columns()

    # -- construction helpers ------------------------------------------------------------------
    def _check_columns(self) -> None:
        cols = set(self._all_annotations().columns)
        for col in list(self.filters) + self.filter_blank:
            if col not in cols:
                raise DatasetError(f"filter column {col!r} is not in the annotations (columns: "
                                   f"{', '.join(sorted(cols))})")
        if self.min_tiles and self.label is None:
            raise DatasetError("min_tiles needs a tile geometry: give tile_px and tile_um")

    def _copy(self, **changes: Any) -> Dataset:
        new = object.__new__(Dataset)
        new.__dict__.update(self.__dict__)
        new.__dict__.update(changes)
        new._check_columns()
        return new

    def filter(self, filters: Mapping[str, Any] | None = None,
               filter_blank: str | Iterable[str] | None = None,
               min_tiles: int | None = None) -> Dataset:
        """A new Dataset narrowed further (filters on one column intersect; blank filters add
        up; min_tiles takes the larger value)."""
        merged = {k: list(v) for k, v in self.filters.items()}
        for col, values in norm_filters(filters).items():
            merged[col] = [v for v in merged[col] if v in values] if col in merged else values
        blank = [filter_blank] if isinstance(filter_blank, str) else list(filter_blank or [])
        return self._copy(filters=merged,
                          filter_blank=list(dict.fromkeys(self.filter_blank + blank)),
                          min_tiles=max(self.min_tiles, int(min_tiles or 0)))

    def with_geometry(self, tile_px: int | TileGeometry,
                      tile_um: int | float | str | None = None) -> Dataset:
        """The same selection at another tile geometry."""
        geo = TileGeometry.parse(tile_px, tile_um)
        return self._copy(geometry=geo, tile_px=geo.tile_px, tile_um=geo.tile_um,
                          label=get_tfrecord_label(geo.tile_px, geo.tile_um))

    # -- annotations ---------------------------------------------------------------------------
    def _all_annotations(self) -> pd.DataFrame:
        if self._ann is not None:
            return self._ann
        names = set(self._files.slides())
        if self.label is not None:
            names |= set(self._files.tfrecords(self.label))
        return blank_annotations(names)

    def _candidates(self) -> pd.DataFrame:
        """Annotation rows passing the column filters (presence not checked)."""
        df = self._all_annotations()
        keep = pd.Series(True, index=df.index)
        for col, values in self.filters.items():
            keep &= df[col].isin(values)
        for col in self.filter_blank:
            keep &= df[col] != ""
        return df[keep]

    def _present(self) -> dict[str, Present]:
        """{slide: Present(source, slide file, tfrecord)} for candidate slides found somewhere."""
        return self._files.present(self._candidates()[SLIDE], self.label, self.min_tiles)

    @property
    def annotations(self) -> pd.DataFrame:
        """Annotation rows of the dataset's slides (strings; a copy)."""
        names = set(self._present())
        df = self._candidates()
        return df[df[SLIDE].isin(names)].reset_index(drop=True).copy()

    # -- slides --------------------------------------------------------------------------------
    def slides(self) -> list[str]:
        """Names of the dataset's slides, sorted."""
        return sorted(self._present())

    def __len__(self) -> int:
        return len(self._present())

    def __contains__(self, slide: object) -> bool:
        return slide in self._present()

    def missing_slides(self) -> list[str]:
        """Annotated slides (passing the filters) found in no source."""
        files = self._files.slides()
        tfrs = self._files.tfrecords(self.label) if self.label else {}
        return sorted(n for n in self._candidates()[SLIDE] if n not in files and n not in tfrs)

    def patients(self) -> dict[str, str]:
        """{slide: patient}."""
        df = self.annotations
        return dict(zip(df[SLIDE], df[PATIENT]))

    def slide_sources(self) -> dict[str, Source]:
        """{slide: the source it belongs to}."""
        return {n: v.source for n, v in sorted(self._present().items())}

    def slide_paths(self, as_dict: bool = False, source: str | None = None
                    ) -> list[Path] | dict[str, Path]:
        """Slide files of the dataset's slides (slides known only by a TFRecord are left out)."""
        paths = {n: v.slide for n, v in sorted(self._present().items())
                 if v.slide is not None and (source is None or v.source.name == source)}
        return paths if as_dict else list(paths.values())

    def rois(self) -> dict[str, Path]:
        """{slide: ROI file} for slides with `<roi folder>/<slide>.csv` (or .geojson/.json)."""
        out = {}
        for name, src in self.slide_sources().items():
            roi = src.roi_file(name)
            if roi is not None:
                out[name] = roi
        return out

    def annotation_masks(self) -> dict[str, Path]:
        """{slide: tissue-mask image} from a `mask_path` annotation column (a manifest's; blank
        cells skipped): the mask replaces the QC method for that slide."""
        df = self.annotations
        if "mask_path" not in df.columns:
            return {}
        return {name: Path(v) for name, v in zip(df[SLIDE], df["mask_path"]) if v}

    def annotation_mpp(self) -> dict[str, float]:
        """{slide: MPP} from an `mpp` annotation column (blank cells skipped)."""
        df = self.annotations
        if "mpp" not in df.columns:
            return {}
        out = {}
        for name, value in zip(df[SLIDE], df["mpp"]):
            if value == "":
                continue
            try:
                mpp = float(value)
            except ValueError:
                raise DatasetError(f"slide {name!r}: mpp {value!r} is not a number") from None
            if not mpp > 0:
                raise DatasetError(f"slide {name!r}: mpp must be positive, got {value!r}")
            out[name] = mpp
        return out

    # -- labels --------------------------------------------------------------------------------
    def labels(self, column: str, use_float: bool = False, format: str = "index"
               ) -> tuple[dict[str, Any], list[Any]]:
        """({slide: label}, unique labels); see `slideflow.project.annotations.column_labels`
        (categorical -> index, `format='name'` -> string, `use_float=True` -> floats)."""
        return column_labels(self.annotations, column, use_float, format)

    # -- tile store ----------------------------------------------------------------------------
    def _need_label(self) -> str:
        if self.label is None:
            raise DatasetError("this dataset has no tile geometry: create it with tile_px and "
                               "tile_um (P.dataset(tile_px=..., tile_um=...))")
        return self.label

    @property
    def tfrecords_folder(self) -> Path:
        """`<tfrecords>/<label>` of the first source (see `tfrecords_folders` for all)."""
        folders = self.tfrecords_folders()
        if not folders:
            raise DatasetError("no source has a 'tfrecords' folder")
        return next(iter(folders.values()))

    def tfrecords_folders(self) -> dict[str, Path]:
        """{source: `<tfrecords>/<label>`}."""
        label = self._need_label()
        return {n: s.tfrecords / label for n, s in self._sources.items()
                if s.tfrecords is not None}

    def tfrecords(self, include_incomplete: bool = False, as_dict: bool = False
                  ) -> list[Path] | dict[str, Path]:
        """Existing TFRecords of the dataset's slides at this geometry.

        A TFRecord whose `.extract.json` says its extraction did not finish is left out
        unless `include_incomplete`.
        """
        self._need_label()
        out = {n: v.tfrecord for n, v in sorted(self._present().items())
               if v.tfrecord is not None}
        if not include_incomplete:
            out = {n: p for n, p in out.items() if not is_incomplete(p)}
        return out if as_dict else list(out.values())

    def manifest(self) -> dict[str, int]:
        """{slide: number of tiles} read from the TFRecord indexes."""
        return tile_counts(self.tfrecords(as_dict=True))

    # -- work ----------------------------------------------------------------------------------
    def extract_tiles(self, **kwargs: Any):
        """Extract tiles of every slide to TFRecords; see `slideflow.extract.ExtractOptions`
        and `slideflow.dataset_work.extract_dataset` for the options. Returns an
        `ExtractionSummary`."""
        self._need_label()
        return extract_dataset(self, **kwargs)

    def generate_feature_bags(self, extractor: Any, outdir: str | os.PathLike | None = None, *,
                              source: str = "auto", **kwargs: Any):
        """Feature bags for every slide: from its TFRecord when extracted, else from the slide
        (`source='slides' | 'tfrecords'` forces one); options as
        `slideflow.features.generate_feature_bags`. Returns a `BagsReport`."""
        return generate_feature_bags(self.feature_jobs(source), extractor, outdir, self.tile_px,
                                     self.tile_um, **kwargs)

    # -- loaders -------------------------------------------------------------------------------
    def _loader_labels(self, labels: str | Mapping[str, Any] | None) -> Mapping[str, Any] | None:
        """A label column name -> {slide: label index/float}; dicts and None pass through."""
        if labels is None or isinstance(labels, Mapping):
            return labels
        values, _ = self.labels(labels)
        return values

    def tensorflow(self, labels: str | Mapping[str, Any] | None = None, batch_size: int | None
                   = None, **kwargs: Any):
        """A `tf.data.Dataset` over this dataset's TFRecords (`slideflow.io.tensorflow`).

        `labels` is an annotation column (categorical -> index, as `labels(column)`) or a
        {slide: label} dict. Other keywords (``infinite``, ``augment``, ``standardize``,
        ``incl_slidenames``, ``incl_loc``, ``shard``, ``shuffle``, ``seed``, ``balance``, ...)
        are those of `slideflow.io.tensorflow.interleave`. Imports TensorFlow.
        """
        from ..io import tensorflow as sftf

        tfrecords = self.tfrecords()
        if not tfrecords:
            raise DatasetError("no TFRecords for this dataset: run extract_tiles() first")
        return sftf.interleave(tfrecords, self._loader_labels(labels), batch_size=batch_size,
                               **kwargs)

    def torch(self, labels: str | Mapping[str, Any] | None = None, **kwargs: Any):
        """A PyTorch `TileDataset` over this dataset's TFRecords (same tiles and order as
        `tensorflow()` for the same seed); keywords as `slideflow.io.torch_data.TileDataset`."""
        from ..io.torch_data import TileDataset

        tfrecords = self.tfrecords()
        if not tfrecords:
            raise DatasetError("no TFRecords for this dataset: run extract_tiles() first")
        return TileDataset(tfrecords, self._loader_labels(labels), **kwargs)

    def feature_jobs(self, source: str = "auto") -> list[Any]:
        """`slideflow.features.SlideJob`s: from the TFRecord when it exists (`source='auto'`),
        always from TFRecords ('tfrecords') or always from the slides ('slides')."""
        if source not in ("auto", "slides", "tfrecords"):
            raise ValueError("source must be 'auto', 'slides' or 'tfrecords'")
        tfrs = self.tfrecords(as_dict=True) if self.label and source != "slides" else {}
        mpp, masks = self.annotation_mpp(), self.annotation_masks()
        jobs = []
        for name, where in sorted(self._present().items()):
            tfr = tfrs.get(name) if source != "slides" else None
            if (source == "tfrecords" and tfr is None) or (tfr is None and where.slide is None):
                continue
            jobs.append(SlideJob(name=name, slide_path=where.slide, tfrecord=tfr,
                                 rois=where.source.roi_file(name), mpp=mpp.get(name),
                                 mask=masks.get(name),
                                 mpp_source="annotations" if name in mpp else None))
        return jobs

    def kfold_split(self, k: int = 3, *, labels: Any = None, preserved_site: bool = False,
                    site_labels: str = "site", seed: int = 0) -> list[tuple[Dataset, Dataset]]:
        """[(train, val)] for k folds; a patient's slides never straddle train and val
        (stratified by `labels`: a column name or {slide: label}). See `slideflow.mil.splits`."""
        return kfold_split(self, k, labels=labels, preserved_site=preserved_site,
                           site_labels=site_labels, seed=seed)
