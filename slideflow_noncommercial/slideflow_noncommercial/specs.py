"""Specs of the non-commercial extractors (plain data, no torch).

The architectures are timm Vision Transformers built by slideflow's generic families; this
distribution only carries the data that describes each model, so that installing it is an
explicit act of accepting non-commercial terms. Sources: docs/extractors.md.
"""

from __future__ import annotations

from slideflow.model.extractors.spec import ExtractorSpec, hf

DISTRIBUTION = "slideflow-noncommercial"

_UNI = ("Chen R.J. et al. Towards a general-purpose foundation model for computational "
        "pathology. Nature Medicine 30, 850-862 (2024).")
_VIRCHOW2 = ("Zimmermann E. et al. Virchow2: Scaling Self-Supervised Mixed Magnification Models "
             "in Pathology. arXiv:2408.00738 (2024).")
_GIGAPATH = ("Xu H. et al. A whole-slide foundation model for digital pathology from real-world "
             "data. Nature 630, 181-188 (2024).")
_PHIKON = ("Filiot A. et al. Scaling Self-Supervised Learning for Histopathology with Masked "
           "Image Modeling. medRxiv 2023.07.21.23292757.")
_PHIKON2 = ("Filiot A. et al. Phikon-v2, A large and public feature extractor for biomarker "
            "prediction. arXiv:2409.09173 (2024).")

_UNI2_KW = {"img_size": 224, "patch_size": 14, "depth": 24, "num_heads": 24,
            "init_values": 1e-5, "embed_dim": 1536, "mlp_ratio": 2.66667 * 2,
            "no_embed_class": True, "mlp_layer": "swiglu_packed", "act_layer": "silu",
            "reg_tokens": 8, "dynamic_img_size": True}
_VIRCHOW2_KW = {"img_size": 224, "init_values": 1e-5, "reg_tokens": 4, "mlp_ratio": 5.3375,
                "global_pool": "", "dynamic_img_size": True, "mlp_layer": "swiglu_packed",
                "act_layer": "silu"}
_GIGAPATH_KW = {"img_size": 224, "in_chans": 3, "patch_size": 16, "embed_dim": 1536,
                "depth": 40, "num_heads": 24, "init_values": 1e-5, "mlp_ratio": 5.33334,
                "dynamic_img_size": True}
_TRIDENT = "mahmoodlab/TRIDENT trident/patch_encoder_models/load.py"


def specs() -> list[ExtractorSpec]:
    nc = {"distribution": DISTRIBUTION}
    return [
        ExtractorSpec(
            name="uni", family="timm", dim=1024, input_px=224, license="CC-BY-NC-ND-4.0",
            citation=_UNI, aliases=("uni_v1",), resize_px=224, center_crop=224,
            interpolation="bilinear",
            build={"timm": "vit_large_patch16_224", "meta_init": True, "kwargs": {
                "img_size": 224, "patch_size": 16, "init_values": 1e-5,
                "dynamic_img_size": True}},
            weights=hf("MahmoodLab/uni", "pytorch_model.bin"), gated=True,
            description="UNI ViT-L/16 (DINOv2 on Mass-100K), 1024-d class token",
            reference="github.com/mahmoodlab/UNI README (timm kwargs, Resize(224) + "
                      "CenterCrop(224), ImageNet mean/std, CC-BY-NC-ND 4.0); " + _TRIDENT,
            **nc),
        ExtractorSpec(
            name="uni2", family="timm", dim=1536, input_px=224, license="CC-BY-NC-ND-4.0",
            citation=_UNI, aliases=("uni2_h", "uni_v2"), resize_px=224, center_crop=224,
            interpolation="bilinear",
            build={"timm": "vit_giant_patch14_224", "kwargs": dict(_UNI2_KW),
                   "meta_init": True},
            weights=hf("MahmoodLab/UNI2-h", "pytorch_model.bin"), gated=True,
            description="UNI2-h ViT-H/14 with 8 registers (SwiGLU), 1536-d class token",
            reference="github.com/mahmoodlab/UNI README (UNI2-h timm_kwargs, transforms)",
            **nc),
        ExtractorSpec(
            name="virchow2", family="timm", dim=2560, input_px=224,
            license="CC-BY-NC-ND-4.0", citation=_VIRCHOW2, interpolation="bicubic",
            build={"timm": "vit_huge_patch14_224", "kwargs": dict(_VIRCHOW2_KW),
                   "output": "cls_mean", "meta_init": True},
            weights=hf("paige-ai/Virchow2", "model.safetensors", "pytorch_model.bin"),
            gated=True,
            description="Virchow2 ViT-H/14 with 4 registers; class token concatenated with the "
                        "mean of the patch tokens (registers excluded), 2 x 1280",
            reference=_TRIDENT + " (timm kwargs, output[:, 5:] mean, Resize(224, bicubic)); "
                      "huggingface.co/paige-ai/Virchow2 (licence cc-by-nc-nd-4.0)",
            **nc),
        ExtractorSpec(
            name="gigapath", family="timm", dim=1536, input_px=224,
            license="Prov-GigaPath licence (non-commercial research only)",
            citation=_GIGAPATH, aliases=("prov_gigapath", "gigapath_tile"), resize_px=256,
            center_crop=224, interpolation="bicubic",
            build={"timm": "vit_giant_patch14_dinov2", "kwargs": dict(_GIGAPATH_KW),
                   "meta_init": True},
            weights=hf("prov-gigapath/prov-gigapath", "pytorch_model.bin"), gated=True,
            description="Prov-GigaPath tile encoder, ViT-g/16 (SwiGLU), 1536-d class token",
            reference=_TRIDENT + " (timm kwargs; Resize(256, bicubic) + CenterCrop(224), "
                      "ImageNet mean/std); github.com/prov-gigapath/prov-gigapath LICENSE",
            **nc),
        ExtractorSpec(
            name="phikon", family="hf_vit", dim=768, input_px=224,
            license="Owkin non-commercial", citation=_PHIKON, aliases=("histossl",),
            interpolation="bilinear",
            build={"patch_size": 16, "embed_dim": 768, "depth": 12, "num_heads": 12,
                   "ln_eps": 1e-6},
            weights=hf("owkin/phikon", "pytorch_model.bin"),
            checkpoint_keys=("teacher", "model", "state_dict"),
            strip_prefixes=("module.", "backbone."),
            expected_unexpected=("pooler.*", "embeddings.mask_token", "head.*",
                                 "masked_embed"),
            description="Phikon ViT-B/16 (iBOT on TCGA), 768-d class token; reads the Hugging "
                        "Face checkpoint or the original iBOT teacher checkpoint",
            reference=_TRIDENT + " (Resize((224, 224)), ImageNet mean/std, last_hidden_state"
                      "[:, 0]); huggingface.co/owkin/phikon (Owkin non-commercial licence)",
            **nc),
        ExtractorSpec(
            name="phikon_v2", family="hf_vit", dim=1024, input_px=224,
            license="Owkin non-commercial", citation=_PHIKON2, aliases=("phikonv2",),
            resize_px=224, center_crop=224, interpolation="bilinear",
            build={"patch_size": 16, "embed_dim": 1024, "depth": 24, "num_heads": 16,
                   "init_values": 1e-5, "ln_eps": 1e-6},
            weights=hf("owkin/phikon-v2", "model.safetensors"),
            expected_unexpected=("pooler.*", "embeddings.mask_token", "mask_token"),
            description="Phikon-v2 ViT-L/16 (DINOv2 on PANCAN-XL), 1024-d class token",
            reference=_TRIDENT + " (Resize(224) + CenterCrop(224), ImageNet mean/std); "
                      "huggingface.co/owkin/phikon-v2 (Owkin non-commercial licence)",
            **nc),
    ]
