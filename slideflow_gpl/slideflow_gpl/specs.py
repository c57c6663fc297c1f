"""Specs of the GPL-3.0 extractors (plain data, no torch). Sources: docs/extractors.md."""

from __future__ import annotations

from slideflow.model.extractors.spec import SF3_MODULE, ExtractorSpec, hf

DISTRIBUTION = "slideflow-gpl"

_CTRANSPATH = ("@article{wang2022ctranspath, title={Transformer-based unsupervised contrastive "
               "learning for histopathological image classification}, author={Wang, Xiyue and "
               "Yang, Sen and Zhang, Jun and others}, journal={Medical Image Analysis}, "
               "volume={81}, pages={102559}, year={2022}, doi={10.1016/j.media.2022.102559}}")
_RETCCL = ("@article{wang2023retccl, title={RetCCL: Clustering-guided contrastive learning for "
           "whole-slide image retrieval}, author={Wang, Xiyue and Du, Yuexi and Yang, Sen and "
           "others}, journal={Medical Image Analysis}, volume={83}, pages={102645}, "
           "year={2023}, doi={10.1016/j.media.2022.102645}}")


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
        ),
    ]


def slide_encoder_specs():
    """GPL slide encoders (read by slideflow.model.slide_encoders.registry); CHIEF moved to
    slideflow_noncommercial (its weights are for non-commercial academic use)."""
    return []
