"""Slideflow 3's documented MIL calls (docs "Multiple-Instance Learning" and tutorial 8) run
unchanged with our names, on a project whose bags are synthetic."""

from __future__ import annotations

import json

import pandas as pd
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("pyarrow")

from mil_synth import make_bags  # noqa: E402

import slideflow as sf  # noqa: E402
from slideflow.mil import mil_config  # noqa: E402


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture()
def project(tmp_path):
    slides = tmp_path / "slides"
    slides.mkdir()
    bags = tmp_path / "bags"
    df, _ = make_bags(bags, n_bags=18, dim=16, tiles=(10, 20))
    for name in df.slide:
        (slides / f"{name}.svs").write_bytes(b"")  # a slide file for the dataset to find
    P = sf.create_project(tmp_path / "proj", slides=slides)
    df.rename(columns={"label": "tumor_type"}).to_csv(P.annotations, index=False)
    return P, str(bags)


def test_documented_mil_calls(project, tmp_path):
    P, bags = project
    dataset = P.dataset(tile_px=224, tile_um=112)
    config = mil_config("attention_mil", lr=1e-3)
    assert config.epochs == 32 and config.bag_size == 512  # the trainer defaults

    # docs: k-fold cross-validation with P.train_mil
    splits = dataset.kfold_split(k=3, labels="tumor_type")
    for train, val in splits:
        P.train_mil(config=config, outcomes="tumor_type", train_dataset=train,
                    val_dataset=val, bags=bags)
    runs = sorted((P.root / "mil").iterdir())
    assert [r.name for r in runs] == ["00000-attention_mil", "00001-attention_mil",
                                      "00002-attention_mil"]
    assert all((r / "mil_params.json").exists() for r in runs)

    # docs: the same through sf.mil.train_mil with an outdir
    train, val = splits[0]
    sf.mil.train_mil(config, train_dataset=train, val_dataset=val, outcomes="tumor_type",
                     bags=bags, outdir=str(tmp_path / "outdir"))
    params = json.loads((tmp_path / "outdir/mil_params.json").read_text())
    assert params["splits"]["val"] == val.slides()

    # docs: evaluation and prediction
    P.evaluate_mil(model=str(runs[0]), outcomes="tumor_type", dataset=val, bags=bags)
    assert (P.root / "mil_eval/00000-00000-attention_mil/predictions.parquet").exists()
    df = sf.mil.eval_mil(weights=str(runs[0]), outcomes="tumor_type", dataset=val, bags=bags,
                         outdir=str(tmp_path / "eval"))
    assert list(df.slide) == val.slides()
    pred = sf.mil.predict_mil(model=str(runs[0]), dataset=val, outcomes="tumor_type",
                              bags=bags)
    pd.testing.assert_frame_equal(pred, df)
    assert list(pred.columns) == ["slide", "y_true", "y_pred0", "y_pred1"]


def test_cli_mil_train_on_a_project(project, tmp_path):
    from typer.testing import CliRunner

    from slideflow.cli import app

    P, bags = project
    res = CliRunner().invoke(app, ["mil", "train", str(P.root), "--bags", bags, "--outcome",
                                   "tumor_type", "--model", "mil_fc", "-k", "2", "--epochs", "1",
                                   "-o", str(tmp_path / "runs"), "-q"])
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["fold0", "fold1"]
    params = json.loads((tmp_path / "runs/fold1/mil_params.json").read_text())
    assert params["model"] == "mil_fc" and len(params["splits"]["val"]) == 9
