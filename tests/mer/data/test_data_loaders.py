"""Loaders on tiny native-layout trees, including the quirks and the broken cases."""

from __future__ import annotations

import os
import warnings

import pytest
from data_fixtures import make_casme2, make_casme3, make_samm, make_smic, write_frames, write_xlsx

from mer.data import DatasetError, DatasetWarning, load_dataset


def _quiet(fn, *a, **k):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DatasetWarning)
        return fn(*a, **k)


# ---------------------------------------------------------------------------------------- CASME II


def test_casme2_cropped_by_default_with_slash_apex(casme2_root):
    with pytest.warns(DatasetWarning, match=r"1 sample\(s\) have no annotated apex.*sub02/EP01_11f"):
        samples = load_dataset("casme2", casme2_root)
    by = {s.clip: s for s in samples}
    assert [s.clip for s in samples] == ["EP02_01f", "EP19_05f", "EP01_11f", "EP03_02"]
    s = by["EP02_01f"]
    assert (s.dataset, s.subject, s.onset, s.apex, s.offset) == ("casme2", "sub01", 46, 59, 70)
    assert s.cropped and all(os.path.basename(p).startswith("reg_img") for p in s.frames)
    assert [int(os.path.basename(p)[7:-4]) for p in s.frames] == list(range(46, 71))  # numeric order
    assert (s.aus, s.emotion, s.label) == ("4+7", "happiness", 1)
    assert by["EP19_05f"].label == 0 and by["EP03_02"].label is None  # repression; others
    e = by["EP01_11f"]
    assert e.apex_is_estimated and e.apex == 5 + (11 - 5) // 2 and e.label == 0


def test_casme2_raw_frames_and_missing_apex_error(casme2_root):
    samples = _quiet(load_dataset, "casme2", casme2_root, frames="raw")
    assert not samples[0].cropped and samples[0].frames[0].endswith("CASME2_RAW_selected/sub01/EP02_01f/img46.jpg")
    with pytest.raises(DatasetError, match=r"no apex annotated"):
        load_dataset("casme2", casme2_root, missing_apex="error")


def test_casme2_every_problem_in_one_error(tmp_path):
    root = make_casme2(
        tmp_path,
        [
            (1, "EP02_01f", 46, 59, 50, "happiness"),  # apex after offset
            (1, "EP05_01", 1, 2, 6, "happiness"),  # frames 3-4 missing on disk
            (2, "EP07_01", 1, 2, 3, "joy"),  # unknown emotion
            (3, "EP08_01", 1, 2, 3, "surprise"),  # fine
        ],
        skip_frames={(1, "EP05_01", 3), (1, "EP05_01", 4)},
    )
    (root / "CASME2_RAW_selected" / "sub02" / "EP07_01").rename(root / "CASME2_RAW_selected" / "sub02" / "gone")
    with pytest.raises(DatasetError) as ei:
        load_dataset("casme2", root)
    msg = str(ei.value)
    assert "problem(s) in 3 sample(s)" in msg and "1 sample(s) are fine" in msg
    assert "apex 59 outside onset..offset 46..50" in msg
    assert "2 frame(s) missing on disk" in msg and ": 3-4 " in msg
    assert "unknown emotion 'joy'" in msg and "clip folder not found" in msg
    assert "CASME2-coding-20140508.xlsx row" in msg
    kinds = {p.kind for p in ei.value.problems}
    assert kinds == {"apex-range", "missing-frames", "unknown-emotion", "missing-folder"}
    with pytest.warns(DatasetWarning, match=r"Excluded 3 sample\(s\)"):
        ok = load_dataset("casme2", root, on_error="warn")
    assert [s.clip for s in ok] == ["EP08_01"]


def test_casme2_annotation_not_found_and_bad_header(tmp_path):
    write_frames(tmp_path / "CASME2_RAW_selected" / "sub01" / "EP01", ["img1.jpg"])
    with pytest.raises(DatasetError, match=r"no CASME II annotation file.*annotation=PATH"):
        load_dataset("casme2", tmp_path)
    write_xlsx(tmp_path / "CASME2-coding-x.xlsx", [["foo", "bar"], [1, 2]])
    with pytest.raises(DatasetError, match=r"no header row found"):
        load_dataset("casme2", tmp_path)


def test_casme2_bad_frame_cell(tmp_path):
    root = make_casme2(tmp_path, [(1, "EP01", 1, 2, 3, "surprise"), (1, "EP02", "one", 2, 3, "surprise")])
    with pytest.raises(DatasetError, match=r"onset: 'one' is not a frame number"):
        load_dataset("casme2", root)


# -------------------------------------------------------------------------------------------- SAMM


@pytest.mark.parametrize("nested", [True, False])
def test_samm_note_rows_missing_apex_and_layouts(tmp_path, nested):
    root = make_samm(
        tmp_path,
        [
            (6, "006_1_2", 5562, 5565, 5568, "Anger"),
            (7, "007_3_1", 10, None, 14, "Happiness"),
            (7, "007_3_2", 20, -1, 22, "Other"),
            (9, "009_2_1", 30, 31, 33, "Surprise"),
        ],
        nested=nested,
    )
    with pytest.warns(DatasetWarning, match=r"2 sample\(s\) have no annotated apex"):
        samples = load_dataset("samm", root)
    assert [(s.subject, s.clip, s.label) for s in samples] == [
        ("006", "006_1_2", 0),
        ("007", "007_3_1", 1),
        ("007", "007_3_2", None),
        ("009", "009_2_1", 2),
    ]
    s = samples[0]
    assert s.frames[0].endswith("006_05562.jpg") and len(s.frames) == 7 and not s.cropped
    assert samples[1].apex == 12 and samples[1].apex_is_estimated


def test_samm_unpadded_subject_folder_and_cropped_refused(tmp_path):
    root = make_samm(tmp_path, [(6, "006_1_2", 1, 2, 3, "Anger")])
    (root / "SAMM" / "006").rename(root / "SAMM" / "6")
    assert _quiet(load_dataset, "samm", root)[0].subject == "006"
    with pytest.raises(DatasetError, match=r"SAMM ships no face crops"):
        load_dataset("samm", root, frames="cropped")


# -------------------------------------------------------------------------------------------- SMIC


def test_smic_folder_labels_names_and_apex_rule(tmp_path):
    root = make_smic(tmp_path, [(1, "negative", 1, 46110, 7), (1, "positive", 2, 500, 4), (12, "surprise", 3, 100, 5)])
    samples = load_dataset("smic", root)
    assert [(s.subject, s.clip, s.label, s.native_clip) for s in samples] == [
        ("s01", "s01_ne_01", 0, "s1_ne_01"),
        ("s01", "s01_po_02", 1, "s1_po_02"),
        ("s12", "s12_sur_03", 2, "s12_sur_03"),
    ]
    s = samples[0]
    assert (s.onset, s.apex, s.offset) == (46110, 46113, 46116) and s.apex_is_estimated
    assert s.frames[0].endswith("image046110.bmp") and not s.cropped
    late = load_dataset("smic", root, smic_apex=lambda on, off: off)
    assert late[0].apex == 46116
    with pytest.raises(DatasetError, match=r"no reg_\* crops"):
        load_dataset("smic", root, frames="cropped")


def test_smic_crops_gaps_and_unknown_folder(tmp_path):
    root = make_smic(tmp_path, [(2, "negative", 1, 10, 5), (2, "happy", 2, 30, 3)], crops=True)
    os.remove(root / "HS" / "s2" / "micro" / "negative" / "s2_ne_01" / "reg_image000012.bmp")
    with pytest.raises(DatasetError) as ei:
        load_dataset("smic", root)
    msg = str(ei.value)
    assert "unknown emotion 'happy'" in msg and "frame(s) missing on disk" in msg and ": 12 " in msg
    raw = _quiet(load_dataset, "smic", root, frames="raw", on_error="warn")
    assert all(not s.cropped for s in raw)
    assert [s.clip for s in raw] == ["s02_ne_01"]


def test_missing_root_and_unknown_dataset(tmp_path):
    with pytest.raises(DatasetError, match=r"is not a folder"):
        load_dataset("smic", tmp_path / "nope")
    with pytest.raises(DatasetError, match=r"no clip folders found"):
        load_dataset("smic", tmp_path)
    with pytest.raises(ValueError, match=r"unknown dataset 'casme'"):
        load_dataset("casme", tmp_path)
    with pytest.raises(ValueError, match=r"on_error"):
        load_dataset("smic", tmp_path, on_error="ignore")


# ------------------------------------------------------------------------------------------ CASME3


def test_casme3_shared_filename_and_dropped_frames(tmp_path):
    root = make_casme3(
        tmp_path,
        [(1, "a", 175, 178, 180, "happy"), (1, "a", 190, 192, 199, "sad"), (2, "j", 28, 33, 49, "others")],
        drop=(195,),
    )
    with pytest.warns(DatasetWarning, match=r"frames missing between onset and offset.*spNO.1/a_190 \[195\]"):
        samples = load_dataset("casme3", root)
    assert [(s.subject, s.clip, s.native_clip, s.label) for s in samples] == [
        ("spNO.1", "a_175", "a", 1),
        ("spNO.1", "a_190", "a", 0),
        ("spNO.2", "j_28", "j", None),
    ]
    s = samples[1]
    assert s.missing_frames == (195,) and len(s.frames) == 9
    assert s.frame_path(196).endswith("196.jpg") and s.frame_path(192).endswith("192.jpg")
    with pytest.raises(ValueError, match="not on disk"):
        s.frame_path(195)


def test_casme3_missing_apex_frame_is_an_error(tmp_path):
    root = make_casme3(tmp_path, [(1, "a", 175, 178, 180, "happy")], drop=(178,))
    with pytest.raises(DatasetError, match=r"1 frame\(s\) missing on disk.*: 178"):
        load_dataset("casme3", root)


def test_casme2_root_is_the_crops_folder(tmp_path):
    root = make_casme2(tmp_path, [(1, "EP02_01f", 1, 2, 3, "happiness")], raw=False, cropped=True)
    crops = root / "Cropped"
    (root / "CASME2-coding-20140508.xlsx").rename(crops / "CASME2-coding-20140508.xlsx")
    s = load_dataset("casme2", crops)
    assert s[0].cropped and s[0].frames[0].endswith("Cropped/sub01/EP02_01f/reg_img1.jpg")
    with pytest.raises(DatasetError, match="no frame folders found|no raw frames"):
        load_dataset("casme2", crops, frames="raw")
