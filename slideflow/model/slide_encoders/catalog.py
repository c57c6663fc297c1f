"""Core slide encoders (permissive) and the names that live in licence-split distributions.

Plain data only (no torch). The non-commercial encoders (TITAN, FEATHER, MADELEINE, CHIEF, GigaPath, PRISM, MOOZY) are in
``slideflow_noncommercial.specs:slide_encoder_specs``.
"""

from __future__ import annotations

from .spec import ExternalSlideEntry, SlideEncoderSpec

MEAN_CITATION = ("@article{ilse2018attention,\n  title={Attention-based Deep Multiple Instance "
                 "Learning},\n  author={Ilse, Maximilian and Tomczak, Jakub and Welling, Max},\n"
                 "  journal={ICML},\n  year={2018}\n}")


def slide_encoder_specs() -> list[SlideEncoderSpec]:
    return [
        SlideEncoderSpec(
            name="mean", family="mean", dim=None, license="Apache-2.0",
            aliases=("mean_pool", "avg"),
            description="mean of the tile features of any tile extractor (no weights); its "
                        "width is the tile extractor's",
            reference="TRIDENT slide_encoder_models/load.py MeanSlideEncoder "
                      "(features.mean over tiles)",
        ),
    ]


_NC = ("slideflow-noncommercial",
       "pip install ./slideflow_noncommercial  (from a slideflow checkout)")

EXTERNAL: tuple[ExternalSlideEntry, ...] = (
    ExternalSlideEntry("chief", *_NC, "non-commercial academic use only + GPL-3.0 code (CHIEF "
                       "README: 'made available under the GPLv3 License and is available for "
                       "non-commercial academic purposes')", 512, "chief_ctranspath"),
    ExternalSlideEntry("titan", *_NC, "CC-BY-NC-ND-4.0", 768, "conch_v15"),
    ExternalSlideEntry("feather", *_NC, "CC-BY-NC-ND-4.0", 512, "conch_v15"),
    ExternalSlideEntry("madeleine", *_NC, "CC-BY-NC-ND-4.0", 512, "conch"),
    ExternalSlideEntry("gigapath_slide", *_NC,
                       "Prov-GigaPath licence (non-commercial research only)", 768, "gigapath"),
    ExternalSlideEntry("prism", *_NC, "CC-BY-NC-ND-4.0", 1280, "virchow"),
    ExternalSlideEntry("moozy", *_NC, "CC-BY-NC-SA-4.0", 768, "lunit_vits8"),
)
