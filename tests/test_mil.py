"""sf.mil on synthetic bags with a planted signal: config, training, outputs, determinism,
evaluation and prediction (slides: test_mil_slide.py)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("pyarrow")

from mil_synth import make_bags  # noqa: E402

import slideflow as sf  # noqa: E402
from slideflow.mil import MILError, mil_config  # noqa: E402

FAST = {"attention_mil": (5e-3, {"hidden": 64, "attn_hidden": 32}),
        "clam_sb": (5e-3, {"hidden": 64, "attn_hidden": 32}),
        "transmil": (1e-3, {"hidden": 64, "heads": 4})}


@pytest.fixture(autouse=True)
def one_thread():
    """2 shared cores: one torch thread is faster than two fighting, and deterministic."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    folder = tmp_path_factory.mktemp("mil") / "bags"
    df, hot = make_bags(folder, n_bags=180, shift=4.0)
    return folder, df.iloc[:120].reset_index(drop=True), df.iloc[120:].reset_index(drop=True), hot


def _config(model: str, **kw):
    lr, mk = FAST[model]
    return mil_config(model, lr=lr, epochs=15, batch_size=16, bag_size=32, model_kwargs=mk, **kw)


# ---------------------------------------------------------------------------------- config
def test_config_frozen_validated_and_round_trips():
    c = mil_config("Attention_MIL", lr=1e-3, epochs=3, model_kwargs={"hidden": 8})
    assert c.model == "attention_mil" and c.lr == 1e-3 and c.epochs == 3
    with pytest.raises(AttributeError):
        c.lr = 1.0  # type: ignore[misc]
    with pytest.raises(TypeError, match="frozen"):
        c.model_kwargs["hidden"] = 9  # type: ignore[index]
    assert sf.mil.MILConfig.from_dict(json.loads(json.dumps(c.to_dict()))) == c
    with pytest.raises(TypeError, match="unknown options.*'learning_rate'"):
        mil_config("attention_mil", learning_rate=1e-3)
    with pytest.raises(ValueError, match="unknown model_kwargs"):
        mil_config("transmil", model_kwargs={"attn_hidden": 3})
    with pytest.raises(ValueError, match="unknown MIL model"):
        mil_config("resnet")
    with pytest.raises(ValueError, match="epochs"):
        mil_config("clam_sb", epochs=0)
    with pytest.raises(ValueError, match="aggregation_level"):
        mil_config("clam_sb", aggregation_level="site")
    with pytest.raises(ValueError, match="continuous"):
        mil_config("clam_mb", loss="mse")


def test_mil_is_lazy_public_api():
    import subprocess
    import sys

    code = ("import sys, slideflow as sf; c = sf.mil.mil_config('transmil'); "
            "assert 'torch' not in sys.modules, 'torch imported'; print(c.model)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "transmil"


# ---------------------------------------------------------------------------------- planted
@pytest.mark.parametrize("model", ["attention_mil", "transmil", "clam_sb"])
def test_planted_signal_auroc_and_attention(planted, tmp_path, model):
    bags, train, val, hot = planted
    start = time.perf_counter()
    res = sf.mil.train_mil(_config(model), train, val, "label", bags, outdir=tmp_path,
                           progress=False)
    seconds = time.perf_counter() - start
    assert res.metrics["per_class"]["pos"]["auroc"] >= 0.95, res.metrics
    assert seconds < 40, seconds
    # attention of the positive validation bags peaks on the planted tiles
    recalls = []
    for slide in val.slide[val.label == "pos"]:
        with np.load(tmp_path / "attention" / f"{slide}.npz") as z:
            att = z["attention"]
        k = len(hot[slide])
        recalls.append(len(set(np.argsort(-att)[:k]) & set(hot[slide])) / k)
    assert np.mean(recalls) >= MIN_RECALL[model], (model, np.mean(recalls))


MIN_RECALL = {"attention_mil": 0.75, "clam_sb": 0.75, "transmil": 0.5}


# ---------------------------------------------------------------------- outputs, determinism
@pytest.fixture(scope="module")
def small(tmp_path_factory):
    folder = tmp_path_factory.mktemp("mil_small") / "bags"
    df, hot = make_bags(folder, n_bags=24, dim=16, tiles=(10, 20), seed=3)
    return folder, df.iloc[:16].reset_index(drop=True), df.iloc[16:].reset_index(drop=True)


def _quick(model="attention_mil", **kw):
    return mil_config(model, lr=1e-3, epochs=2, batch_size=4, bag_size=8,
                      model_kwargs={"hidden": 16, **({"attn_hidden": 8} if model in
                                                     ("attention_mil", "clam_sb", "clam_mb")
                                                     else {})}, **kw)


def test_outputs_are_complete_and_deterministic(small, tmp_path):
    bags, train, val = small
    runs = [sf.mil.train_mil(_quick(), train, val, ["label"], bags, outdir=tmp_path / name,
                             progress=False) for name in ("a", "b")]
    a, b = (r.outdir for r in runs)
    for name in ("models/best_valid.pth", "predictions.parquet", "metrics.json",
                 "attention/slide_017.npz"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    other = sf.mil.train_mil(_quick(seed=1), train, val, "label", bags, outdir=tmp_path / "c",
                             progress=False)
    assert (other.outdir / "models/best_valid.pth").read_bytes() != \
        (a / "models/best_valid.pth").read_bytes()

    params = json.loads((a / "mil_params.json").read_text())
    bags_cfg = json.loads((bags / "bags_config.json").read_text())
    assert params["bags_extractor"] == bags_cfg
    assert params["class_names"] == ["neg", "pos"] and params["outcomes"] == ["label"]
    assert params["splits"] == {"train": sorted(train.slide), "val": sorted(val.slide)}
    assert params["config"]["seed"] == 0 and params["versions"]["torch"] == torch.__version__
    assert params["input_shape"] == 16 and params["output_shape"] == 2
    state = torch.load(a / "models/best_valid.pth", weights_only=True)
    assert set(state) == set(sf.mil.load_model(a)[0].state_dict())

    df = pd.read_parquet(a / "predictions.parquet")
    assert list(df.columns) == ["slide", "y_true", "y_pred0", "y_pred1"]
    assert list(df.slide) == sorted(val.slide)
    np.testing.assert_allclose(df[["y_pred0", "y_pred1"]].sum(axis=1), 1, rtol=1e-5)
    with np.load(a / "attention/slide_017.npz") as z:
        n = len(torch.load(bags / "slide_017.pt", weights_only=True))
        assert z["attention"].shape == (n,) and z["coords"].shape == (n, 2)
        assert z["attention"].sum() == pytest.approx(1, rel=1e-5)
    metrics = json.loads((a / "metrics.json").read_text())
    assert set(metrics["per_class"]) == {"neg", "pos"}
    assert np.array(metrics["confusion_matrix"]).sum() == len(val)
    assert {"auroc", "ap"} <= set(metrics["per_class"]["pos"]) and "balanced_accuracy" in metrics
    hist = pd.read_csv(a / "history.csv")
    assert list(hist.epoch) == [1, 2] and {"train_loss", "valid_loss", "valid_auroc"} <= \
        set(hist.columns)
    assert (a / "history.png").read_bytes()[:4] == b"\x89PNG"

    # eval_mil on the saved model reproduces training's validation predictions exactly
    ev = sf.mil.eval_mil(a, val, "label", bags, outdir=tmp_path / "eval")
    pd.testing.assert_frame_equal(ev, df)
    assert (tmp_path / "eval/predictions.parquet").read_bytes() == \
        (a / "predictions.parquet").read_bytes()
    pred, atts = sf.mil.predict_mil(a / "models/best_valid.pth", val, "label", bags,
                                    attention=True)
    pd.testing.assert_frame_equal(pred, df)
    with np.load(a / "attention/slide_016.npz") as z:
        np.testing.assert_array_equal(atts[0], z["attention"])

    with pytest.raises(sf.errors.OutputConflictError, match="already holds"):
        sf.mil.train_mil(_quick(), train, val, "label", bags, outdir=a, progress=False)


def test_refuses_bags_of_another_extractor(small, tmp_path):
    bags, train, val = small
    run = sf.mil.train_mil(_quick(), train, val, "label", bags, outdir=tmp_path / "m",
                           progress=False).outdir
    other = tmp_path / "other"
    make_bags(other, n_bags=24, dim=16, tiles=(10, 20), seed=3, extractor="another")
    with pytest.raises(MILError, match=r"another @ 224px/112\) differ from the model's "
                                       r".*synthetic @ 224px/112\) in extractor.class"):
        sf.mil.eval_mil(run, val, "label", other, outdir=tmp_path / "e")
    with pytest.raises(MILError, match="different settings"):
        sf.mil.train_mil(_quick(), train, val, "label", [bags / "slide_000.pt", other / "slide_001.pt",
                                                          bags / "slide_016.pt",
                                                          bags / "slide_017.pt"],
                         outdir=tmp_path / "x", progress=False)


def test_continuous_outcome(small, tmp_path):
    bags, train, val = small
    res = sf.mil.train_mil(_quick("mil_fc", loss="mse"), train, val, "score", bags,
                           outdir=tmp_path, progress=False)
    assert set(res.metrics) >= {"r2", "mae"} and res.metrics["type"] == "continuous"
    df = pd.read_parquet(tmp_path / "predictions.parquet")
    assert list(df.columns) == ["slide", "y_true", "y_pred0"]
    np.testing.assert_allclose(df.y_true, val.sort_values("slide").score, rtol=1e-6)
    assert json.loads((tmp_path / "mil_params.json").read_text())["outcome_type"] == "continuous"
    with pytest.raises(MILError, match="not numeric"):
        sf.mil.train_mil(_quick(loss="mse"), train, val, "label", bags, outdir=tmp_path / "x",
                         progress=False)


def test_patient_aggregation_joins_slides(tmp_path):
    bags = tmp_path / "bags"
    df, _ = make_bags(bags, n_bags=24, dim=16, tiles=(10, 20), patients_per=2)
    train, val = df.iloc[:16], df.iloc[16:]
    res = sf.mil.train_mil(_quick(aggregation_level="patient"), train, val, "label", bags,
                           outdir=tmp_path / "m", progress=False)
    assert list(res.predictions.patient) == ["pt_008", "pt_009", "pt_010", "pt_011"]
    for slide in val.slide:  # one attention file per slide, cut out of the patient's bag
        with np.load(tmp_path / "m/attention" / f"{slide}.npz") as z:
            assert len(z["attention"]) == len(z["coords"])
    bad = df.copy()
    bad.loc[0, "label"] = "pos"  # slide_000 and slide_001 (pt_000) now disagree
    with pytest.raises(MILError, match="pt_000.*different 'label'"):
        sf.mil.train_mil(_quick(aggregation_level="patient"), bad.iloc[:16], val, "label",
                         bags, outdir=tmp_path / "x", progress=False)


@pytest.mark.parametrize("model", ["clam_mb", "mil_fc", "transmil"])
def test_multiclass_models_train(tmp_path, model):
    bags = tmp_path / "bags"
    df, _ = make_bags(bags, n_bags=18, dim=16, tiles=(10, 20))
    df["grade"] = [("a", "b", "c")[i % 3] for i in range(len(df))]
    cfg = _quick(model) if model != "transmil" else mil_config(
        model, epochs=1, batch_size=4, bag_size=8, model_kwargs={"hidden": 16, "heads": 2})
    res = sf.mil.train_mil(cfg, df.iloc[:12], df.iloc[12:], "grade", bags, outdir=tmp_path / "m",
                           progress=False)
    assert res.metrics["class_names"] == ["a", "b", "c"]
    assert res.predictions.shape == (6, 5)


def test_clam_instance_loss_is_used():
    from slideflow.mil.models import build_model

    torch.manual_seed(0)
    for name in ("clam_sb", "clam_mb"):
        net = build_model(name, 8, 3, hidden=16, attn_hidden=8, k_sample=2)
        x, mask = torch.randn(2, 10, 8), torch.ones(2, 10, dtype=torch.bool)
        mask[1, 6:] = False
        logits, extra = net.loss_terms(x, mask, torch.tensor([0, 2]))
        assert logits.shape == (2, 3) and extra is not None and extra.item() > 0
        extra.backward()
        assert net.instance_classifiers[2].weight.grad.abs().sum() > 0
        att = net.attention(x, mask)
        assert torch.all(att[1, 6:] == 0) and torch.allclose(att.sum(1), torch.ones(2))


# ---------------------------------------------------------------------------------- splits
def _split_dataset(tmp_path: Path, n_patients: int = 12):
    folder = tmp_path / "slides"
    folder.mkdir()
    rows = []
    for p in range(n_patients):
        for s in range(1 + p % 3):
            name = f"p{p:02d}_s{s}"
            (folder / f"{name}.svs").write_bytes(b"")
            rows.append({"slide": name, "patient": f"p{p:02d}", "label": "ab"[p % 2],
                         "site": f"site{p % 4}"})
    return sf.Dataset({"src": {"slides": str(folder)}}, annotations=pd.DataFrame(rows)), rows


def test_kfold_split_keeps_patients_together(tmp_path):
    ds, rows = _split_dataset(tmp_path)
    patient = {r["slide"]: r["patient"] for r in rows}
    splits = ds.kfold_split(3, labels="label")
    assert len(splits) == 3
    vals = [set(v.slides()) for _, v in splits]
    assert set().union(*vals) == set(ds.slides()) and sum(map(len, vals)) == len(ds.slides())
    for train, val in splits:
        assert not {patient[s] for s in train.slides()} & {patient[s] for s in val.slides()}
        assert {r["label"] for r in rows if r["slide"] in val.slides()} == {"a", "b"}
    assert [v.slides() for _, v in ds.kfold_split(3, labels="label")] == \
        [v.slides() for _, v in splits]
    site = {r["slide"]: r["site"] for r in rows}
    for train, val in ds.kfold_split(2, preserved_site=True):
        assert not {site[s] for s in train.slides()} & {site[s] for s in val.slides()}
    with pytest.raises(sf.errors.DatasetError, match="k must be"):
        ds.kfold_split(1)


def test_feather_fine_tunes_from_its_slide_encoder_weights(tmp_path):
    from slideflow.mil.models import build_model
    from slideflow.model.slide_encoders.families.mil import FeatherABMIL

    torch.manual_seed(5)
    ckpt = tmp_path / "feather.pth"
    torch.save(FeatherABMIL(768).state_dict(), ckpt)
    start = torch.load(ckpt, weights_only=True)
    net = build_model("feather", 768, 2, weights=str(ckpt))
    for key, value in start.items():
        assert torch.equal(net.encoder_abmil.state_dict()[key], value), key
    with pytest.raises(MILError, match="768 features per tile"):
        build_model("feather", 32, 2, weights=str(ckpt))

    bags = tmp_path / "bags"
    df, _ = make_bags(bags, n_bags=12, dim=768, tiles=(6, 10))
    cfg = mil_config("feather", lr=1e-4, epochs=1, batch_size=4, bag_size=8,
                     model_kwargs={"weights": str(ckpt)})
    res = sf.mil.train_mil(cfg, df.iloc[:8], df.iloc[8:], "label", bags, outdir=tmp_path / "m",
                           progress=False)
    tuned = torch.load(res.outdir / "models/best_valid.pth", weights_only=True)
    moved = tuned["encoder_abmil.model.patch_embed.0.weight"] - start["model.patch_embed.0.weight"]
    assert 0 < moved.abs().max() < 0.01  # fine-tuned: started from the checkpoint, then moved
    ev = sf.mil.eval_mil(res.outdir, df.iloc[8:], "label", bags, outdir=tmp_path / "e")
    pd.testing.assert_frame_equal(ev, res.predictions)


# ---------------------------------------------------------------------------------- CLI
def test_cli_mil_train_manifest(small, tmp_path):
    from typer.testing import CliRunner

    from slideflow.cli import app

    bags, train, val = small
    manifest = tmp_path / "manifest.csv"
    pd.concat([train, val]).to_csv(manifest, index=False)
    args = ["mil", "train", str(manifest), "--bags", str(bags), "--outcome", "label",
            "-o", str(tmp_path / "out"), "-k", "2", "--epochs", "1", "--bag-size", "8", "-q"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    assert res.output.count("AUROC") == 2
    vals = [set(json.loads((tmp_path / f"out/fold{i}/mil_params.json").read_text())
                ["splits"]["val"]) for i in (0, 1)]
    assert not vals[0] & vals[1] and len(vals[0] | vals[1]) == 24
    again = CliRunner().invoke(app, args)  # a finished run is never overwritten
    assert again.exit_code == 2 and "error:" in again.output and "already holds" in again.output
    typo = CliRunner().invoke(app, [*args[:6], "lable", *args[7:]])
    assert typo.exit_code == 2 and "no column 'lable'" in typo.output


@pytest.mark.parametrize("pool", ["mean", "max"])
def test_mil_fc_pooling_and_attention(pool):
    from slideflow.mil.models import build_model

    torch.manual_seed(0)
    net = build_model("mil_fc", 4, 2, hidden=6, pool=pool).eval()
    x, mask = torch.randn(2, 5, 4), torch.ones(2, 5, dtype=torch.bool)
    mask[0, 3:] = False
    h = net.encoder(x)
    pooled = h[0, :3].mean(0) if pool == "mean" else h[0, :3].max(0).values
    torch.testing.assert_close(net(x, mask)[0], net.head(pooled))
    att = net.attention(x, mask)
    assert torch.all(att[0, 3:] == 0) and torch.allclose(att.sum(1), torch.ones(2))


def test_missing_pyarrow_is_named_before_training(small, tmp_path, monkeypatch):
    import sys

    bags, train, val = small
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # import pyarrow -> ImportError
    with pytest.raises(MILError, match=r"pyarrow: pip install 'slideflow\[mil\]'"):
        sf.mil.train_mil(_quick(), train, val, "label", bags, outdir=tmp_path, progress=False)
    assert not tmp_path.joinpath("models").exists()


def test_transmil_rollout_matches_full_attention_matrices():
    """The row-at-a-time rollout equals the product of the full heads-averaged matrices."""
    from slideflow.mil.models import build_model

    torch.manual_seed(0)
    net = build_model("transmil", 8, 2, hidden=16, heads=4).eval()
    x, mask = torch.randn(2, 11, 8), torch.ones(2, 11, dtype=torch.bool)
    mask[1, 7:] = False
    with torch.no_grad():
        _, inputs, pad = net._run(x, mask, keep_inputs=True)
        eye = torch.eye(12)
        roll = eye.expand(2, 12, 12)
        for layer, y in zip(net.layers, inputs):
            w = layer.attn(y, y, y, key_padding_mask=pad, need_weights=True)[1]
            roll = (0.5 * w + 0.5 * eye) @ roll
        want = roll[:, 0, 1:] * mask
        want = want / want.sum(-1, keepdim=True)
        got = net.attention(x, mask)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
        from slideflow.mil import models

        r = torch.rand(2, 12) * pad.logical_not()
        blocks = models._row_times_attention(net.layers[0].attn, inputs[0], pad, r, budget=5)
        whole = models._row_times_attention(net.layers[0].attn, inputs[0], pad, r)
    torch.testing.assert_close(blocks, whole)
    assert torch.all(got[1, 7:] == 0)


def test_patient_in_both_splits_is_warned(tmp_path, caplog):
    bags = tmp_path / "bags"
    df, _ = make_bags(bags, n_bags=12, dim=8, tiles=(6, 8), patients_per=2)
    with caplog.at_level("WARNING", logger="slideflow"):
        sf.mil.train_mil(_quick(), df.iloc[:7], df.iloc[7:], "label", bags,
                         outdir=tmp_path / "m", progress=False)
    assert "1 patient(s) have slides in both train and validation (pt_003)" in caplog.text


def test_missing_model_folder_is_named(tmp_path):
    from slideflow.mil.outputs import read_params

    with pytest.raises(MILError, match=r"nope: no such folder"):
        read_params(tmp_path / "nope")  # was reported as <tmp_path>/mil_params.json
    with pytest.raises(MILError, match=r"mil_params\.json: not found"):
        read_params(tmp_path)
