"""Generating the tiny preset: native layouts, annotation formats, determinism, speed."""

from __future__ import annotations

import csv
import hashlib
import re
from pathlib import Path

import pytest

from mer.synth.config import SynthConfig
from mer.synth.generate import generate
from mer.synth.plan import make_plan


def _digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_tiny_preset_size(tiny):
    # generation time is reported by docs/synth.md's measurement, not asserted (timed tests flake under load)
    _, summary, _ = tiny
    assert summary.clips == 20 and summary.frames > 300


def test_same_seed_same_bytes(tiny, tmp_path):
    out, _, _ = tiny
    again = generate(SynthConfig(preset="tiny"), tmp_path / "again", workers=2, progress=False)
    assert _digest(again.out) == _digest(out)  # also: worker processes do not change the output


def test_other_seed_other_frames(tiny, tmp_path):
    out, _, _ = tiny
    other = generate(SynthConfig(preset="tiny", seed=1), tmp_path / "s1", progress=False)
    a, b = _digest(out), _digest(other.out)
    common = set(a) & set(b)
    assert sum(a[k] != b[k] for k in common) > 0.9 * len(common) - 5


def test_layouts(tiny):
    out, _, _ = tiny
    c2 = sorted((out / "casme2" / "CASME2_RAW_selected").glob("sub*/*/*"))
    assert c2 and all(re.fullmatch(r"img[1-9]\d*\.jpg", p.name) for p in c2)
    samm = sorted((out / "samm" / "SAMM").glob("*/*/*"))
    assert samm and all(re.fullmatch(rf"{p.parts[-3]}_\d{{5}}\.jpg", p.name) for p in samm)
    assert all(re.fullmatch(r"\d{3}_\d+_\d+", p.parent.name) for p in samm)
    smic = sorted((out / "smic" / "HS").glob("s*/micro/*/*/*"))
    assert smic and all(re.fullmatch(r"image\d{6}\.bmp", p.name) for p in smic)
    assert {p.parts[-3] for p in smic} == {"negative", "positive", "surprise"}
    assert all(re.fullmatch(r"s[1-9]\d*_(ne|po|sur)_\d+", p.parent.name) for p in smic)
    import cv2

    assert cv2.imread(str(samm[0]), cv2.IMREAD_UNCHANGED).ndim == 2  # SAMM is greyscale
    assert cv2.imread(str(c2[0]), cv2.IMREAD_UNCHANGED).shape == (280, 320, 3)
    # frames exist exactly for onset..offset of every clip
    for p in make_plan(SynthConfig(preset="tiny")):
        folder = {
            "casme2": out / "casme2" / "CASME2_RAW_selected" / p.native_subject / p.native_clip,
            "samm": out / "samm" / "SAMM" / p.native_subject / p.native_clip,
            "smic": out / "smic" / "HS" / p.native_subject / "micro" / p.emotion / p.native_clip,
        }[p.dataset]
        nums = sorted(int(re.search(r"(\d+)\.\w+$", f.name).group(1)) for f in folder.iterdir())
        assert nums == list(range(p.onset, p.offset + 1)), p


def test_casme2_annotation_format(tiny):
    import openpyxl

    out, _, _ = tiny
    ws = openpyxl.load_workbook(out / "casme2" / "CASME2-coding-20140508.xlsx").active
    rows = list(ws.iter_rows(values_only=True))
    assert rows[0] == (
        "Subject",
        "Filename",
        None,
        "OnsetFrame",
        "ApexFrame",
        "OffsetFrame",
        None,
        "Action Units",
        "Estimated Emotion",
    )
    body = rows[1:]
    assert all(isinstance(r[0], int) for r in body) and {r[0] for r in body} == {1, 2}
    assert sum(r[4] == "/" for r in body) == 1
    assert {r[8] for r in body} <= {"happiness", "surprise", "disgust", "repression", "others", "fear", "sadness"}
    assert "others" in {r[8] for r in body}


def test_samm_annotation_format(tiny):
    import openpyxl

    out, _, _ = tiny
    ws = openpyxl.load_workbook(out / "samm" / "SAMM_Micro_FACS_Codes_v2.xlsx").active
    rows = list(ws.iter_rows(values_only=True))
    header = [i for i, r in enumerate(rows) if r[0] == "Subject"]
    assert header == [13]  # 13 note rows above the header
    assert rows[13] == (
        "Subject",
        "Filename",
        "Inducement Code",
        "Onset Frame",
        "Apex Frame",
        "Offset Frame",
        "Duration",
        "Type",
        "Action Units",
        "Estimated Emotion",
        "Objective Classes",
        "Notes",
    )
    body = rows[14:]
    assert {r[9] for r in body} <= {"Anger", "Contempt", "Disgust", "Fear", "Sadness", "Happiness", "Surprise", "Other"}
    assert sum(r[4] == -1 for r in body) == 1
    assert all(r[6] == r[5] - r[3] + 1 for r in body)


def test_list_truth_and_config(tiny):
    out, _, _ = tiny
    with open(out / "megc2019_composite.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 18 and {r["dataset"] for r in rows} == {"casme2", "samm", "smic"}
    assert (out / "megc2019_composite.csv").read_bytes().startswith(b"dataset,subject,clip,label\r\n")
    with open(out / "smic" / "synth_truth.csv", newline="") as f:
        truth = list(csv.DictReader(f))
    assert len(truth) == 6 and all(int(t["onset"]) < int(t["apex"]) < int(t["offset"]) for t in truth)
    assert all(t["apex_annotated"] == "0" for t in truth)
    assert (out / "synth_config.json").is_file()


def test_refuses_to_overwrite(tiny):
    out, _, _ = tiny
    with pytest.raises(FileExistsError, match="--overwrite"):
        generate(SynthConfig(preset="tiny"), out, progress=False)
