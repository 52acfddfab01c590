"""`mer prepare` and `mer show-sample` end to end on a tiny CASME II tree (crops, no detection)."""

from __future__ import annotations

import cv2
import numpy as np
import openpyxl
import pytest
from test_prep_flow import shifted_texture

from mer.cli import main


@pytest.fixture
def casme2(tmp_path):
    root = tmp_path / "casme2"
    wb = openpyxl.Workbook()
    ws = wb.active
    ws.append(
        [
            "Subject",
            "Filename",
            None,
            "OnsetFrame",
            "ApexFrame",
            "OffsetFrame",
            None,
            "Action Units",
            "Estimated Emotion",
        ]
    )
    for subj, emo in [(1, "happiness"), (2, "surprise"), (3, "others")]:
        ws.append([subj, "EP01_01", "", 1, 2, 3, "", "12", emo])
        a, b = shifted_texture(72, dx=0.5, dy=0.0, seed=subj)
        d = root / "Cropped" / f"sub{subj:02d}" / "EP01_01"
        d.mkdir(parents=True)
        for k, img in enumerate([a, b, b], start=1):
            cv2.imwrite(str(d / f"reg_img{k}.jpg"), img)
    wb.save(root / "CASME2-coding-20190701.xlsx")
    return root


def test_prepare_cli(casme2, tmp_path, capsys):
    args = [
        "prepare",
        "--dataset",
        "casme2",
        "--root",
        str(casme2),
        "--out",
        str(tmp_path / "cache"),
        "--flow",
        "dis",
        "--size",
        "14",
        "--face-size",
        "56",
        "--no-progress",
    ]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "3 samples, 2 in the 3-class protocol" in out and "prepared 2 samples" in out
    with np.load(tmp_path / "cache" / "casme2.npz") as z:
        assert z["face"].shape == (2, 3, 14, 14) and z["labels"].tolist() == [1, 2]
    assert main(args + ["--all-labels", "--name", "all"]) == 0
    with np.load(tmp_path / "cache" / "all.npz") as z:
        assert z["labels"].tolist() == [1, 2, -1]


def test_show_sample_cli(casme2, tmp_path):
    png = tmp_path / "s.png"
    assert (
        main(
            [
                "show-sample",
                "--dataset",
                "casme2",
                "--root",
                str(casme2),
                "--clip",
                "EP01_01",
                "--subject",
                "sub02",
                "--out",
                str(png),
                "--flow",
                "dis",
                "--face-size",
                "56",
            ]
        )
        == 0
    )
    assert png.stat().st_size > 10_000 and png.read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(SystemExit, match="3 samples match"):
        main(["show-sample", "--dataset", "casme2", "--root", str(casme2), "--clip", "EP01_01", "--out", str(png)])


@pytest.mark.parametrize(
    "extra, msg",
    [
        (["--dataset", "composite", "--root", "x"], "not --root"),
        (["--dataset", "casme2"], "needs --root"),
        (["--dataset", "casme2", "--root", "x", "--samm", "y"], "only apply to --dataset composite"),
        (["--dataset", "samm", "--root", "x", "--sample-list", "l.csv"], "--sample-list applies"),
    ],
)
def test_prepare_cli_argument_errors(tmp_path, extra, msg):
    with pytest.raises(SystemExit, match=msg):
        main(["prepare", "--out", str(tmp_path / "c"), *extra])
