"""The MEGC2019 composite protocol and the shipped sample lists."""

from __future__ import annotations

import warnings

import pytest
from data_fixtures import make_casme2, make_casme3, make_samm, make_smic

from mer.data import DatasetError, DatasetWarning, casme3_part_a, megc2019_composite, read_sample_list, shipped_list
from mer.data.sample_lists import LISTS_DIR


@pytest.fixture
def roots(tmp_path):
    c2 = make_casme2(
        tmp_path / "c2",
        [
            (1, "EP02_01f", 46, 48, 50, "happiness"),
            (1, "EP19_05f", 1, 2, 3, "disgust"),  # not in the list
            (4, "EP12_01f", 5, "/", 9, "others"),
        ],  # broken, not listed
        skip_frames={(4, "EP12_01f", 6)},
    )
    sm = make_samm(tmp_path / "samm", [(6, "006_1_2", 100, 101, 103, "Anger"), (32, "032_3_1", 1, 2, 3, "Fear")])
    sc = make_smic(tmp_path / "smic", [(1, "negative", 1, 10, 4), (20, "surprise", 2, 50, 5)])
    return {"casme2": c2, "samm": sm, "smic": sc}


def _write(path, text):
    path.write_text(text)
    return path


def test_composite_from_list_in_list_order(roots, tmp_path):
    lst = _write(
        tmp_path / "list.csv",
        "dataset,subject,clip,label\ncasme2,sub01,EP02_01f,1\n"
        "smic,s20,s20_sur_02,2\nsmic,s01,s01_ne_01,0\nsamm,006,006_1_2,0\nsamm,032,032_3_1,0\n",
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error", DatasetWarning)  # the broken unlisted clip must not even warn
        samples = megc2019_composite(**roots, sample_list=lst)
    assert [s.uid for s in samples] == [
        "casme2/sub01/EP02_01f",
        "smic/s20/s20_sur_02",
        "smic/s01/s01_ne_01",
        "samm/006/006_1_2",
        "samm/032/032_3_1",
    ]
    assert [s.label for s in samples] == [1, 2, 0, 0, 0]
    assert samples[1].apex_is_estimated and samples[1].apex == 52


def test_composite_headerless_441_spelling(roots, tmp_path):
    lst = _write(tmp_path / "gt.csv", "casme2,sub01,EP02_01f,1\nsamm,6,006_1_2,0\nsmic,s1,s1_ne_01,0\n")
    samples = megc2019_composite(**roots, sample_list=lst)
    assert [(s.subject, s.clip) for s in samples] == [("sub01", "EP02_01f"), ("006", "006_1_2"), ("s01", "s01_ne_01")]


def test_composite_reports_every_missing_entry_across_datasets(roots, tmp_path):
    lst = _write(
        tmp_path / "list.csv",
        "dataset,subject,clip,label\ncasme2,sub01,EP02_01f,1\n"
        "casme2,sub09,EP01_01,0\nsamm,011,011_1_1,0\nsmic,s01,s01_ne_01,0\n"
        "casme2,sub04,EP12_01f,0\n",
    )
    with pytest.raises(DatasetError) as ei:
        megc2019_composite(**roots, sample_list=lst)
    msg = str(ei.value)
    assert "casme2 sub09/EP01_01" in msg and "samm 011/011_1_1" in msg and "not found in the data" in msg
    assert "casme2 sub04/EP12_01f" in msg and "frame(s) missing" in msg  # listed now, so its fault counts
    with pytest.warns(DatasetWarning, match="Excluded"):
        ok = megc2019_composite(**roots, sample_list=lst, on_error="warn")
    assert [s.clip for s in ok] == ["EP02_01f", "s01_ne_01"]


def test_composite_needs_every_root(roots):
    with pytest.raises(TypeError, match="unexpected keyword"):
        megc2019_composite(**roots, frame="raw")
    with pytest.raises(DatasetError, match=r"no root was given for smic"):
        megc2019_composite(casme2=roots["casme2"], samm=roots["samm"])


def test_shipped_lists():
    a = shipped_list("megc2019_composite")
    b = shipped_list("megc2019_official_gt_441")
    assert len(a) == 442 and len(b) == 441
    count = lambda lst, d: sum(e.dataset == d for e in lst)  # noqa: E731
    assert (count(a, "casme2"), count(a, "samm"), count(a, "smic")) == (145, 133, 164)
    assert len({(e.dataset, e.subject) for e in a}) == 68
    diff = {(e.dataset, e.subject, e.clip, e.label) for e in a} - {(e.dataset, e.subject, e.clip, e.label) for e in b}
    assert diff == {("samm", "032", "032_3_1", 0)}


def test_sample_list_errors(tmp_path):
    lst = _write(tmp_path / "bad.csv", "casme2,sub01,EP02_01f,1\ncasme2,1,EP02_01f,1\nsmic,s1,x,7\nfoo,1,a,0\n")
    with pytest.raises(DatasetError) as ei:
        read_sample_list(lst)
    msg = str(ei.value)
    assert "3 bad row(s)" in msg and "duplicate" in msg and "label '7'" in msg and "unknown dataset 'foo'" in msg


def test_casme3_three_class_list(tmp_path):
    root = make_casme3(
        tmp_path / "c3",
        [(1, "j", 28, 33, 49, "happy"), (1, "j", 102, 105, 113, "surprise"), (1, "b", 166, 175, 179, "disgust")],
    )
    lst = _write(
        tmp_path / "c3.csv",
        "subject,clip,onset,apex,offset,au,objective_class,emotion,label\n"
        "spNO.1,j,28,33,49,12,I,happy,1\nspNO.1,j,102,105,113,26+25,II,surprise,2\n",
    )
    samples = casme3_part_a(root, sample_list=lst)
    assert [(s.clip, s.label, s.apex) for s in samples] == [("j_28", 1, 33), ("j_102", 2, 105)]
    with pytest.raises(DatasetError, match=r"clip folder not found") as ei:
        casme3_part_a(root)  # the shipped 687-row list: nearly all absent from this tiny tree
    assert len(ei.value.problems) > 600 and "... and" in str(ei.value)


def test_full_shipped_list_on_a_mock_tree(tmp_path):
    """All 442 entries of the shipped list resolve against native-layout folders (spellings included)."""
    entries = shipped_list("megc2019_composite")
    neg = {"casme2": "repression", "samm": "Anger"}
    pos = {"casme2": "happiness", "samm": "Happiness"}
    sur = {"casme2": "surprise", "samm": "Surprise"}
    word = lambda d, lab: [neg, pos, sur][lab][d]  # noqa: E731
    c2, sm, sc = [], [], []
    for e in entries:
        if e.dataset == "casme2":
            c2.append((int(e.subject[3:]), e.clip, 1, 2, 3, word("casme2", e.label)))
        elif e.dataset == "samm":
            sm.append((int(e.subject), e.clip, 1, 2, 3, word("samm", e.label)))
        else:
            subj, code, idx = e.clip.split("_")
            folder = {"ne": "negative", "po": "positive", "sur": "surprise"}[code]
            sc.append((int(subj[1:]), folder, int(idx), 1, 3))
    roots = {
        "casme2": make_casme2(tmp_path / "c2", c2),
        "samm": make_samm(tmp_path / "sm", sm),
        "smic": make_smic(tmp_path / "sc", sc),
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DatasetWarning)
        samples = megc2019_composite(**roots)
    assert [(s.dataset, s.subject, s.clip, s.label) for s in samples] == [
        (e.dataset, e.subject, e.clip, e.label) for e in entries
    ]
    samples441 = megc2019_composite(**roots, sample_list=LISTS_DIR / "megc2019_official_gt_441.csv")
    assert len(samples441) == 441 and "samm/032/032_3_1" not in {s.uid for s in samples441}
