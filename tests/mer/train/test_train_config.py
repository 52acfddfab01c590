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


@pytest.mark.parametrize("kw, msg", [
    (dict(select="best"), "select must be"),
    (dict(input="eyes"), "input must be"),
    (dict(protocol="loo"), "protocol must be"),
    (dict(protocol="kfold:1"), "K >= 2"),
    (dict(data="a", casme2="b"), "one data source"),
    (dict(dataset="casme3"), "needs --root"),
    (dict(augment_ratio="lots"), "augment_ratio"),
    (dict(reproduce_htnet_oracle=True, select="val"), "reproduce_htnet_oracle"),
])
def test_invalid_configs_say_what_is_wrong(kw, msg):
    with pytest.raises(ValueError, match=msg):
        TrainConfig(**kw)


def test_protocols():
    assert parse_protocol("loso").kind == "loso"
    assert parse_protocol("kfold:5").k == 5
    p = parse_protocol("cross:train=casme2,samm;test=smic")
    assert (p.train, p.test) == (("casme2", "samm"), ("smic",))


def test_oracle_is_labelled():
    assert TrainConfig(reproduce_htnet_oracle=True).selection_label.startswith("ORACLE")
    assert "ORACLE" not in TrainConfig().selection_label


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
