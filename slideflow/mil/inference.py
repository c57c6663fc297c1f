"""Running a MIL model: rebuilt from its folder by registered name, applied bag by bag.

Training's validation predictions and `eval_mil` both go through `run_bags`, one whole bag at a
time in eval mode, so they agree to the bit on the same machine.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .config import MILConfig, MILError
from .data import BagStore, Labels, full_bag
from .models import build_model
from .outputs import WEIGHTS, read_params

_BUILD_ONLY = ("weights", "pretrained")  # starting points for training, not part of the model


def model_from_config(config: MILConfig, n_in: int, n_out: int, *, for_training: bool = False):
    kwargs = dict(config.model_kwargs)
    if not for_training:
        kwargs = {k: v for k, v in kwargs.items() if k not in _BUILD_ONLY}
    return build_model(config.model, n_in, n_out, **kwargs)


def resolve_device(device: Any = None) -> Any:
    """`device`, or CUDA when available, else the CPU (the CPU run is the reproducible one)."""
    import torch

    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def load_model(model_dir: str | Path, device: Any = None) -> tuple[Any, dict[str, Any], Path]:
    """(model in eval mode on `device`, mil_params.json, run folder) for a run folder or a
    weights file."""
    import torch

    folder, params = read_params(model_dir)
    config = MILConfig.from_dict(params["config"])
    model = model_from_config(config, int(params["input_shape"]), int(params["output_shape"]))
    p = Path(model_dir)
    weights = p if p.is_file() else folder / params.get("weights", WEIGHTS)
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
        model.load_state_dict(state)
    except FileNotFoundError:
        raise MILError(f"{weights}: weights not found") from None
    except Exception as e:  # noqa: BLE001 - unreadable or mismatched weights
        raise MILError(f"{weights}: cannot load these weights into {config.model} "
                       f"({type(e).__name__}: {e})") from e
    model.eval().to(resolve_device(device))
    return model, params, folder


def run_one(model: Any, features: np.ndarray, classification: bool, attention: bool
            ) -> tuple[np.ndarray, np.ndarray | None]:
    """(outputs (n_out,), attention (N,) or None) for one bag."""
    import torch

    device = next(model.parameters()).device
    with torch.no_grad():
        x = torch.from_numpy(np.ascontiguousarray(features, np.float32))[None].to(device)
        logits = model(x)[0]
        out = torch.softmax(logits, dim=-1) if classification else logits
        att = model.attention(x)[0].cpu().numpy().astype(np.float32) if attention else None
    return out.cpu().numpy().astype(np.float32), att


def run_bags(model: Any, store: BagStore, labels: Labels, classification: bool,
             attention: bool = False) -> tuple[np.ndarray, list[np.ndarray] | None]:
    """Outputs (n_bags, n_out): class probabilities, or raw values for continuous outcomes."""
    model.eval()
    outs, atts = [], []
    for i in range(len(labels.keys)):
        out, att = run_one(model, full_bag(store, labels, i), classification, attention)
        outs.append(out)
        atts.append(att)
    return np.stack(outs), (atts if attention else None)


def split_attention(store: BagStore, labels: Labels, atts: list[np.ndarray]
                    ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{slide: (attention, coords)}: a patient bag's attention cut back into its slides."""
    out = {}
    for key, att in zip(labels.keys, atts):
        start = 0
        for slide in labels.slides[key]:
            n = len(store.features(slide))
            out[slide] = (att[start:start + n], store.coords(slide))
            start += n
    return out


__all__ = ["load_model", "resolve_device", "model_from_config", "run_bags", "run_one", "split_attention"]
