"""TrainConfig validation and round trip, protocol parsing, the run directory's config check."""

import json

import numpy as np
import pytest

from mer.preprocess import PrepConfig
from mer.train import ConfigMismatch, TrainConfig
from mer.train.folds import parse_protocol, shard, validation_split
from mer.train.rundir import RunDir


def test_round_trip_and_runtime_fields_ignored():
    cfg = TrainConfig(data="x", prep=PrepConfig(flow="dis", size=16), model_kwargs={"dropout": 0.1}, epochs=3)
    back = TrainConfig.from_dict(json.loads(cfg.to_json()))
    assert back == cfg
    assert cfg.diff(cfg.replace(workers=4, out="elsewhere", progress=False, cache_dir="c")) == []
    assert cfg.diff(cfg.replace(lr=0.5)) == ["lr: 0.001 -> 0.5"]


@pytest.mark.parametrize(
    "kw, msg",
    [
        (dict(selection="best"), "selection must be"),
        (dict(preset="fast"), "preset must be"),
        (dict(fold_batch=0), "fold_batch"),
        (dict(input="eyes"), "input must be"),
        (dict(protocol="loo"), "protocol must be"),
        (dict(protocol="kfold:1"), "K >= 2"),
        (dict(data="a", casme2="b"), "one data source"),
        (dict(dataset="casme3"), "needs --root"),
        (dict(augment_ratio="lots"), "augment_ratio"),
    ],
)
def test_invalid_configs_say_what_is_wrong(kw, msg):
    with pytest.raises(ValueError, match=msg):
        TrainConfig(**kw)


def test_protocols():
    assert parse_protocol("loso").kind == "loso"
    assert parse_protocol("kfold:5").k == 5
    assert parse_protocol("holdout-dataset").kind == "holdout"
    p = parse_protocol("cross:train=casme2,samm;test=smic")
    assert (p.train, p.test) == (("casme2", "samm"), ("smic",))


def test_oracle_is_labelled():
    oracle = TrainConfig(selection="oracle-release")
    assert oracle.selection_label == "oracle (test-fold selection, not a valid estimate)"
    assert not oracle.valid_estimate and TrainConfig().valid_estimate
    assert "oracle" not in TrainConfig().selection_label
    assert "oracle" not in TrainConfig(selection="val").selection_label


def test_presets_are_overridden_by_given_options():
    rel = TrainConfig.from_preset("release")
    assert (rel.model, rel.lr, rel.batch_size, rel.epochs, rel.class_weights, rel.shuffle, rel.normalize) == (
        "htnet_original",
        5e-5,
        256,
        800,
        "none",
        False,
        "none",
    )
    assert rel.preset == "release" and rel.selection == "fixed"
    mine = TrainConfig.from_preset("release", epochs=5, selection="oracle-release")
    assert (mine.epochs, mine.lr, mine.selection) == (5, 5e-5, "oracle-release")
    paper = TrainConfig.from_preset("paper")
    assert paper.augment == "ddpm" and "lape" in paper.model_kwargs["pos"][0]
    assert TrainConfig.from_preset() == TrainConfig()
    assert (
        rel.diff(
            TrainConfig.from_preset(
                "none",
                **{
                    k: getattr(rel, k)
                    for k in ("model", "lr", "batch_size", "epochs", "class_weights", "shuffle", "normalize")
                },
            )
        )
        == []
    )  # the name is provenance


def test_old_run_configs_still_load():
    old = TrainConfig(data="x").to_dict()
    old.pop("selection")
    old.update(select="fixed", reproduce_htnet_oracle=True)
    assert TrainConfig.from_dict(old).selection == "oracle-release"
    old.update(select="val", reproduce_htnet_oracle=False)
    assert TrainConfig.from_dict(old).selection == "val"


def test_validation_split_uses_training_subjects_only():
    subjects = [("a", str(i // 3)) for i in range(30)]  # 10 subjects x 3 samples
    test = np.arange(0, 3)
    train = np.arange(3, 30)
    fit, val = validation_split(train, subjects, 0.2, seed=1)
    assert set(fit) | set(val) == set(train) and not set(fit) & set(val)
    assert not set(val) & set(test)
    assert {subjects[i] for i in fit}.isdisjoint({subjects[i] for i in val})  # whole subjects
    assert len({subjects[i] for i in val}) == 2
    again = validation_split(train, subjects, 0.2, seed=1)
    assert np.array_equal(again[1], val)


def test_shard_covers_each_fold_once():
    parts = [shard(11, r, 3) for r in range(3)]
    assert sorted(sum(parts, [])) == list(range(11))


def test_rundir_refuses_another_config(tmp_path):
    rd = RunDir(tmp_path / "run")
    cfg = TrainConfig(data="x", out=str(tmp_path / "run"))
    assert rd.init(cfg) == "new"
    assert rd.init(cfg.replace(workers=2)) == "resume"
    assert rd.init(cfg.replace(epochs=4)) == "new"  # nothing trained yet: the new config is taken
    (rd.root / "folds" / "000-x").mkdir(parents=True)
    (rd.root / "folds" / "000-x" / "last.pt").write_bytes(b"")  # a fold trained under epochs=4
    with pytest.raises(ConfigMismatch, match="epochs: 4 -> 5"):
        rd.init(cfg.replace(epochs=5))
    assert rd.init(cfg.replace(epochs=5), force=True) == "forced"
    assert not (rd.root / "folds").exists()
    assert rd.read_config().epochs == 5


def test_rundir_refuses_a_foreign_folder(tmp_path):
    (tmp_path / "stuff.txt").write_text("mine")
    with pytest.raises(ConfigMismatch, match="not a run directory"):
        RunDir(tmp_path).init(TrainConfig(data="x"))
    assert (tmp_path / "stuff.txt").exists()
