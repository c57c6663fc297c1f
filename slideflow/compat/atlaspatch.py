"""AtlasPatch's extractor names on slideflow's registry, and its `process` options mapped.

`build_extractor('uni_v1')` builds slideflow's `uni` and names it `uni_v1`, so an AtlasPatch
file (`<output>/patches/<stem>.h5`, `slideflow.io.atlaspatch`) stores it under AtlasPatch's
dataset name `features/uni_v1`, where AtlasPatch's reader looks. A name that is not an
AtlasPatch alias is a slideflow registry name and keeps it.
"""

from __future__ import annotations

from typing import Any

from ..errors import InvalidArgumentError

#: AtlasPatch extractor name -> slideflow registry name (the same model and weights)
ALIASES = {
    "resnet18": "resnet18_imagenet", "resnet34": "resnet34_imagenet",
    "resnet50": "resnet50_imagenet", "convnext_tiny": "convnext_tiny_imagenet",
    "uni_v1": "uni", "uni_v2": "uni2", "phikon_v1": "phikon", "phikon_v2": "phikon_v2",
    "virchow_v1": "virchow", "virchow_v2": "virchow2", "prov_gigapath": "gigapath",
    "chief-ctranspath": "chief_ctranspath", "midnight": "midnight", "musk": "musk",
    "h_optimus_0": "h_optimus_0", "h_optimus_1": "h_optimus_1", "h0_mini": "h0_mini",
    "conch_v1": "conch", "conch_v15": "conch_v15", "hibou_b": "hibou_b", "hibou_l": "hibou_l",
    "plip": "plip",
}
PRECISIONS = {"float32": False, "float16": "fp16", "bfloat16": "bf16"}


def split_names(text: str) -> list[str]:
    """AtlasPatch's list spelling: names separated by commas and/or spaces."""
    names = [n for part in str(text).replace(",", " ").split() for n in [part.strip()] if n]
    if not names:
        raise InvalidArgumentError("give at least one name (comma or space separated)")
    return names


def build_extractor(name: str, **kwargs: Any) -> Any:
    """Slideflow's extractor for an AtlasPatch (or slideflow) name, named as asked."""
    import slideflow as sf

    ext = sf.build_feature_extractor(ALIASES.get(name, name), **kwargs)
    ext.name = name  # the dataset name in the file: features/<name>
    return ext


def stride_div(patch_size: int, step_size: int | None) -> int:
    """AtlasPatch's `--step-size` as slideflow's stride_div (a whole divisor of the patch)."""
    if step_size is None or int(step_size) == int(patch_size):
        return 1
    step = int(step_size)
    if step <= 0 or patch_size % step:
        raise InvalidArgumentError(f"--step-size {step_size}: slideflow steps by patch / n; "
                                   f"use a step dividing {patch_size}")
    return patch_size // step


def read_mpp_csv(path: Any) -> dict[str, float]:
    """AtlasPatch's `--mpp-csv` (columns wsi,mpp; matched by slide stem)."""
    import csv
    from pathlib import Path

    out: dict[str, float] = {}
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        if not reader.fieldnames or {"wsi", "mpp"} - set(reader.fieldnames):
            raise InvalidArgumentError(f"{path}: --mpp-csv needs columns wsi,mpp")
        for row in reader:
            stem = Path(row["wsi"]).stem
            try:
                out[stem] = float(row["mpp"])
            except ValueError:
                raise InvalidArgumentError(f"{path}: mpp {row['mpp']!r} of {row['wsi']} is "
                                           "not a number") from None
    return out


__all__ = ["ALIASES", "PRECISIONS", "build_extractor", "read_mpp_csv", "split_names",
           "stride_div"]
