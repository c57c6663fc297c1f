"""Specs of the GPL-3.0 extractors (plain data, no torch). Sources: docs/extractors.md."""

from __future__ import annotations

from slideflow.model.extractors.spec import SF3_MODULE, ExtractorSpec, WeightsSource, hf

DISTRIBUTION = "slideflow-gpl"

_CTRANSPATH = ("@article{wang2022ctranspath, title={Transformer-based unsupervised contrastive "
               "learning for histopathological image classification}, author={Wang, Xiyue and "
               "Yang, Sen and Zhang, Jun and others}, journal={Medical Image Analysis}, "
               "volume={81}, pages={102559}, year={2022}, doi={10.1016/j.media.2022.102559}}")
_RETCCL = ("@article{wang2023retccl, title={RetCCL: Clustering-guided contrastive learning for "
           "whole-slide image retrieval}, author={Wang, Xiyue and Du, Yuexi and Yang, Sen and "
           "others}, journal={Medical Image Analysis}, volume={83}, pages={102645}, "
           "year={2023}, doi={10.1016/j.media.2022.102645}}")
_CHIEF = ("@article{wang2024chief, title={A pathology foundation model for cancer diagnosis and "
          "prognosis prediction}, author={Wang, Xiyue and Zhao, Junhan and Marostica, Eliana "
          "and others}, journal={Nature}, volume={634}, pages={970--978}, year={2024}}")


def specs() -> list[ExtractorSpec]:
    return [
        ExtractorSpec(
            name="ctranspath", family="swin", dim=768, input_px=224, license="GPL-3.0",
            citation=_CTRANSPATH, resize_px=224, interpolation="bilinear", antialias=True,
            builder="slideflow_gpl.ctranspath:build", distribution=DISTRIBUTION,
            weights=hf("jamesdolezal/CTransPath", "ctranspath.pth"),
            sf3_class=SF3_MODULE + "ctranspath.CTransPathFeatures",
            checkpoint_keys=("model", "state_dict"),
            expected_unexpected=("*attn_mask", "*relative_position_index", "head.*"),
            description="CTransPath: Swin-T (window 7) with a convolutional stem, 768-d "
                        "average-pooled tokens",
            reference="github.com/Xiyue-Wang/TransPath get_features_CTransPath.py "
                      "(Resize(224), ImageNet mean/std, checkpoint['model'])",
        ),
        ExtractorSpec(
            name="retccl", family="torchvision", dim=2048, input_px=256, license="GPL-3.0",
            citation=_RETCCL, resize_px=256, interpolation="bilinear", antialias=True,
            cnn=True, build={"arch": "resnet50"}, distribution=DISTRIBUTION,
            weights=hf("jamesdolezal/RetCCL", "retccl.pth"),
            sf3_class=SF3_MODULE + "retccl.RetCCLFeatures",
            expected_unexpected=("fc.*",),
            description="RetCCL ResNet-50 (torchvision layout, classifier removed), 2048-d",
            reference="github.com/Xiyue-Wang/RetCCL get_feature.py (Resize(256), ImageNet "
                      "mean/std, fc = Identity, strict load)",
        ),        ExtractorSpec(
            name="chief_ctranspath", family="swin", dim=768, input_px=224,
            license="GPL-3.0 + non-commercial academic use only (CHIEF README)",
            citation=_CHIEF, aliases=("chief", "chief-ctranspath"), interpolation="bilinear",
            antialias=True, builder="slideflow_gpl.ctranspath:build",
            distribution=DISTRIBUTION,
            weights=WeightsSource("none", url="CHIEF_CTransPath.pth from "
                                  "github.com/hms-dbmi/CHIEF, or the Hugging Face dataset "
                                  "MahmoodLab/hest-bench, fm_v1/ctranspath/"
                                  "CHIEF_CTransPath.pth (a dataset repo: pass the file with "
                                  "weights=)"),
            checkpoint_keys=("model", "state_dict"),
            expected_unexpected=("*attn_mask", "*relative_position_index", "head.*"),
            description="CHIEF's tile encoder: the CTransPath architecture with CHIEF "
                        "weights, 768-d average-pooled tokens",
            reference="github.com/hms-dbmi/CHIEF Get_CHIEF_patch_feature.py (ctranspath(), "
                      "head = Identity, td['model'], Resize(224), ImageNet mean/std) and README "
                      "(GPLv3, non-commercial academic); TRIDENT load.py (Resize((224, 224)) "
                      "bilinear; hf dataset MahmoodLab/hest-bench fm_v1/ctranspath)",
        ),
    ]


_CHIEF_BIB = """@article{wang2024chief,
  title={A pathology foundation model for cancer diagnosis and prognosis prediction},
  author={Wang, Xiyue and Zhao, Junhan and Marostica, Eliana and Yuan, Wei and Jin, Jietian
          and others and Yu, Kun-Hsing},
  journal={Nature},
  volume={634},
  pages={970--978},
  year={2024}
}"""


def slide_encoder_specs():
    """GPL slide encoders (read by slideflow.model.slide_encoders.registry)."""
    from slideflow.model.extractors.spec import WeightsSource
    from slideflow.model.slide_encoders.spec import SlideEncoderSpec

    return [
        SlideEncoderSpec(
            name="chief", family="chief", dim=512, tile_extractor="chief_ctranspath",
            tile_features=768, license="GPL-3.0 (non-commercial academic use)",
            citation=_CHIEF_BIB, distribution=DISTRIBUTION,
            build={"size": [768, 512, 256], "n_classes": 2, "n_organs": 19, "text_dim": 768},
            weights=WeightsSource("none", url="https://drive.google.com/drive/folders/"
                                              "1uRv9A1HuTW5m_pJoyMzdN31bE1i-tDaV "
                                              "(CHIEF_pretraining.pth)"),
            description="CHIEF slide encoder: gated attention MIL (768 -> 512) over "
                        "CHIEF-CTransPath features; WSI_feature is 512-d",
            reference="hms-dbmi/CHIEF models/CHIEF.py (size 'small' [768, 512, 256], gated, "
                      "organ_embedding buffer 19x768, WSI_feature = softmax(A) @ h) and README "
                      "(GPLv3, non-commercial academic); TRIDENT load.py declares 768 but the "
                      "code gives 512"),
    ]
