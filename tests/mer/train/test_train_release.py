"""`mer train --data htnet-release:PATH`: the HTNet release's images, tiles and folds as a data source, on a
small folder in the release's layout (and on the real copy when MER_HTNET_RELEASE points at it)."""

import csv
import json
import os
from pathlib import Path

import cv2
import numpy as np
import pytest

import mer.train.data as train_data
from mer.train import TrainConfig, run_training
from mer.train.data import load_inputs
from mer.train.folds import build_folds

SUBJECTS = {"casme2": ("sub01", "sub02"), "samm": ("006", "007"), "smic": ("s1", "s2")}


@pytest.fixture(scope="module")
def release_dir(tmp_path_factory) -> Path:
    """18 samples (3 datasets x 2 subjects x 3 clips, labels 0/1/2) in the release's layout."""
    root = tmp_path_factory.mktemp("htnet_release")
    (root / "STSNet_whole_norm_u_v_os").mkdir()
    (root / "combined_datasets_whole").mkdir()
    rng = np.random.default_rng(0)
    rows, folds = [], []
    for ds, subs in SUBJECTS.items():
        for sub in subs:
            for k in range(3):
                clip = f"{sub}_c{k}"
                flow_name = f"{sub}_{clip} .png"
                face_name = f"{sub}_{clip}.jpg"
                cv2.imwrite(
                    str(root / "STSNet_whole_norm_u_v_os" / flow_name),
                    rng.integers(0, 256, (28, 28, 3), dtype=np.uint8),
                )
                cv2.imwrite(
                    str(root / "combined_datasets_whole" / face_name),
                    rng.integers(0, 256, (224, 224, 3), dtype=np.uint8),
                )
                rows.append([ds, sub, clip, k, "", face_name, ""])
                folds.append(f"{sub}/u_test/{k}/{flow_name}")
    with open(root / "combined_3_class2_for_optical_flow.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["dataset", "sub", "filename_o", "label", "apex", "imagename", "sub_filename"])
        w.writerows(rows)
    (root / "loso_test_lists.txt").write_text("\n".join(folds) + "\n")
    return root


@pytest.fixture
def subset_loader(monkeypatch):
    """The loader without the composite's count checks (the fixture has 18 of its 442 samples)."""
    from mer.data import load_htnet_release

    def read(root):
        return load_htnet_release(root, check_counts=False, landmarks="fallback")

    monkeypatch.setattr(train_data, "_read_release", read)


def cfg_for(release_dir, tmp_path, **kw) -> TrainConfig:
    base = dict(
        data=f"htnet-release:{release_dir}",
        model="htnet_tiny",
        model_kwargs={"image_size": 28},
        epochs=2,
        batch_size=8,
        out=str(tmp_path / "run"),
        progress=False,
    )
    return TrainConfig(**{**base, **kw})


def test_inputs_are_the_release_images_and_its_folds(release_dir, tmp_path, subset_loader):
    tiles = load_inputs(cfg_for(release_dir, tmp_path, input="regions"))
    flow = load_inputs(cfg_for(release_dir, tmp_path, input="face"))
    img = cv2.imread(str(release_dir / "STSNet_whole_norm_u_v_os" / "sub01_sub01_c0 .png"))
    np.testing.assert_array_equal(flow.x[0], img.transpose(2, 0, 1).astype(np.float32))  # raw 0-255, BGR
    assert tiles.x.shape == flow.x.shape == (18, 3, 28, 28) and tiles.x.max() <= 255
    assert not np.array_equal(tiles.x, flow.x)
    assert [s.uid for s in flow.samples[:2]] == ["casme2/sub01/sub01_c0", "casme2/sub01/sub01_c1"]
    assert flow.y.tolist() == [0, 1, 2] * 6
    folds = build_folds(flow.samples, "loso", loso_folds=flow.loso_folds)
    assert [f.name for f in folds] == [f"{d}/{s}" for d, subs in SUBJECTS.items() for s in subs]
    assert all(len(f.test) == 3 and len(f.train) == 15 for f in folds)


def test_a_bad_release_path_is_a_clear_error(tmp_path, capsys):
    from mer.cli import main

    rc = main(["train", "--data", f"htnet-release:{tmp_path / 'nowhere'}", "--out", str(tmp_path / "run")])
    assert rc == 2 and "not a folder" in capsys.readouterr().err and not (tmp_path / "run").exists()


@pytest.mark.slow
def test_loso_and_holdout_dataset_runs(release_dir, tmp_path, subset_loader, one_thread):
    m = run_training(cfg_for(release_dir, tmp_path, normalize="none", out=str(tmp_path / "loso")))
    assert m["n"] == 18 and m["folds"] == 6 and m["flow"] == "htnet-release (precomputed)"
    saved = json.loads((tmp_path / "loso" / "config.json").read_text())
    assert saved["data"] == f"htnet-release:{release_dir.resolve()}"
    h = run_training(cfg_for(release_dir, tmp_path, protocol="holdout-dataset", out=str(tmp_path / "holdout")))
    folds = json.loads((tmp_path / "holdout" / "folds.json").read_text())
    assert [f["name"] for f in folds] == ["samm+smic->casme2", "casme2+smic->samm", "casme2+samm->smic"]
    assert h["n"] == 18 and set(h["scores"]) == {"all", "casme2", "samm", "smic"}

    from mer.esaat import ESAATConfig, FinetuneConfig, prune_run  # ESAAT works on a release run too

    summary = prune_run(
        tmp_path / "loso",
        ESAATConfig(remove=1, calib_size=8, finetune=FinetuneConfig(epochs=1, fade_epochs=0, batch_size=8)),
        progress=False,
    )
    assert summary["folds"] == 6 and all(len(f["removed"]) == 1 for f in summary["per_fold"])

    from mer.train.predict import PredictError, load_checkpoint, predict_pair

    model = load_checkpoint(next((tmp_path / "loso" / "folds").glob("*/model.pt")))
    with pytest.raises(PredictError, match="precomputed flow images"):
        predict_pair([model], "a.png", "b.png")


@pytest.mark.skipif(
    not os.environ.get("MER_HTNET_RELEASE"),
    reason="set MER_HTNET_RELEASE to the HTNet release "
    "folder (e.g. ../shared/data/htnet_release) to test on the real composite",
)
def test_the_real_release():
    cfg = TrainConfig(data="htnet-release:" + os.environ["MER_HTNET_RELEASE"], out="unused")
    inputs = load_inputs(cfg)
    assert inputs.x.shape == (442, 3, 28, 28) and np.bincount(inputs.y).tolist() == [250, 109, 83]
    assert 0 <= inputs.x.min() and inputs.x.max() <= 255
    folds = build_folds(inputs.samples, "loso", loso_folds=inputs.loso_folds)  # checked against our LOSO
    assert len(folds) == 68
    assert len(build_folds(inputs.samples, "holdout-dataset")) == 3


@pytest.mark.slow
def test_the_gpu_script_at_a_tiny_size_on_the_cpu(
    release_dir, tmp_path, subset_loader, one_thread, capsys, load_script
):
    """scripts/gpu_release_loso.py's exact `mer train` command, with a tiny model, 2 epochs, on the CPU."""
    script = load_script("gpu_release_loso")
    out = tmp_path / "gpu"
    argv = ["--release", str(release_dir), "--out", str(out), "--device", "cpu", "--model", "htnet_tiny"]
    argv += ["--model-arg", "image_size=28", "--epochs", "2", "--fold-batch", "3", "--matmul-precision", "highest"]
    assert script.main(argv) == 0
    cfg = json.loads((out / "config.json").read_text())
    assert (cfg["preset"], cfg["selection"], cfg["lr"], cfg["batch_size"], cfg["shuffle"], cfg["normalize"]) == (
        "release",
        "oracle-release",
        5e-5,
        256,
        False,
        "none",
    )
    m = json.loads((out / "metrics.json").read_text())
    assert m["n"] == 18 and m["oracle"] and m["last_epoch"]["valid_estimate"]
    assert not list(out.glob("folds/*/model.pt")) and not list(out.glob("folds/*/last.pt"))
    assert {json.loads(p.read_text())["fold_batch"] for p in out.glob("folds/*/result.json")} == {3}
    assert json.loads((out / "gpu_run.json").read_text())["rc"] == 0
    # rerun: the finished folds (without model.pt) are kept, not trained again
    before = {p: p.stat().st_mtime_ns for p in out.glob("folds/*/result.json")}
    assert script.main(argv) == 0
    assert {p: p.stat().st_mtime_ns for p in out.glob("folds/*/result.json")} == before
    # a run stopped after some folds (a GPU lease ran out): `mer evaluate --partial` scores the finished
    # folds with both selections, over the same held-out samples
    from mer.evaluation.report import write_report

    gone = sorted(out.glob("folds/*/result.json"))[:2]
    n_gone = sum(len(p.with_name("predictions.csv").read_text().splitlines()) - 1 for p in gone)
    for p in gone:
        p.unlink()
    m = write_report(out, partial=True, print_table=False, plots=False)
    assert 0 < n_gone and m["n"] == 18 - n_gone and m["last_epoch"]["n"] == m["n"]
    assert "The same training, selection: fixed budget" in (out / "summary.md").read_text()
