"""Batched preprocessing in torch: uint8 NCHW tiles -> float32 normalised NCHW.

Steps, all on the tiles' device, one batch at a time:

1. optional resize (shorter side to ``resize_px``, or the whole tile to ``input_px`` when no
   resize size is set and the tile is not already ``input_px``); skipped when the size already
   matches. Resized values are rounded back to uint8 levels, as PIL and torchvision's uint8
   tensor path do, so results match model cards that resize PIL images.
2. optional center crop (torchvision's rounding of the offsets); step 1 and 2 can be swapped
   (``order='crop_resize'``, Slideflow 3's order).
3. ``x / 255`` then ``(x - mean) / std``, fused as ``x * a + b``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Preprocess:
    input_px: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    resize_px: int | None = None   # shorter side; None: squash to input_px when needed
    resize: bool = True            # False: never resize (CNNs at the tiles' own size)
    center_crop: int | None = None
    order: str = "resize_crop"
    interpolation: str = "bilinear"
    antialias: bool = True

    def __post_init__(self) -> None:
        if self.order not in ("resize_crop", "crop_resize"):
            raise ValueError(f"order must be 'resize_crop' or 'crop_resize', not {self.order!r}")
        if any(s <= 0 for s in self.std):
            raise ValueError(f"std must be positive, got {self.std}")

    # ------------------------------------------------------------------ description
    def describe(self) -> str:
        steps = ["uint8 NCHW"]
        resize = self._describe_resize()
        crop = f"center_crop({self.center_crop})" if self.center_crop else None
        ordered = [resize, crop] if self.order == "resize_crop" else [crop, resize]
        steps += [s for s in ordered if s]
        steps.append("/255")
        steps.append(f"normalize(mean={_fmt(self.mean)}, std={_fmt(self.std)})")
        return " -> ".join(steps) + " -> float32"

    def _describe_resize(self) -> str | None:
        if not self.resize:
            return None
        aa = ", antialias" if self.antialias else ""
        if self.resize_px:
            return f"resize(shorter side {self.resize_px}, {self.interpolation}{aa})"
        if self.center_crop and self.order == "resize_crop":
            return None
        return f"resize({self.input_px}x{self.input_px} if needed, {self.interpolation}{aa})"

    def __str__(self) -> str:
        return self.describe()

    # ------------------------------------------------------------------ geometry
    def output_size(self, h: int, w: int) -> tuple[int, int]:
        """Spatial size of the output for an (h, w) input."""
        steps = (self._resize_size, self._crop_size)
        if self.order == "crop_resize":
            steps = steps[::-1]
        for step in steps:
            h, w = step(h, w)
        return h, w

    def _resize_size(self, h: int, w: int) -> tuple[int, int]:
        if not self.resize:
            return h, w
        if self.resize_px:
            short, long_ = (h, w) if h <= w else (w, h)
            if short == self.resize_px:
                return h, w
            new_long = int(self.resize_px * long_ / short)
            return (self.resize_px, new_long) if h <= w else (new_long, self.resize_px)
        if self.center_crop and self.order == "resize_crop":
            return h, w  # crop alone defines the size
        return self.input_px, self.input_px

    def _crop_size(self, h: int, w: int) -> tuple[int, int]:
        if not self.center_crop:
            return h, w
        return self.center_crop, self.center_crop

    # ------------------------------------------------------------------ compute
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype != torch.uint8:
            raise TypeError(f"preprocess expects uint8 tiles, got {x.dtype}")
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"preprocess expects (N, 3, H, W), got {tuple(x.shape)}")
        if self.order == "resize_crop":
            x = self._crop(self._resize(x))
        else:
            x = self._resize(self._crop(x))
        return self._normalize(x)

    def _resize(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        th, tw = self._resize_size(h, w)
        if (th, tw) == (h, w):
            return x
        mode = self.interpolation
        kwargs = {}
        if mode in ("bilinear", "bicubic"):
            kwargs = {"align_corners": False, "antialias": self.antialias}
        y = F.interpolate(x.float(), size=(th, tw), mode=mode, **kwargs)
        # back to uint8 levels, as PIL / torchvision uint8 resizing does
        return y.round_().clamp_(0, 255)

    def _crop(self, x: torch.Tensor) -> torch.Tensor:
        if not self.center_crop:
            return x
        h, w = x.shape[-2:]
        c = self.center_crop
        if h < c or w < c:
            raise ValueError(f"cannot center-crop {c}x{c} from {h}x{w} tiles; resize first or "
                             "pass center_crop=False")
        top = int(round((h - c) / 2.0))
        left = int(round((w - c) / 2.0))
        return x[..., top:top + c, left:left + c]

    def _affine(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        cache = self.__dict__.setdefault("_cache", {})
        if device not in cache:
            mean = torch.tensor(self.mean, dtype=torch.float32, device=device).view(1, 3, 1, 1)
            std = torch.tensor(self.std, dtype=torch.float32, device=device).view(1, 3, 1, 1)
            cache[device] = (1.0 / (255.0 * std), -mean / std)
        return cache[device]

    def _normalize(self, x: torch.Tensor) -> torch.Tensor:
        scale, shift = self._affine(x.device)
        # one fused op on a fresh float tensor: x * scale + shift
        return torch.addcmul(shift, x.to(torch.float32), scale)


def _fmt(values: tuple[float, ...]) -> str:
    return "(" + ", ".join(f"{v:g}" for v in values) + ")"
