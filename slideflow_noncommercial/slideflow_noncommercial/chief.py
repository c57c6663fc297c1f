"""CHIEF's tile and slide encoders (plain data, no torch).

CHIEF's README: "This code is made available under the GPLv3 License and is available for
non-commercial academic purposes" -- the weights are usable non-commercially only, so the
specs live here. The tile encoder is the CTransPath architecture, built by slideflow_gpl
(``pip install ./slideflow_gpl`` as well; building without it names that package); the slide
encoder's gated-attention MIL is core code.
"""

from __future__ import annotations

from slideflow.model.extractors.spec import ExtractorSpec, WeightsSource

LICENSE = ("non-commercial academic use only + GPL-3.0 code (CHIEF README: 'made available "
           "under the GPLv3 License and is available for non-commercial academic purposes')")
_README = "github.com/hms-dbmi/CHIEF README (License section: GPLv3, non-commercial academic)"
_CHIEF = ("@article{wang2024chief, title={A pathology foundation model for cancer diagnosis and "
          "prognosis prediction}, author={Wang, Xiyue and Zhao, Junhan and Marostica, Eliana "
          "and others}, journal={Nature}, volume={634}, pages={970--978}, year={2024}}")
_CHIEF_BIB = """@article{wang2024chief,
  title={A pathology foundation model for cancer diagnosis and prognosis prediction},
  author={Wang, Xiyue and Zhao, Junhan and Marostica, Eliana and Yuan, Wei and Jin, Jietian
          and others and Yu, Kun-Hsing},
  journal={Nature},
  volume={634},
  pages={970--978},
  year={2024}
}"""


def tile_spec(distribution: str) -> ExtractorSpec:
    return ExtractorSpec(
        name="chief_ctranspath", family="swin", dim=768, input_px=224, license=LICENSE,
        citation=_CHIEF, aliases=("chief", "chief-ctranspath"), interpolation="bilinear",
        antialias=True, builder="slideflow_gpl.ctranspath:build", distribution=distribution,
        weights=WeightsSource("none", url="CHIEF_CTransPath.pth from "
                              "github.com/hms-dbmi/CHIEF, or the Hugging Face dataset "
                              "MahmoodLab/hest-bench, fm_v1/ctranspath/"
                              "CHIEF_CTransPath.pth (a dataset repo: pass the file with "
                              "weights=)"),
        checkpoint_keys=("model", "state_dict"),
        expected_unexpected=("*attn_mask", "*relative_position_index", "head.*"),
        description="CHIEF's tile encoder: the CTransPath architecture (built by "
                    "slideflow_gpl) with CHIEF weights, 768-d average-pooled tokens",
        reference="github.com/hms-dbmi/CHIEF Get_CHIEF_patch_feature.py (ctranspath(), "
                  "head = Identity, td['model'], Resize(224), ImageNet mean/std); " + _README +
                  "; TRIDENT load.py (Resize((224, 224)) bilinear; hf dataset "
                  "MahmoodLab/hest-bench fm_v1/ctranspath)")


def slide_spec(distribution: str):
    from slideflow.model.slide_encoders.spec import SlideEncoderSpec

    return SlideEncoderSpec(
        name="chief", family="chief", dim=512, tile_extractor="chief_ctranspath",
        tile_features=768, license=LICENSE, citation=_CHIEF_BIB, distribution=distribution,
        build={"size": [768, 512, 256], "n_classes": 2, "n_organs": 19, "text_dim": 768},
        weights=WeightsSource("none", url="https://drive.google.com/drive/folders/"
                                          "1uRv9A1HuTW5m_pJoyMzdN31bE1i-tDaV "
                                          "(CHIEF_pretraining.pth)"),
        description="CHIEF slide encoder: gated attention MIL (768 -> 512) over "
                    "CHIEF-CTransPath features; WSI_feature is 512-d",
        reference="hms-dbmi/CHIEF models/CHIEF.py (size 'small' [768, 512, 256], gated, "
                  "organ_embedding buffer 19x768, WSI_feature = softmax(A) @ h); " + _README +
                  "; TRIDENT load.py declares 768 but the code gives 512")
