"""Project: a folder with `settings.json`, `datasets.json` and `annotations.csv`.

    P = sf.create_project("proj", name="Lung", annotations="labels.csv", slides="/data/slides")
    P = sf.load_project("proj")
    P.add_source("site2", slides="/data/site2", tfrecords="/scratch/tfrecords/site2")
    ds = P.dataset(tile_px=256, tile_um=128, filters={"subtype": ["LUAD", "LUSC"]})
    P.extract_tiles(256, 128, qc="otsu")

The files use Slideflow's layout and key names, so a project folder opens in either tool:
`settings.json` holds `name`, `annotations`, `dataset_config`, `sources` (names of the
datasets.json entries in use), `models_dir` and `eval_dir`; relative paths (`./x`) are relative
to the project folder.
"""

from __future__ import annotations

import html
import json
import logging
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from ..errors import ProjectError, SlideflowError
from ..io.atomic import atomic_open, write_json_atomic
from ..slide.geometry import TileGeometry
from .annotations import annotations_copy, blank_annotations, read_annotations, write_annotations
from .dataset import Dataset
from .sources import Source, load_sources, resolve_path, resolve_slides, save_source

log = logging.getLogger("slideflow")

SETTINGS = "settings.json"
DEFAULT_SETTINGS: dict[str, Any] = {
    "name": "MyProject",
    "annotations": "./annotations.csv",
    "dataset_config": "./datasets.json",
    "sources": [],
    "models_dir": "./models",
    "eval_dir": "./eval",
}


def is_project(path: str | os.PathLike) -> bool:
    return (Path(path) / SETTINGS).is_file()


class Project:
    """A research project: sources of slides, annotations, and the outputs made from them.

    `Project(root)` loads an existing project; `Project(root, name=..., ...)` on a folder
    without settings.json creates one (as Slideflow does). Prefer `sf.create_project` and
    `sf.load_project`.
    """

    def __init__(self, root: str | os.PathLike, **settings: Any):
        self.root = Path(root).expanduser().absolute()
        if not is_project(self.root):
            if settings:
                created = create_project(self.root, **settings)
                self.__dict__.update(created.__dict__)
                return
            raise ProjectError(f"{self.root}: not a slideflow project (no {SETTINGS}); create "
                               "one with sf.create_project(root, slides=..., annotations=...)")
        if settings:
            raise ProjectError(f"{self.root} is already a project; load it with "
                               "sf.load_project(root) and change settings on the object")
        try:
            data = json.loads((self.root / SETTINGS).read_text())
        except (OSError, ValueError) as exc:
            raise ProjectError(f"{self.root / SETTINGS}: unreadable ({exc})") from None
        if not isinstance(data, dict):
            raise ProjectError(f"{self.root / SETTINGS}: expected a JSON object")
        if "sources" not in data and "datasets" in data:  # Slideflow 1.x spelling
            data["sources"] = data.pop("datasets")
        self.settings: dict[str, Any] = {**DEFAULT_SETTINGS, **data}
        if isinstance(self.settings["sources"], str):
            self.settings["sources"] = [self.settings["sources"]]

    # -- settings ------------------------------------------------------------------------------
    def _path(self, key: str) -> Path:
        path = resolve_path(self.settings.get(key) or DEFAULT_SETTINGS[key], self.root)
        assert path is not None
        return path

    @property
    def name(self) -> str:
        return str(self.settings["name"])

    @property
    def annotations(self) -> Path:
        """Path of the annotations CSV."""
        return self._path("annotations")

    @property
    def dataset_config(self) -> Path:
        """Path of datasets.json (may be shared with other projects)."""
        return self._path("dataset_config")

    @property
    def models_dir(self) -> Path:
        return self._path("models_dir")

    @property
    def eval_dir(self) -> Path:
        return self._path("eval_dir")

    @property
    def sources(self) -> list[str]:
        """Names of the datasets.json entries this project uses (settable, as in Slideflow:
        `P.sources = ["a", "b"]; P.save()`)."""
        return list(self.settings["sources"])

    @sources.setter
    def sources(self, names: list[str]) -> None:
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise ProjectError(f"'sources' must be a list of source names (str), got {names!r}")
        self.settings["sources"] = list(names)

    def save(self) -> None:
        """Write settings.json (atomically)."""
        write_json_atomic(self.root / SETTINGS, self.settings)

    # -- sources -------------------------------------------------------------------------------
    def add_source(self, name: str, slides: str | os.PathLike | None = None,
                   roi: str | os.PathLike | None = None, tiles: str | os.PathLike | None = None,
                   tfrecords: str | os.PathLike | None = None,
                   path: str | os.PathLike | None = None) -> Source:
        """Add (or update) a source in datasets.json and use it in this project.

        Unset folders default to `<root>/roi/<name>`, `<root>/tiles/<name>` and
        `<root>/tfrecords/<name>`. `path` is another datasets.json to write to.
        """
        src = _make_source(self.root, name, slides, roi, tiles, tfrecords)
        config = resolve_path(path, self.root) if path is not None else self.dataset_config
        save_source(config, src)
        if path is None:
            self._remember(src)
        if path is None and name not in self.settings["sources"]:
            self.settings["sources"] = [*self.sources, name]
            self.save()
        return src

    def load_sources(self, names: Iterable[str] | None = None) -> dict[str, Source]:
        """{name: Source} for the project's sources (or `names`), in order."""
        every = {**load_sources(self.dataset_config, self.root), **self._unsaved()}
        names = self.sources if names is None else ([names] if isinstance(names, str)
                                                    else list(names))
        missing = [n for n in names if n not in every]
        if missing:
            raise ProjectError(f"source(s) {missing} are not in {self.dataset_config} "
                               f"(it has: {sorted(every)}); add them with P.add_source()")
        return {n: every[n] for n in names}

    def _remember(self, src: Source) -> None:
        """Keep a source whose slides URL carries credentials in memory: datasets.json holds
        it without them, and this session goes on using the URL as given."""
        if src.remote and src.to_json(warn=False)["slides"] != src.slides:
            self.__dict__.setdefault("_session_sources", {})[src.name] = src
        else:
            self._unsaved().pop(src.name, None)

    def _unsaved(self) -> dict[str, Source]:
        return self.__dict__.get("_session_sources", {})

    # -- annotations ---------------------------------------------------------------------------
    def read_annotations(self) -> pd.DataFrame:
        """The annotations as a DataFrame of strings (validated)."""
        return read_annotations(self.annotations)

    def create_blank_annotations(self, overwrite: bool = False) -> Path:
        """Write annotations listing every slide found in the sources (patient = slide)."""
        if self.annotations.exists() and not overwrite:
            raise ProjectError(f"{self.annotations} exists; pass overwrite=True to replace it")
        names = []
        for src in self.load_sources().values():
            names += list(src.slide_files())
        return write_annotations(blank_annotations(names), self.annotations)

    # -- datasets ------------------------------------------------------------------------------
    def dataset(self, tile_px: int | TileGeometry | None = None,
                tile_um: int | float | str | None = None,
                filters: Mapping[str, Any] | None = None,
                filter_blank: str | Iterable[str] | None = None, min_tiles: int = 0,
                sources: str | Iterable[str] | None = None) -> Dataset:
        """A Dataset of the project's slides at one tile geometry."""
        if not self.annotations.exists():
            log.warning("%s not found; every slide found counts, one patient per slide "
                        "(write one with P.create_blank_annotations())", self.annotations)
        return Dataset(
            self.load_sources(sources), tile_px=tile_px, tile_um=tile_um,
            annotations=self.annotations if self.annotations.exists() else None,
            filters=filters, filter_blank=filter_blank, min_tiles=min_tiles, root=self.root,
        )

    def extract_tiles(self, tile_px: int | TileGeometry, tile_um: int | float | str | None = None,
                      *,
                      filters: Mapping[str, Any] | None = None,
                      filter_blank: str | Iterable[str] | None = None,
                      sources: str | Iterable[str] | None = None, **kwargs: Any):
        """Extract tiles to TFRecords; the keyword options are those of
        `Dataset.extract_tiles`. Returns an `ExtractionSummary`."""
        ds = self.dataset(tile_px, tile_um, filters=filters, filter_blank=filter_blank,
                          sources=sources)
        return ds.extract_tiles(**kwargs)

    def generate_feature_bags(self, extractor: Any, dataset: Dataset | None = None,
                              outdir: str | os.PathLike | None = None, *,
                              tile_px: int | TileGeometry | None = None, tile_um: Any = None,
                              **kwargs: Any):
        """Feature bags for MIL (`Dataset.generate_feature_bags`).

        Give a `dataset`, or `tile_px`/`tile_um` or a `TileGeometry` as `tile_px` (the
        project's dataset at that geometry).
        Bags go to `outdir`, default `<root>/pt_files/<extractor name>`.
        """
        if dataset is None:
            if tile_px is None or (tile_um is None and not isinstance(tile_px, TileGeometry)):
                raise ProjectError("give a dataset, or tile_px and tile_um")
            dataset = self.dataset(tile_px, tile_um)
        if outdir is None:
            name = extractor if isinstance(extractor, str) else getattr(extractor, "name",
                                                                         "features")
            outdir = self.root / "pt_files" / str(name)
        return dataset.generate_feature_bags(extractor, outdir, **kwargs)

    def train_mil(self, config: Any, train_dataset: Dataset, val_dataset: Dataset,
                  outcomes: Any, bags: Any, *, exp_label: str | None = None,
                  outdir: str | os.PathLike | None = None, **kwargs: Any):
        """`sf.mil.train_mil` into `<outdir or root/mil>/<NNNNN>-<exp_label or model>` (a new
        numbered folder per run, as Slideflow 3 does)."""
        from ..mil.train import train_mil

        run = _next_run(Path(outdir) if outdir is not None else self.root / "mil",
                        exp_label or config.model)
        return train_mil(config, train_dataset, val_dataset, outcomes, bags, outdir=run,
                         **kwargs)

    def evaluate_mil(self, model: Any, outcomes: Any, dataset: Dataset, bags: Any, *,
                     outdir: str | os.PathLike | None = None, **kwargs: Any):
        """`sf.mil.eval_mil` into `<outdir or root/mil_eval>/<NNNNN>-<model folder name>`."""
        from ..mil.evaluate import eval_mil

        run = _next_run(Path(outdir) if outdir is not None else self.root / "mil_eval",
                        Path(model).name)
        return eval_mil(model, dataset, outcomes, bags, outdir=run, **kwargs)

    # -- display -------------------------------------------------------------------------------
    def _counts(self) -> dict[str, Any]:
        try:
            srcs = self.load_sources()
        except ProjectError:
            srcs = {}
        try:
            slides: Any = sum(len(s.slide_files()) for s in srcs.values())
        except (SlideflowError, OSError) as exc:  # a URL source that cannot be listed now
            slides = f"unknown ({exc})"
        try:
            ann = len(self.read_annotations()) if self.annotations.exists() else None
        except ProjectError:
            ann = "invalid"
        return {"sources": list(srcs), "slides": slides, "annotated": ann}

    def __repr__(self) -> str:
        c = self._counts()
        return (f"Project({self.name!r}, root={str(self.root)!r}, sources={c['sources']}, "
                f"slides={c['slides']}, annotations={c['annotated']})")

    def _repr_html_(self) -> str:
        c = self._counts()
        rows = [("name", self.name), ("root", self.root), ("sources", ", ".join(c["sources"])),
                ("slide files", c["slides"]), ("annotated slides", c["annotated"]),
                ("annotations", self.annotations), ("datasets.json", self.dataset_config)]
        body = "".join(f"<tr><th style='text-align:left'>{html.escape(str(k))}</th>"
                       f"<td>{html.escape(str(v))}</td></tr>" for k, v in rows)
        return f"<b>slideflow Project</b><table>{body}</table>"


def _next_run(base: Path, label: str) -> Path:
    """`base/<NNNNN>-<label>`, numbered after the runs already there (Slideflow 3's layout)."""
    taken = [p.name[:5] for p in base.iterdir()] if base.is_dir() else []
    n = max([int(t) + 1 for t in taken if t.isdigit()], default=0)
    return base / f"{n:05d}-{label}"


def create_project(root: str | os.PathLike, name: str = "MyProject",
                   annotations: str | os.PathLike | None = None,
                   slides: str | os.PathLike | None = None, *,
                   source: str | None = None, roi: str | os.PathLike | None = None,
                   tiles: str | os.PathLike | None = None,
                   tfrecords: str | os.PathLike | None = None, **settings: Any) -> Project:
    """Create a project folder and return it.

    `annotations`: an existing CSV, validated then copied in as `annotations.csv`; without it,
    one is written listing the slides found (patient = slide). `slides`: a folder searched
    recursively; it becomes the source `source` (default: the project name) with `roi`,
    `tiles` and `tfrecords` folders (default: under the project folder). Other keyword
    arguments are stored in settings.json.
    """
    root = Path(root).expanduser().absolute()
    if is_project(root):
        raise ProjectError(f"{root} is already a project; open it with sf.load_project()")
    unknown = set(settings) - set(DEFAULT_SETTINGS)
    if unknown:
        log.info("extra project settings stored as given: %s", sorted(unknown))
    if annotations is not None:
        read_annotations(annotations)  # fail before creating anything
    root.mkdir(parents=True, exist_ok=True)
    cfg = {**DEFAULT_SETTINGS, **settings, "name": name, "sources": []}
    P = object.__new__(Project)
    P.root, P.settings = root, cfg
    if slides is not None or source is not None:
        src = _make_source(root, source or name, slides, roi, tiles, tfrecords)
        save_source(P.dataset_config, src)
        P._remember(src)
        cfg["sources"] = [src.name]
    if annotations is not None:
        data = annotations_copy(annotations)  # a manifest's relative paths made absolute
        with atomic_open(P.annotations, "wb") as fh:
            fh.write(data)
    elif not P.annotations.exists():
        names: list[str] = []
        for src in P.load_sources().values():
            if src.remote or (src.slides is not None and Path(src.slides).is_dir()):
                names += list(src.slide_files())
        write_annotations(blank_annotations(names), P.annotations)
        log.info("%s: listed %d slides (patient = slide)", P.annotations, len(names))
    P.save()  # settings.json last: the folder becomes a project only when complete
    return P


def _make_source(root: Path, name: str, slides: Any, roi: Any, tiles: Any, tfrecords: Any
                 ) -> Source:
    if not name or not isinstance(name, str):
        raise ProjectError("a source needs a non-empty name")
    src = Source(
        name,
        resolve_slides(slides, root),
        resolve_path(roi, root, "roi") or root / "roi" / name,
        resolve_path(tiles, root, "tiles") or root / "tiles" / name,
        resolve_path(tfrecords, root, "tfrecords") or root / "tfrecords" / name,
    )
    if src.slides is not None and not src.remote and not Path(src.slides).is_dir():
        log.warning("source %s: slide folder %s does not exist (yet)", name, src.slides)
    return src


def load_project(root: str | os.PathLike) -> Project:
    """Open an existing project folder."""
    return Project(root)
