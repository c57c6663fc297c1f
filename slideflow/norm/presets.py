"""Fit presets, with the values and names Slideflow uses, so configs move between the two.

Values were read from Slideflow's ``slideflow/norm/utils.py`` (``fit_presets``). Its notes say:
``v1`` is a fit to Slideflow's bundled ``norm_tile.jpg`` (its default before 1.6), ``v2`` is
hand-tuned (for Macenko it is the reference matrix of Macenko et al. as used by HEnorm_python /
torchstain), ``v3`` is the mean fit over ~50k tiles from ~450 TCGA slides (its default since 1.6).
Slideflow has no ``v3`` for Vahadane; its Vahadane default is ``v2`` (the SPAMS fits).

Units: Reinhard means/stds are CIELAB (D65, 2 deg observer; L in [0, 100]). Macenko
``stain_matrix_target`` is 3x2 (rows R, G, B optical density; columns hematoxylin, eosin) and
``target_concentrations`` the 99th percentiles of the two stain concentrations. Vahadane
``stain_matrix_target`` is 2x3 (rows hematoxylin, eosin; unit norm), as in Slideflow.
"""

from __future__ import annotations

from typing import Any

_REINHARD = {  # brightness-standardised before LAB statistics
    "v1": {"target_means": [72.272896, 22.99831, -13.860236],
           "target_stds": [15.594496, 9.642087, 9.290526]},
    "v2": {"target_means": [72.909996, 20.8268, -4.9465137],
           "target_stds": [18.560713, 14.889295, 5.6756697]},
    "v3": {"target_means": [65.22132, 28.934267, -14.142519],
           "target_stds": [15.800227, 9.263783, 6.0213304]},
}
_REINHARD_FAST = {  # no brightness standardisation
    "v1": {"target_means": [63.71194, 20.716246, -12.290746],
           "target_stds": [14.52781, 8.344005, 8.300264]},
    "v2": {"target_means": [69.20197, 19.82498, -4.690998],
           "target_stds": [17.71583, 14.156416, 5.4176064]},
    "v3": {"target_means": [58.12343, 26.483482, -12.701005],
           "target_stds": [14.675022, 7.5744166, 5.226378]},
}
_MACENKO = {
    "v1": {"stain_matrix_target": [[0.63111544, 0.24816133],
                                   [0.6962834, 0.8226449],
                                   [0.34188122, 0.5115382]],
           "target_concentrations": [1.4423684, 0.9685806]},
    "v2": {"stain_matrix_target": [[0.5626, 0.2159],
                                   [0.7201, 0.8012],
                                   [0.4062, 0.5581]],
           "target_concentrations": [1.9705, 1.0308]},
    "v3": {"stain_matrix_target": [[0.5062568, 0.2218694],
                                   [0.75322306, 0.8652155],
                                   [0.40691733, 0.42241502]],
           "target_concentrations": [1.7656903, 1.2797493]},
}
_MACENKO_FAST = {
    "v1": {"stain_matrix_target": [[0.6148019, 0.21480364],
                                   [0.7010872, 0.82317936],
                                   [0.36124164, 0.5255809]],
           "target_concentrations": [1.8029537, 0.9606744]},
    "v2": {"stain_matrix_target": [[0.5626, 0.2159],
                                   [0.7201, 0.8012],
                                   [0.4062, 0.5581]],
           "target_concentrations": [1.9705, 1.0308]},
    "v3": {"stain_matrix_target": [[0.52000326, 0.2623537],
                                   [0.73508584, 0.83495414],
                                   [0.4249617, 0.4630997]],
           "target_concentrations": [2.0259454, 1.4088874]},
}
_VAHADANE = {  # Slideflow's "vahadane_spams" presets (its "vahadane" method is the SPAMS one)
    "v1": {"stain_matrix_target": [[0.54176575, 0.75441414, 0.37060648],
                                   [0.17089975, 0.8640189, 0.4735658]]},
    "v2": {"stain_matrix_target": [[0.4435433, 0.7502863, 0.4902447],
                                   [0.27688965, 0.8088818, 0.5186929]]},
}

#: method -> preset name -> fit (plain lists, JSON-ready)
FIT_PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "reinhard": _REINHARD,
    "reinhard_mask": _REINHARD,
    "reinhard_fast": _REINHARD_FAST,
    "reinhard_fast_mask": _REINHARD_FAST,
    "macenko": _MACENKO,
    "macenko_fast": _MACENKO_FAST,
    "vahadane": _VAHADANE,
}

#: the preset a normaliser starts from when none is named (Slideflow's defaults)
DEFAULT_PRESET: dict[str, str] = {m: ("v2" if m == "vahadane" else "v3") for m in FIT_PRESETS}


def preset_fit(method: str, name: str) -> dict[str, Any]:
    """A copy of the fit for `method` under preset `name` (KeyError when either is unknown)."""
    fit = FIT_PRESETS[method][name]
    return {k: [list(r) if isinstance(r, list) else r for r in v] for k, v in fit.items()}
