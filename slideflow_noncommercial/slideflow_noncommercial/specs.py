"""Specs of the non-commercial extractors (plain data, no torch).

The architectures are timm Vision Transformers built by slideflow's generic families; this
distribution only carries the data that describes each model, so that installing it is an
explicit act of accepting non-commercial terms. Sources: docs/extractors.md.
"""

from __future__ import annotations

from slideflow.model.extractors.spec import SF3_MODULE, ExtractorSpec, WeightsSource, hf

from . import chief

DISTRIBUTION = "slideflow-noncommercial"

_UNI = ("@article{chen2024uni, title={Towards a general-purpose foundation model for "
        "computational pathology}, author={Chen, Richard J. and Ding, Tong and Lu, Ming Y. and "
        "others}, journal={Nature Medicine}, volume={30}, number={3}, pages={850--862}, "
        "year={2024}, doi={10.1038/s41591-024-02857-3}}")
_VIRCHOW2 = ("@article{zimmermann2024virchow2, title={Virchow2: Scaling Self-Supervised Mixed "
             "Magnification Models in Pathology}, author={Zimmermann, Eric and Vorontsov, Eugene "
             "and Viret, Julian and others}, journal={arXiv preprint arXiv:2408.00738}, "
             "year={2024}}")
_GIGAPATH = ("@article{xu2024gigapath, title={A whole-slide foundation model for digital "
             "pathology from real-world data}, author={Xu, Hanwen and Usuyama, Naoto and Bagga, "
             "Jaspreet and others}, journal={Nature}, volume={630}, pages={181--188}, "
             "year={2024}, doi={10.1038/s41586-024-07441-w}}")
_PHIKON = ("@article{filiot2023phikon, title={Scaling Self-Supervised Learning for "
           "Histopathology with Masked Image Modeling}, author={Filiot, Alexandre and Ghermi, "
           "Ridouane and Olivier, Antoine and others}, journal={medRxiv}, "
           "year={2023}, doi={10.1101/2023.07.21.23292757}}")
_PHIKON2 = ("@article{filiot2024phikonv2, title={Phikon-v2, A large and public feature extractor "
            "for biomarker prediction}, author={Filiot, Alexandre and Jacob, Paul and Mac Kain, "
            "Alice and Saillard, Charlie}, journal={arXiv preprint arXiv:2409.09173}, "
            "year={2024}}")

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
_CONCH = ("@article{lu2024conch, title={A visual-language foundation model for computational "
          "pathology}, author={Lu, Ming Y. and Chen, Bowen and Williamson, Drew F. K. and "
          "others}, journal={Nature Medicine}, volume={30}, pages={863--874}, year={2024}}")
_TITAN = ("@article{ding2024titan, title={Multimodal Whole Slide Foundation Model for Pathology}, "
          "author={Ding, Tong and Wagner, Sophia J. and Song, Andrew H. and others}, "
          "journal={arXiv preprint arXiv:2411.19666}, year={2024}}")
_KAIKO = ("@article{aben2024kaiko, title={Towards Large-Scale Training of Pathology Foundation "
          "Models}, author={Aben, Nanne and others}, journal={arXiv preprint "
          "arXiv:2404.15217}, year={2024}}")
_LUNIT = ("@inproceedings{kang2023benchmarking, title={Benchmarking Self-Supervised Learning on "
          "Diverse Pathology Datasets}, author={Kang, Mingu and Song, Heon and Park, Seonwook "
          "and Yoo, Donggeun and Pereira, S{\\'e}rgio}, booktitle={CVPR}, year={2023}}")
_PLIP = ("@article{huang2023plip, title={A visual-language foundation model for pathology image "
         "analysis using medical Twitter}, author={Huang, Zhi and Bianchi, Federico and "
         "Yuksekgonul, Mert and Montine, Thomas J. and Zou, James}, journal={Nature Medicine}, "
         "volume={29}, pages={2307--2316}, year={2023}}")
_GPFM = ("@article{ma2024gpfm, title={Towards A Generalizable Pathology Foundation Model via "
         "Unified Knowledge Distillation}, author={Ma, Jiabo and others}, journal={arXiv "
         "preprint arXiv:2407.18449}, year={2024}}")
_MUSK = ("@article{xiang2025musk, title={A vision-language foundation model for precision "
         "oncology}, author={Xiang, Jinxi and Wang, Xiyue and Zhang, Xiaoming and others}, "
         "journal={Nature}, volume={638}, pages={769--778}, year={2025}}")
_HOPTIMUS1 = ("@software{hoptimus1, title={H-optimus-1}, author={Bioptimus}, year={2025}, "
              "url={https://huggingface.co/bioptimus/H-optimus-1}}")
_H0MINI = ("@article{filiot2025h0mini, title={Distilling foundation models for robust and "
           "efficient models in digital pathology}, author={Filiot, Alexandre and Dop, Nicolas "
           "and Tchita, Oussama and Riou, Auriane and Dubois, R{\\'e}my and Peeters, Thomas "
           "and Valter, Daria and Scalbert, Marin and Saillard, Charlie and Robin, "
           "Genevi{\\`e}ve and Olivier, Antoine}, journal={arXiv preprint arXiv:2501.16239}, "
           "note={MICCAI 2025}, year={2025}}")
_PLIP_LIC = ("no licence (card metadata empty, repository without LICENSE); card: research use "
             "only, any deployed use out of scope")
_HOPT1_LIC = ("H-optimus-1 terms (gated; academic research access, commercial use via "
              "Bioptimus; non-commercial)")
_H0MINI_LIC = ("CC-BY-NC-ND-4.0 (gated; from third-party model tables and Slideflow 3's "
               "'non-commercial use only' -- the card's licence field was not in the index)")
_HOPT_MEAN, _HOPT_STD = (0.707223, 0.578729, 0.703617), (0.211883, 0.230117, 0.177517)
_LUNIT_MEAN = (0.70322989, 0.53606487, 0.66096631)
_LUNIT_STD = (0.21716536, 0.26081574, 0.20723464)
_OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
_OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
_KAIKO_LIC = "Kaiko Non-Commercial Public License v1"
_KAIKO_REL = "https://github.com/kaiko-ai/towards_large_pathology_fms/releases/download/0.0.1/"
_LUNIT_REL = "https://github.com/lunit-io/benchmark-ssl-pathology/releases/download/pretrained-weights/"


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
            sf3_class=SF3_MODULE + "uni.UNIFeatures",
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
            sf3_class=SF3_MODULE + "uni2.UNI2Features",
            description="UNI2-h ViT-H/14 with 8 registers (SwiGLU), 1536-d class token",
            reference="github.com/mahmoodlab/UNI README (UNI2-h timm_kwargs, transforms)",
            **nc),
        ExtractorSpec(
            name="virchow2", family="timm", dim=2560, input_px=224,
            license="CC-BY-NC-ND-4.0", citation=_VIRCHOW2, interpolation="bicubic",
            build={"timm": "vit_huge_patch14_224", "kwargs": dict(_VIRCHOW2_KW),
                   "output": "cls_mean", "meta_init": True},
            weights=hf("paige-ai/Virchow2", "model.safetensors", "pytorch_model.bin"),
            gated=True, sf3_class=SF3_MODULE + "virchow2.Virchow2Features",
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
            sf3_class=SF3_MODULE + "gigapath.GigapathTileFeatures",
            sf3_transforms={"resize": 256, "center_crop": 224, "order": "resize_crop",
                            "interpolation": "bicubic"},
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
            sf3_class=SF3_MODULE + "phikon.PhikonFeatures",
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
            sf3_class=SF3_MODULE + "phikonv2.PhikonV2Features",
            sf3_transforms={"resize": None, "center_crop": None, "order": None,
                            "interpolation": None, "antialias": None},
            expected_unexpected=("pooler.*", "embeddings.mask_token", "mask_token"),
            description="Phikon-v2 ViT-L/16 (DINOv2 on PANCAN-XL), 1024-d class token",
            reference=_TRIDENT + " (Resize(224) + CenterCrop(224), ImageNet mean/std); "
                      "huggingface.co/owkin/phikon-v2 (Owkin non-commercial licence)",
            **nc),
        ExtractorSpec(
            name="conch", family="coca", dim=512, input_px=448, license="CC-BY-NC-ND-4.0",
            citation=_CONCH, aliases=("conch_v1", "conch_v1_0"), mean=_OPENAI_MEAN,
            std=_OPENAI_STD, resize_px=448, center_crop=448, interpolation="bicubic",
            weights=hf("MahmoodLab/CONCH", "pytorch_model.bin"), gated=True,
            strip_prefixes=("module.", "visual."),
            expected_unexpected=("text.*", "text_decoder.*", "logit_scale",
                                 "attn_pool_caption.*", "ln_caption.*"),
            description="CONCH v1 image tower: ViT-B/16 at 448 px + attentional pooler + "
                        "LayerNorm, 512-d (encode_image(proj_contrast=False, normalize=False)); "
                        "proj_contrast=True applies the contrastive projection",
            reference="github.com/mahmoodlab/CONCH open_clip_custom/{coca_model,vision_tower,"
                      "transformer,transform,factory}.py and conch_ViT-B-16.json (448 px, "
                      "Resize(448, bicubic) + CenterCrop, OpenAI CLIP mean/std); " + _TRIDENT,
            **nc),
        ExtractorSpec(
            name="conch_v15", family="coca_v15", dim=768, input_px=448, license="CC-BY-NC-ND-4.0",
            citation=_TITAN, aliases=("conch_v1_5", "conchv1_5", "conch1.5"),
            resize_px=448, center_crop=448, interpolation="bilinear",
            build={"meta_init": True},
            weights=hf("MahmoodLab/conchv1_5", "pytorch_model_vision.bin"), gated=True,
            description="CONCH v1.5 image tower (TITAN's patch encoder): ViT-L/16 with "
                        "LayerScale + attentional pooler + LayerNorm, 768-d, 448 px",
            reference=_TRIDENT + " Conchv15InferenceEncoder and model_zoo/conchv1_5/conchv1_5.py "
                      "(vit_large init_values 1.0, AttentionalPooler(768, 1024, 8 heads, 1 "
                      "query), Resize(448, bilinear) + CenterCrop(448), ImageNet mean/std)",
            **nc),
        ExtractorSpec(
            name="h_optimus_1", family="timm", dim=1536, input_px=224,
            license=_HOPT1_LIC, citation=_HOPTIMUS1, aliases=("hoptimus1", "h-optimus-1"),
            mean=_HOPT_MEAN, std=_HOPT_STD, interpolation="bilinear",
            build={"timm_class": "VisionTransformer", "kwargs": {
                "patch_size": 14, "embed_dim": 1536, "depth": 40, "num_heads": 24,
                "init_values": 1e-5, "mlp_ratio": 5.33334, "mlp_layer": "glu_silu",
                "act_layer": "silu", "reg_tokens": 4, "no_embed_class": True, "img_size": 224,
                "num_classes": 0, "in_chans": 3, "dynamic_img_size": True}, "meta_init": True},
            weights=hf("bioptimus/H-optimus-1"), gated=True,
            description="H-optimus-1 ViT-g/14 with 4 registers (same architecture as "
                        "H-optimus-0), 1536-d class token",
            reference=_TRIDENT + " HOptimus1InferenceEncoder (vit_giant_patch14_reg4_dinov2, "
                      "init_values 1e-5, Resize(224), H-optimus mean/std); licence: "
                      "Bioptimus release post resources.bioptimus.com ('can be accessed for "
                      "academic research purposes'), HF discussions (gated academic access "
                      "requests); the licence text itself is not in the search index",
            **nc),
        ExtractorSpec(
            name="h0_mini", family="timm", dim=1536, input_px=224,
            license=_H0MINI_LIC, citation=_H0MINI, aliases=("h0-mini", "h0mini"),
            mean=_HOPT_MEAN, std=_HOPT_STD, interpolation="bicubic",
            build={"timm": "vit_base_patch14_reg4_dinov2", "output": "cls_mean", "kwargs": {
                "img_size": 224, "init_values": 1e-5, "mlp_ratio": 4096 / 768,
                "mlp_layer": "swiglu_packed", "act_layer": "silu", "dynamic_img_size": True}},
            weights=hf("bioptimus/H0-mini"), gated=True,
            sf3_class=SF3_MODULE + "h0_mini.H0MiniFeatures",
            sf3_transforms={"interpolation": "bicubic", "norm_mean": _HOPT_MEAN,
                            "norm_std": _HOPT_STD},
            sf3_kwargs={"pool": ("output", "cls")},
            description="H0-mini (Bioptimus/Owkin): ViT-B/14 with 4 registers and a packed "
                        "SwiGLU MLP, distilled from H-optimus-0; class token concatenated "
                        "with the mean of the 256 patch tokens (registers excluded), 2 x 768 "
                        "as the card recommends; output='cls' gives the 768-d class token "
                        "(TRIDENT's and Slideflow 3's default)",
            reference="H0-mini card usage (timm hf-hub:bioptimus/H0-mini with "
                      "mlp_layer=SwiGLUPacked, act_layer=SiLU; output (1, 261, 768); CLS + "
                      "mean of output[:, num_prefix_tokens:] = 1536), as quoted in "
                      "downstream repos; kaiko-ai/eva backbones/pathology/bioptimus.py "
                      "(ViT-B, distilled from H-optimus-0 on TCGA); Slideflow 3 "
                      "noncommercial h0_mini.py (vit_base_patch14_reg4_dinov2, img 224, "
                      "init_values 1e-5, mlp_ratio 4096/768, bicubic, H-optimus mean/std); "
                      + _TRIDENT + " H0MiniInferenceEncoder (return_type cls_token | "
                      "cls+mean). NOT verified: the hub config.json itself (not in the "
                      "search index) -- its pretrained_cfg crop_pct is unknown, so tiles "
                      "are squashed to 224 without a crop as Slideflow 3 does; Slideflow 3 "
                      "bags (slideflow/slideflow-noncommercial extractors/h0_mini.py: pool "
                      "'cls' by default, no resize) rebuild with their pool",
            **nc),
        ExtractorSpec(
            name="gpfm", family="dino", dim=1024, input_px=224,
            license="CC-BY-NC-ND-4.0", citation=_GPFM, interpolation="bicubic",
            build={"embed_dim": 1024, "depth": 24, "heads": 16, "patch": 14, "regs": 0,
                   "layerscale": 1e-5, "ffn": "mlp", "pos_mode": "hf", "meta_init": True},
            weights=hf("majiabo/GPFM", "GPFM.pth"),
            expected_unexpected=("mask_token",),
            description="GPFM ViT-L/14 (DINOv2 layout), 1024-d class token",
            reference=_TRIDENT + " GPFMInferenceEncoder (vit_large_patch14_dinov2, img 224, "
                      "init_values 1e-5, Resize((224, 224)) bicubic, ImageNet mean/std); "
                      "github.com/birkhoffkiki/GPFM LICENSE (CC BY-NC-ND 4.0)",
            **nc),
        ExtractorSpec(
            name="plip", family="clip", dim=512, input_px=224,
            license=_PLIP_LIC, citation=_PLIP,
            mean=_OPENAI_MEAN, std=_OPENAI_STD, resize_px=224, center_crop=224,
            interpolation="bicubic",
            build={"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
                   "num_attention_heads": 12, "image_size": 224, "patch_size": 32,
                   "projection_dim": 512, "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5},
            weights=hf("vinid/plip", "pytorch_model.bin", "model.safetensors"),
            expected_unexpected=("text_model.*", "text_projection.*", "logit_scale",
                                 "vision_model.embeddings.position_ids"),
            description="PLIP image tower: CLIP ViT-B/32, 512-d projected image embedding "
                        "(CLIPModel.get_image_features, not normalised)",
            reference="PLIP paper (CLIP ViT-B/32 fine-tuned on OpenPath); CLIPProcessor "
                      "(shorter side 224 bicubic, center crop 224, OpenAI CLIP mean/std); "
                      "licence: huggingface.co/vinid/plip card (empty metadata, 'Model Use "
                      "(from CLIP Model Card)': research output, any deployed use out of "
                      "scope) and PathologyFoundation/plip (no LICENSE file)",
            **nc),
        _kaiko("vits16", "vit_small_patch16_224", 384),
        _kaiko("vits8", "vit_small_patch8_224", 384),
        _kaiko("vitb16", "vit_base_patch16_224", 768),
        _kaiko("vitb8", "vit_base_patch8_224", 768),
        ExtractorSpec(
            name="kaiko_vitl14", family="dino", dim=1024, input_px=224, license=_KAIKO_LIC,
            citation=_KAIKO, aliases=("kaiko-vitl14",), mean=HALF3, std=HALF3,
            resize_px=224, center_crop=224, interpolation="bilinear",
            build={"embed_dim": 1024, "depth": 24, "heads": 16, "patch": 14, "regs": 4,
                   "layerscale": 1e-5, "ffn": "mlp", "native_px": 518, "pos_mode": "hf",
                   "meta_init": True},
            weights=WeightsSource("hf", repo_id="1aurent/vit_large_patch14_reg4_dinov2."
                                  "kaiko_ai_towards_large_pathology_fms",
                                  filenames=("model.safetensors",), url=_KAIKO_REL + "vitl14.pth"),
            expected_unexpected=("mask_token",),
            description="kaiko.ai ViT-L/14 with 4 registers (DINOv2), built at 518 px and run "
                        "at 224 px with timm's position resampling, as TRIDENT does; 1024-d "
                        "class token",
            reference="kaiko-ai/towards_large_pathology_fms hubconf.py "
                      "(vit_large_patch14_reg4_dinov2, _convert_dinov2); " + _TRIDENT +
                      " (img_size 518, dynamic_img_size, Resize + CenterCrop 224, mean = std "
                      "= 0.5); LICENSE (Kaiko Non-Commercial)",
            **nc),
        ExtractorSpec(
            name="musk", family="musk", dim=2048, input_px=384, license="CC-BY-NC-ND-4.0",
            citation=_MUSK, aliases=("musk_large_patch16_384",), mean=HALF3, std=HALF3,
            resize_px=384, center_crop=384, interpolation="bicubic",
            build={"img_size": 384, "patch": 16, "embed_dim": 1024, "depth": 24, "heads": 16,
                   "ffn_dim": 4096, "ln_eps": 1e-5, "meta_init": True},
            weights=hf("xiangjx/musk"), gated=True,
            checkpoint_keys=("model", "module", "state_dict"),
            sf3_class="slideflow_noncommercial.extractors.musk.MUSKFeatures",
            sf3_transforms={"center_crop": True, "interpolation": "bicubic",
                            "norm_mean": HALF3, "norm_std": HALF3},
            sf3_kwargs={"ms_aug": ("ms_aug", True), "with_head": ("with_head", False),
                        "out_norm": ("out_norm", True)},
            expected_unexpected=("*.B.*", "beit3.text_embed.*", "language_head.*",
                                 "logit_scale", "beit3.vision_embed.mask_token"),
            description="MUSK image path: BEiT-3 multiway ViT-L/16 at 384 px (vision "
                        "experts); multi-scale feature as the MUSK README recommends for "
                        "linear probes / MIL: class token ++ mean class token of the 2x2 "
                        "pieces of the 2x-upsampled tile (2048-d, 5 forwards per tile); "
                        "ms_aug=False gives the 1024-d class token (TRIDENT's default); "
                        "with_head=True / out_norm=True as in MUSK's retrieval usage",
            reference="github.com/lilab-stanford/MUSK musk/modeling.py (_get_large_config, "
                      "MUSK.forward), musk/torchscale/{model/BEiT3.py,architecture/encoder.py} "
                      "and microsoft/torchscale components (subln, fairseq positions from 2); "
                      "README (CC-BY-NC-ND 4.0; with_head=False, out_norm=False, "
                      "ms_aug=True for linear probe / MIL) and musk/utils.py "
                      "MultiScaleForward (scales [1, 2], max_split_size = input size, "
                      "bicubic F.interpolate, chessboard split, cat(scale 1, mean scale 2)); "
                      + _TRIDENT + " MuskInferenceEncoder (Resize(384, bicubic) + "
                      "CenterCrop(384), inception mean = std = 0.5, out_norm off, ms_aug off); "
                      "Slideflow 3 MUSKFeatures (slideflow/slideflow-noncommercial "
                      "extractors/musk.py: ms_aug on, with_head off, out_norm ON by default, "
                      "center crop 384 without resize) rebuilds with its own settings",
            **nc),
        _lunit(16, "dino_vit_small_patch16_ep200.torch"),
        _lunit(8, "dino_vit_small_patch8_ep200.torch"),
        *(_lunit_rn50(method) for method in ("bt", "swav", "mocov2")),
        chief.tile_spec(DISTRIBUTION),
    ]


HALF3 = (0.5, 0.5, 0.5)


def _kaiko(tag: str, timm_name: str, dim: int) -> ExtractorSpec:
    repo = f"1aurent/{timm_name}.kaiko_ai_towards_large_pathology_fms"
    return ExtractorSpec(
        name=f"kaiko_{tag}", family="timm", dim=dim, input_px=224, license=_KAIKO_LIC,
        citation=_KAIKO, aliases=(f"kaiko-{tag}",), mean=HALF3, std=HALF3, resize_px=224,
        center_crop=224, interpolation="bilinear",
        build={"timm": timm_name, "kwargs": {"dynamic_img_size": True}},
        weights=WeightsSource("hf", repo_id=repo, filenames=("model.safetensors",),
                              url=_KAIKO_REL + f"{tag}.pth"),
        expected_unexpected=("head.*",), distribution=DISTRIBUTION,
        description=f"kaiko.ai {timm_name} (DINO/DINOv2 on TCGA), {dim}-d class token",
        reference="kaiko-ai/towards_large_pathology_fms hubconf.py (timm name, "
                  "dynamic_img_size, strict load) and LICENSE; " + _TRIDENT +
                  " KaikoInferenceEncoder (Resize + CenterCrop 224 bilinear, mean = std = 0.5)")


def _lunit(patch: int, filename: str) -> ExtractorSpec:
    return ExtractorSpec(
        name=f"lunit_vits{patch}", family="timm", dim=384, input_px=224,
        license="Lunit non-commercial public licence", citation=_LUNIT,
        aliases=(f"lunit-vits{patch}", f"lunit_dino_p{patch}"), mean=_LUNIT_MEAN,
        std=_LUNIT_STD, interpolation="bilinear",
        build={"timm_class": "VisionTransformer", "kwargs": {
            "img_size": 224, "patch_size": patch, "embed_dim": 384, "num_heads": 6,
            "num_classes": 0, "dynamic_img_size": True}},
        weights=WeightsSource("hf", repo_id=f"1aurent/vit_small_patch{patch}_224.lunit_dino",
                              filenames=("model.safetensors",), url=_LUNIT_REL + filename),
        distribution=DISTRIBUTION,
        description=f"Lunit DINO ViT-S/{patch} (19M TCGA patches), 384-d class token",
        reference="github.com/lunit-io/benchmark-ssl-pathology README (timm "
                  "VisionTransformer(img 224, embed 384, 6 heads), release files) and LICENSE; "
                  "Lunit mean/std as used with these weights (Resize((224, 224)))")


def _lunit_rn50(method: str) -> ExtractorSpec:
    return ExtractorSpec(
        name=f"lunit_rn50_{method}", family="torchvision", dim=2048, input_px=224,
        license="Lunit non-commercial public licence", citation=_LUNIT,
        aliases=(f"lunit_resnet50_{method}",), mean=_LUNIT_MEAN, std=_LUNIT_STD,
        interpolation="bilinear", cnn=True, build={"arch": "resnet50"},
        weights=WeightsSource("hf", repo_id=f"1aurent/resnet50.lunit_{method}",
                              filenames=("model.safetensors",),
                              url=_LUNIT_REL + f"{method}_rn50_ep200.torch"),
        expected_unexpected=("fc.*",), distribution=DISTRIBUTION,
        description=f"Lunit ResNet-50 ({method}, 19M TCGA patches), 2048-d pooled features",
        reference="github.com/lunit-io/benchmark-ssl-pathology README (ResNetTrunk = "
                  "torchvision ResNet-50 without fc, release files) and LICENSE; Lunit "
                  "mean/std as the ViT-S specs; AtlasPatch models/patch/lunit.py (timm "
                  "hf-hub:1aurent/resnet50.lunit_*, num_features 2048)")


# ---------------------------------------------------------------------------- slide encoders
_TITAN_BIB = """@article{ding2024titan,
  title={Multimodal Whole Slide Foundation Model for Pathology},
  author={Ding, Tong and Wagner, Sophia J. and Song, Andrew H. and Chen, Richard J. and
          Lu, Ming Y. and Zhang, Andrew and Vaidya, Anurag J. and Jaume, Guillaume and
          others and Mahmood, Faisal},
  journal={arXiv preprint arXiv:2411.19666},
  year={2024}
}"""
_FEATHER_BIB = """@inproceedings{shao2025do,
  title={Do Multiple Instance Learning Models Transfer?},
  author={Shao, Daniel and Chen, Richard J and Song, Andrew H and Runevic, Joel and
          Lu, Ming Y. and Ding, Tong and Mahmood, Faisal},
  booktitle={International Conference on Machine Learning},
  year={2025}
}"""
_MADELEINE_BIB = """@inproceedings{jaume2024multistain,
  title={Multistain Pretraining for Slide Representation Learning in Pathology},
  author={Jaume, Guillaume and Vaidya, Anurag Jayant and Zhang, Andrew and Song, Andrew H and
          Chen, Richard J. and Sahai, Sharifa and Mo, Dandan and Madrigal, Emilio and
          Le, Long Phi and Mahmood, Faisal},
  booktitle={European Conference on Computer Vision},
  year={2024}
}"""
_GIGAPATH_BIB = """@article{xu2024gigapath,
  title={A whole-slide foundation model for digital pathology from real-world data},
  author={Xu, Hanwen and Usuyama, Naoto and Bagga, Jaspreet and Zhang, Sheng and Rao, Rajesh
          and Naumann, Tristan and Wong, Cliff and Gero, Zelalem and others and Poon, Hoifung},
  journal={Nature},
  volume={630},
  pages={181--188},
  year={2024},
  doi={10.1038/s41586-024-07441-w}
}"""
_PRISM_BIB = """@article{shaikovski2024prism,
  title={PRISM: A Multi-Modal Generative Foundation Model for Slide-Level Histopathology},
  author={Shaikovski, George and Casson, Adam and Severson, Kristen and Zimmermann, Eric and
          others},
  journal={arXiv preprint arXiv:2405.10254},
  year={2024}
}"""
_MOOZY_BIB = """@misc{kotp2026moozy,
  title={MOOZY: A Patient-First Foundation Model for Computational Pathology},
  author={Kotp, Yousef and Trinh, Vincent Quoc-Huy and Pal, Christopher and
          Hosseini, Mahdi S.},
  year={2026},
  eprint={2603.27048},
  archivePrefix={arXiv},
  primaryClass={cs.CV}
}"""
_TRIDENT_SLIDE = "mahmoodlab/TRIDENT trident/slide_encoder_models/load.py"
_GIGAPATH_LICENSE = "Prov-GigaPath licence (non-commercial research only)"
_GIGAPATH_REF = ("prov-gigapath/prov-gigapath gigapath/slide_encoder.py (LongNetViT, "
                 "gigapath_slide_enc12l768d, coords_to_pos, get_optimal_segment_length, "
                 "create_model: global_pool False, checkpoint['model'] of slide_encoder.pth), "
                 "gigapath/pos_embed.py (2-D sin-cos), gigapath/torchscale/model/"
                 "LongNetConfig.py (LongNet_12_layers_768_dim: 16 heads, FFN 3072, dilated "
                 "ratios [1, 2, 4, 8, 16]) and the torchscale EncoderConfig/Encoder/"
                 "DilatedAttention it bundles; gigapath/pipeline.py (1536-d tile features, "
                 "level-0 top-left coords); demo/2_tiling_demo.py (0.5 mpp, 256-px tiles); "
                 "LICENSE (non-commercial research only); " + _TRIDENT_SLIDE +
                 " (GigaPathSlideEncoder: global_pool=True, all_layer_embed [11], "
                 "tile_size = patch_size_level0)")


def slide_encoder_specs():
    """Non-commercial slide encoders (read by slideflow.model.slide_encoders.registry)."""
    from slideflow.model.slide_encoders.spec import SlideEncoderSpec

    nc = {"distribution": DISTRIBUTION, "license": "CC-BY-NC-ND-4.0", "gated": True}
    return [
        SlideEncoderSpec(
            name="gigapath_slide", family="gigapath_slide", dim=768, tile_extractor="gigapath",
            tile_features=1536, tile_px=256, tile_um="20x", geometry_strict=True,
            positional="level0", citation=_GIGAPATH_BIB,
            aliases=("gigapath", "prov_gigapath_slide", "gigapath_slide_enc12l768d"),
            build={"in_chans": 1536, "embed_dim": 768, "depth": 12, "heads": 16,
                   "mlp_ratio": 4.0, "slide_ngrids": 1000, "tile_size": 256,
                   "max_wsi_size": 262144, "dilated_ratios": (1, 2, 4, 8, 16),
                   "global_pool": False, "layer": None},
            weights=hf("prov-gigapath/prov-gigapath", "slide_encoder.pth"),
            checkpoint_keys=("model", "state_dict"),
            # the fixed sin-cos table, if a checkpoint stores it, is rebuilt from the formula
            expected_unexpected=("pos_embed",),
            slideflow_pair=True, distribution=DISTRIBUTION, license=_GIGAPATH_LICENSE,
            gated=True,
            description="Prov-GigaPath slide encoder: LongNet (12 layers, 768-d, dilated "
                        "attention) over GigaPath tile features with 2-D sin-cos positions of "
                        "floor(level-0 xy / 256); class token -> 768-d. global_pool=True / "
                        "layer=k give the pooled / per-layer variants",
            reference=_GIGAPATH_REF),
        SlideEncoderSpec(
            name="moozy", family="moozy", dim=768, level="patient",
            tile_extractor="lunit_vits8", tile_features=384, tile_px=224, tile_um="20x",
            positional="grid", citation=_MOOZY_BIB, aliases=("moozy_case",),
            build={"feat_dim": 384, "dim": 768, "heads": 12, "depth": 6, "hidden": 3072,
                   "registers": 4, "qk_norm": False, "layerscale": 0.0, "case_heads": 12,
                   "case_depth": 3, "case_hidden": 3072, "case_layerscale": 1e-5,
                   "case_qk_norm": False},
            weights=hf("AtlasAnalyticsLab/MOOZY", "moozy.pt"),
            checkpoint_parts=(("teacher_slide_encoder", "slide_encoder."),
                              ("case_transformer", "case_transformer.")),
            distribution=DISTRIBUTION, license="CC-BY-NC-SA-4.0", gated=False,
            description="MOOZY: slide encoder (ViT, 6 blocks, 768-d, 4 registers, 2-D ALiBi "
                        "over the tile grid) over Lunit DINO ViT-S/8 features, 768-d slide "
                        "embedding; patients: case transformer (3 blocks) over the slide "
                        "embeddings, 768-d. No VRAM token cap (every tile is used)",
            reference="AtlasAnalyticsLab/MOOZY moozy/models/{moozy_slide_encoder,"
                      "case_transformer,layers,factory,serialization,variants}.py, "
                      "moozy/config/model.py, moozy/data/features/grid.py, moozy/data/stage2/"
                      "dataset.py, moozy/encoding.py (lunit_vit_small_patch8_dino, 224 px, "
                      "20x), moozy/hf_hub.py (moozy.pt), MODEL_CARD.md (6-layer slide "
                      "encoder, 3-layer case transformer, CC BY-NC-SA 4.0, no access gate)"),
        SlideEncoderSpec(
            name="prism", family="prism", dim=1280, tile_extractor="virchow",
            tile_features=2560, tile_px=224, tile_um="20x", citation=_PRISM_BIB,
            aliases=("paige_prism", "prism_slide"),
            build={"latent_seq": 512, "latent_dim": 1280, "context_dim": 2560,
                   "mhsa_heads": 8, "perceiver_depth": 8, "transformer_depth": 6,
                   "share_xattn_start_layer": 1, "share_tf_start_layer": 0,
                   "xattn_heads": 1, "mlp_mult": 1},
            weights=hf("paige-ai/Prism", "model.safetensors", "pytorch_model.bin"),
            expected_unexpected=("text_decoder.*", "text_to_latents.*", "img_to_latents.*",
                                 "temperature"),
            description="PRISM slide encoder only: Perceiver (513 latents x 1280, 8 "
                        "cross-attention layers with shared weights, 6-block latent "
                        "transformer) over Virchow tile embeddings; the slide embedding is "
                        "the normalised first latent (image_embedding), 1280-d. The BioGPT "
                        "report decoder and the contrastive heads are not built",
            reference="huggingface.co/paige-ai/Prism perceiver.py (CrossAttention, MHSA, "
                      "GEGLU FeedForward, Perceiver, PerceiverResampler), configuring_prism.py "
                      "(PerceiverConfig defaults), modeling_prism.py (slide_representations, "
                      "image_resampler), model card (Virchow V1 2560-d inputs, 1280-d "
                      "image_embedding, CC-BY-NC-ND-4.0, gated); " + _TRIDENT_SLIDE +
                      " (prism -> virchow); Virchow model card (224-px tiles at 0.5 mpp)",
            **nc),
        SlideEncoderSpec(
            name="titan", family="titan", dim=768, tile_extractor="conch_v15",
            tile_features=768, tile_px=512, tile_um="20x", geometry_strict=True,
            positional="grid", citation=_TITAN_BIB,
            build={"in_dim": 768, "dim": 768, "depth": 6, "heads": 12, "mlp_ratio": 4.0,
                   "pool_heads": 8, "pool_queries": 128},
            weights=hf("MahmoodLab/TITAN", "model.safetensors", "pytorch_model.bin"),
            expected_unexpected=("text_encoder.*",),
            description="TITAN slide encoder: ViT (6 blocks, 768-d) over the 2-D grid of "
                        "CONCH v1.5 features with 2-D ALiBi, contrastive attentional pooling",
            reference="huggingface.co/MahmoodLab/TITAN vision_transformer.py, "
                      "modeling_titan.py, config.json vision_config (depth 6, 12 heads, "
                      "alibi, attn_pooler 8 heads); " + _TRIDENT_SLIDE + " (conch_v15, "
                      "--mag 20 --patch_size 512, CC-BY-NC-ND 4.0)", **nc),
        SlideEncoderSpec(
            name="feather", family="feather", dim=512, tile_extractor="conch_v15",
            tile_features=768, citation=_FEATHER_BIB, aliases=("feather_24k",),
            build={"in_dim": 768, "embed_dim": 512, "attn_dim": 384, "num_heads": 1},
            weights=hf("MahmoodLab/abmil.base.conch_v15.pc108-24k", "model.safetensors"),
            description="FEATHER-24K: gated ABMIL (512-d, 1 head) pretrained on PC-108 over "
                        "CONCH v1.5 features; no classification head",
            reference="mahmoodlab/MIL-Lab src/models/abmil.py + model_configs/abmil/base.yaml "
                      "(gate, embed 512, attn 384, 1 fc layer) + README (FEATHER-24K weights, "
                      "no head, CC-BY-NC-ND 4.0); " + _TRIDENT_SLIDE + " (feather -> "
                      "conch_v15, forward_features)", **nc),
        SlideEncoderSpec(
            name="madeleine", family="madeleine", dim=512, tile_extractor="conch",
            tile_features=512, tile_px=256, tile_um="10x", citation=_MADELEINE_BIB,
            build={"in_dim": 512, "hidden": 512, "n_heads": 4, "attn_hidden": 512,
                   "token_dim": 128},
            weights=hf("MahmoodLab/madeleine", "model.pt"),
            description="MADELEINE (BRCA, H&E branch): multi-head gated ABMIL over CONCH v1 "
                        "features of 256-px tiles at 10x",
            reference="mahmoodlab/MADELEINE madeleine/models/Model.py (encode_he), "
                      "core/models/abmil.py, scripts/launch_pretrain_withoutStainEncodings.sh "
                      "(n_heads 4, patch_embedding_dim 512, hidden 512, softmax), "
                      "bin/extract_patch_embeddings.py (10x, 256 px), README (CONCH, "
                      "CC-BY-NC-ND 4.0); gated flag assumed like other MahmoodLab repos", **nc),
        chief.slide_spec(DISTRIBUTION),
    ]
