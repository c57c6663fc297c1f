"""sf.mil on a real slide: predict_slide rebuilds the extractor from the model folder, the
attention grid matches the slide's tile grid, and `slideflow mil predict` writes heatmaps."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("pyarrow")
pytest.importorskip("matplotlib")

from mil_synth import make_bags  # noqa: E402

import slideflow as sf  # noqa: E402
from slideflow.mil import MILError, mil_config  # noqa: E402

from conftest import CMU  # noqa: E402

TILE_PX, TILE_UM = 224, 112


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A small attention_mil trained on synthetic 1280-feature bags that claim to be
    efficientnet_lite0 bags of CMU's geometry (Otsu QC)."""
    from slideflow.features import bags_config
    from slideflow.selection import TileSelection

    ext = sf.build_feature_extractor("efficientnet_lite0_imagenet")
    cfg = bags_config(ext, None, TILE_PX, TILE_UM, TileSelection(qc="otsu"), "pt")
    root = tmp_path_factory.mktemp("mil_slide")
    df, _ = make_bags(root / "bags", n_bags=12, dim=1280, tiles=(8, 12),
                      config=json.loads(json.dumps(cfg)))
    res = sf.mil.train_mil(mil_config("attention_mil", epochs=1, batch_size=4, bag_size=8,
                                      model_kwargs={"hidden": 16, "attn_hidden": 8}),
                           df.iloc[:8], df.iloc[8:], "label", root / "bags",
                           outdir=root / "model", progress=False)
    return res.outdir


def test_predict_slide_rebuilds_extractor(model_dir, slides):
    y, att = sf.mil.predict_slide(model_dir, CMU, attention=True)
    assert y.shape == (2,) and y.sum() == pytest.approx(1, rel=1e-5)
    with sf.WSI(CMU, TILE_PX, TILE_UM) as wsi:
        wsi.qc("otsu")
        grid = wsi.grid
    assert att.shape == grid.shape and np.array_equal(~att.mask, grid)
    assert att.count() == grid.sum() > 10
    assert float(att.sum()) == pytest.approx(1, rel=1e-4)
    with sf.WSI(CMU, 256, 128) as other, pytest.raises(MILError, match="256px/128.*224px/112"):
        sf.mil.predict_slide(model_dir, other)


def test_cli_predict_writes_heatmaps(model_dir, slides, tmp_path):
    import shapely.geometry
    from typer.testing import CliRunner

    from slideflow.cli import app

    out = tmp_path / "pred"
    res = CliRunner().invoke(app, ["mil", "predict", str(model_dir), str(CMU),
                                   str(tmp_path / "missing.svs"), "-o", str(out)])
    assert res.exit_code == 1, res.output
    df = pd.read_csv(out / "predictions.csv")
    assert list(df.slide) == ["CMU-1-Small-Region"] and df.predicted_class[0] in ("neg", "pos")
    assert pd.read_csv(out / "failures.csv").slide.tolist() == ["missing"]
    geo = json.loads((out / "heatmaps/CMU-1-Small-Region.geojson").read_text())
    shapes = [shapely.geometry.shape(f["geometry"]) for f in geo["features"]]
    with sf.WSI(CMU, TILE_PX, TILE_UM) as wsi:
        extent = wsi.full_extract_px
    assert len(shapes) == int(df.tiles[0]) > 10
    assert all(s.is_valid and s.area == extent ** 2 for s in shapes)
    assert {"attention", "y_pred0", "y_pred1"} == set(geo["features"][0]["properties"]
                                                      ["measurements"])
    assert (out / "heatmaps/CMU-1-Small-Region.png").read_bytes()[:4] == b"\x89PNG"
    bad = CliRunner().invoke(app, ["mil", "predict", str(tmp_path), str(CMU), "-o", str(out)])
    assert bad.exit_code == 2 and "error:" in bad.output and "mil_params.json" in bad.output


def test_eval_mil_attention_heatmaps(model_dir, cmu_slides_project, tmp_path):
    from slideflow.io.bags import write_bag
    from slideflow.io.bags_config import write_bags_config

    P = cmu_slides_project
    pd.DataFrame([{"slide": CMU.stem, "patient": "p1", "label": "pos"}]).to_csv(
        P.annotations, index=False)
    with sf.WSI(CMU, TILE_PX, TILE_UM) as wsi:
        coords, extent = wsi.coords, wsi.full_extract_px
    bags = tmp_path / "bags"
    rng = np.random.default_rng(0)
    write_bag(bags / f"{CMU.stem}.pt", rng.standard_normal((len(coords), 1280)).astype(
        np.float32), coords, patch_size_level0=extent)
    write_bags_config(bags, json.loads((model_dir / "mil_params.json").read_text())
                      ["bags_extractor"])
    df = sf.mil.eval_mil(model_dir, P.dataset(), "label", bags, outdir=tmp_path / "ev",
                         attention_heatmaps=True)
    assert list(df.slide) == [CMU.stem]
    geo = json.loads((tmp_path / f"ev/heatmaps/{CMU.stem}.geojson").read_text())
    assert len(geo["features"]) == len(coords)
    assert geo["features"][0]["geometry"]["coordinates"][0][0] == coords[0].tolist()
    assert (tmp_path / f"ev/heatmaps/{CMU.stem}.png").stat().st_size > 1000


def test_predict_slide_refuses_another_extractor(model_dir):
    class Other:
        name, num_features = "resnet_like", 1280

        def dump_config(self):
            return {"class": "slideflow.model.extractors.Other", "kwargs": {}}

    with pytest.raises(MILError, match="resnet_like differs from the one the model"):
        sf.mil.predict_slide(model_dir, CMU, extractor=Other())
    Other.num_features = 512
    with pytest.raises(MILError, match="gives 512 features; the model .* takes 1280"):
        sf.mil.predict_slide(model_dir, CMU, extractor=Other())
