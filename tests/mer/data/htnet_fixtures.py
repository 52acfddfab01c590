"""Tiny folders in the HTNet release's layout for the loader tests (uniquely named module, not conftest).

Samples: (dataset, sub, filename_o, label). Flow images are 28x28x3 PNGs of random bytes (seeded), apex
faces 224x224 JPEGs; names exactly as the release writes them (``<sub>_<clip> .png``, a space before
``.png``), folds as ``loso_test_lists.txt`` lines ``<sub>/u_test/<label>/<flow file>``.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

SAMPLES = [
    ("casme2", "sub01", "EP02_01f", 1),
    ("casme2", "sub01", "EP19_05f", 0),
    ("casme2", "sub02", "EP01_11f", 0),
    ("samm", "006", "006_1_2", 0),
    ("samm", "007", "007_3_1", 2),
    ("smic", "s1", "s1_sur_01", 2),
    ("smic", "s2", "s2_po_05", 1),
]


def flow_name(sub: str, clip: str) -> str:
    return f"{sub}_{clip} .png"


def make_release(root: Path, samples=SAMPLES, *, clone: bool = False, folds: str = "list", seed: int = 0) -> Path:
    """Write the layout under ``root`` (``clone``: data under root/datasets/ as in the repository;
    ``folds``: 'list' (loso_test_lists.txt), 'dirs' (three_norm_u_v_os/<sub>/u_{train,test}/<label>/) or
    'none')."""
    rng = np.random.default_rng(seed)
    data = root / "datasets" if clone else root
    (data / "STSNet_whole_norm_u_v_os").mkdir(parents=True, exist_ok=True)
    (data / "combined_datasets_whole").mkdir(parents=True, exist_ok=True)
    lines = ["dataset,sub,filename_o,label,apex,imagename,sub_filename"]
    for d, sub, clip, lab in samples:
        face = f"{sub}_{clip}.jpg"
        lines.append(f"{d},{sub},{clip},{lab},,{face},")
        cv2.imwrite(
            str(data / "STSNet_whole_norm_u_v_os" / flow_name(sub, clip)),
            rng.integers(0, 256, (28, 28, 3), dtype=np.uint8),
        )
        cv2.imwrite(str(data / "combined_datasets_whole" / face), rng.integers(0, 256, (224, 224, 3), dtype=np.uint8))
    (root / "combined_3_class2_for_optical_flow.csv").write_text("\n".join(lines) + "\n")
    if folds == "list":
        (data / "loso_test_lists.txt").write_text(
            "\n".join(f"{sub}/u_test/{lab}/{flow_name(sub, clip)}" for _, sub, clip, lab in samples) + "\n"
        )
    elif folds == "dirs":
        for _, s, _, _ in samples:
            for _, sub, clip, lab in samples:
                split = "u_test" if sub == s else "u_train"
                p = data / "three_norm_u_v_os" / s / split / str(lab)
                p.mkdir(parents=True, exist_ok=True)
                (p / flow_name(sub, clip)).write_bytes(b"")  # the release's copies; only names are read
    return root


def flow_dir(root: Path) -> Path:
    return (
        root / "STSNet_whole_norm_u_v_os"
        if (root / "STSNet_whole_norm_u_v_os").is_dir()
        else root / "datasets" / "STSNet_whole_norm_u_v_os"
    )
