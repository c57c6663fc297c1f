"""`mil_config(model, **options)`: one frozen, validated description of a MIL training run.

Slideflow 3's names: ``mil_config('attention_mil', lr=1e-4, epochs=20, bag_size=512, ...)``.
Torch-free, so a config can be built, printed and saved without the training stack. The config
is stored in `mil_params.json` and rebuilt from there by name only (no code is executed).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from ..errors import InvalidArgumentError, SlideflowError

# model name -> its keyword options (model_kwargs) and whether it can regress continuous outcomes
MODELS: dict[str, tuple[tuple[str, ...], bool]] = {
    "attention_mil": (("hidden", "attn_hidden", "dropout"), True),
    "transmil": (("hidden", "heads", "layers", "dropout"), True),
    "clam_sb": (("hidden", "attn_hidden", "dropout", "k_sample", "bag_weight"), False),
    "clam_mb": (("hidden", "attn_hidden", "dropout", "k_sample", "bag_weight"), False),
    "mil_fc": (("hidden", "pool", "dropout"), True),
    "feather": (("weights", "pretrained", "embed_dim", "attn_dim", "dropout"), True),
}
# Slideflow 3 spellings that mean one of ours
ALIASES = {"attention_mil": "attention_mil", "attn_mil": "attention_mil", "transmil": "transmil",
           "clam_sb": "clam_sb", "clam_mb": "clam_mb", "mil_fc": "mil_fc", "feather": "feather"}
LOSSES = ("cross_entropy", "mse")
AGGREGATION = ("slide", "patient")
MONITORS = ("valid_loss", "last")


class MILError(SlideflowError):
    """A MIL run cannot start or a MIL model folder cannot be used (the message says why)."""


def model_name(model: str) -> str:
    """Our name for `model` (case-insensitive; Slideflow 3 spellings such as 'Attention_MIL')."""
    if not isinstance(model, str):
        raise InvalidArgumentError("model must be a registered name "
                                   f"({', '.join(MODELS)}), got {type(model).__name__}")
    key = ALIASES.get(model.strip().lower())
    if key is None:
        hint = ""
        if model.strip().lower() in ("mil_fc_mc", "bistro.transformer"):
            hint = " (Slideflow 3 model not provided here; use mil_fc or transmil)"
        raise InvalidArgumentError(f"unknown MIL model {model!r}{hint}; valid: "
                                   f"{', '.join(MODELS)}")
    return key


@dataclass(frozen=True)
class MILConfig:
    """Trainer settings; build it with `mil_config`. Every field is stored in mil_params.json."""

    model: str
    lr: float = 1e-4
    wd: float = 1e-5
    epochs: int = 32
    batch_size: int = 32
    bag_size: int = 512
    fit_one_cycle: bool = True
    seed: int = 0
    aggregation_level: str = "slide"
    weighted_loss: bool = True
    loss: str = "cross_entropy"
    save_monitor: str = "valid_loss"
    drop_last: bool = False
    model_kwargs: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "model", model_name(self.model))
        for name in ("lr", "wd"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or \
                    not math.isfinite(value) or value < 0 or (name == "lr" and value == 0):
                raise InvalidArgumentError(f"{name} must be a {'positive' if name == 'lr' else 'non-negative'} "
                                           f"number, got {value!r}")
            object.__setattr__(self, name, float(value))
        for name in ("epochs", "batch_size", "bag_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InvalidArgumentError(f"{name} must be a positive integer, got {value!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise InvalidArgumentError(f"seed must be a non-negative integer, got {self.seed!r}")
        for name, valid in (("aggregation_level", AGGREGATION), ("loss", LOSSES),
                            ("save_monitor", MONITORS)):
            if getattr(self, name) not in valid:
                raise InvalidArgumentError(f"{name} must be one of {valid}, got "
                                           f"{getattr(self, name)!r}")
        for name in ("fit_one_cycle", "weighted_loss", "drop_last"):
            if not isinstance(getattr(self, name), bool):
                raise InvalidArgumentError(f"{name} must be True or False")
        allowed, regresses = MODELS[self.model]
        kwargs = dict(self.model_kwargs or {})
        unknown = sorted(set(kwargs) - set(allowed))
        if unknown:
            raise InvalidArgumentError(f"{self.model}: unknown model_kwargs {unknown}; valid: "
                                       f"{list(allowed)}")
        if kwargs.get("pool", "mean") not in ("mean", "max"):
            raise InvalidArgumentError(f"mil_fc pool must be 'mean' or 'max', got "
                                       f"{kwargs['pool']!r}")
        if self.loss == "mse" and not regresses:
            raise InvalidArgumentError(f"{self.model} classifies (its instance clustering "
                                       "needs classes); use attention_mil, transmil, mil_fc or "
                                       "feather for a continuous outcome (loss='mse')")
        object.__setattr__(self, "model_kwargs", _Frozen(kwargs))

    @property
    def is_classification(self) -> bool:
        return self.loss == "cross_entropy"

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["model_kwargs"] = dict(self.model_kwargs)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> MILConfig:
        """Rebuild from `to_dict()` output (mil_params.json); unknown keys are errors."""
        return mil_config(**dict(data))


class _Frozen(dict):
    """A read-only dict, so a frozen config cannot be changed through its model_kwargs."""

    def _refuse(self, *args: Any, **kwargs: Any) -> None:
        raise TypeError("MILConfig is frozen: build a new one with mil_config(...)")

    __setitem__ = __delitem__ = clear = pop = popitem = setdefault = update = _refuse  # type: ignore[assignment]

    def __hash__(self) -> int:  # type: ignore[override]
        return hash(tuple(sorted((k, repr(v)) for k, v in self.items())))


_FIELDS = tuple(f.name for f in fields(MILConfig))


def mil_config(model: str, **options: Any) -> MILConfig:
    """A validated MIL trainer config (Slideflow 3: ``sf.mil.mil_config``).

    `model`: attention_mil, transmil, clam_sb, clam_mb, mil_fc or feather. Options: lr, wd,
    epochs, batch_size, bag_size (tiles sampled per bag in training), fit_one_cycle, seed,
    aggregation_level ('slide' | 'patient'), weighted_loss, loss ('cross_entropy' for
    categorical outcomes, 'mse' for continuous ones), save_monitor ('valid_loss' | 'last'),
    drop_last, model_kwargs. Unknown options are errors.
    """
    if "trainer" in options:
        trainer = options.pop("trainer")
        if trainer not in ("fastai", "torch", None):
            raise InvalidArgumentError(f"trainer {trainer!r}: this package trains with torch")
    unknown = sorted(set(options) - set(_FIELDS))
    if unknown:
        raise TypeError(f"mil_config: unknown options {unknown}; valid: "
                        f"{[f for f in _FIELDS if f != 'model']}")
    return MILConfig(model=model, **options)


__all__ = ["AGGREGATION", "MILConfig", "MILError", "MODELS", "mil_config", "model_name"]
