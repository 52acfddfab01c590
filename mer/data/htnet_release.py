"""The MEGC2019 composite as the public HTNet release ships it, read and validated.

    from mer.data import load_htnet_release
    rel = load_htnet_release("/data/HTNet")      # a clone of wangzhifengharrison/HTNet, or a flat copy
    rel.tiles                                     # (442, 28, 28, 3) uint8: the release's model input
    for subject, test in rel.folds.items(): ...  # its 68 leave-one-subject-out folds

Layout (``root`` = the clone, with these under ``datasets/``, or a folder holding them directly):

- ``STSNet_whole_norm_u_v_os/<sub>_<clip> .png``: 442 onset->apex flow images, 28x28x3 (note the space
  before ``.png``);
- ``combined_datasets_whole/<imagename>``: the 442 apex face crops (224x224 JPEG);
- ``combined_3_class2_for_optical_flow.csv``: ``dataset,sub,filename_o,label,apex,imagename,...``;
- the folds: ``loso_test_lists.txt`` (lines ``<subject>/u_test/<label>/<flow file>``) or the release's
  ``three_norm_u_v_os/<subject>/u_test/<label>/`` folders.

The tiles follow the release's code exactly (see :mod:`mer.data.htnet_landmarks`, docs/data.md).
"""

from __future__ import annotations

import os
import types
from collections import Counter
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np

from mer.data.htnet_landmarks import (
    FALLBACK_LANDMARKS,
    apex_face_28,
    clip_landmarks,
    facenet_mtcnn,
    mtcnn_landmarks,
    release_tiles,
)
from mer.data.images import ImageError, read_image
from mer.data.problems import DatasetError

FLOW_DIR = "STSNet_whole_norm_u_v_os"
FACE_DIR = "combined_datasets_whole"
SHEET = "combined_3_class2_for_optical_flow.csv"
FOLDS_LIST = "loso_test_lists.txt"
FOLDS_DIR = "three_norm_u_v_os"
SHEET_COLUMNS = ("dataset", "sub", "filename_o", "label", "imagename")
DATASET_NAMES = ("casme2", "samm", "smic")
#: the MEGC2019 composite: 442 samples, 68 subjects, labels negative/positive/surprise
COMPOSITE_SUBJECTS = 68
COMPOSITE_LABELS = (250, 109, 83)
FLOW_SHAPE = (28, 28, 3)
FACE_SHAPE = (224, 224, 3)
SHIPPED_LANDMARKS = Path(__file__).parent / "lists" / "htnet_release_landmarks.csv"
LANDMARK_MODES = ("shipped", "mtcnn", "fallback")
MAX_LINES = 40


class HtnetReleaseError(DatasetError):
    """The HTNet release folder is not what the loader expects (the message names the path and the fix)."""


def flow_file_name(sub: str, filename_o: str) -> str:
    """The release's flow file name: ``sub + "_" + filename_o + " .png"`` (space before .png)."""
    return f"{sub}_{filename_o} .png"


@dataclass(frozen=True, eq=False)  # arrays: compare fields explicitly (np.array_equal)
class HtnetRelease:
    """The 442 samples of the release, in the sheet's row order (all arrays read-only).

    names: (N,) str, the flow file names exactly as on disk (``"006_006_1_2 .png"``).
    subjects: (N,) str, the sheet's ``sub`` (``sub01``, ``006``, ``s1``); unique across the datasets.
    datasets: (N,) str, ``casme2`` | ``samm`` | ``smic``.
    clips: (N,) str, the sheet's ``filename_o``.
    labels: (N,) int64, 0 negative, 1 positive, 2 surprise.
    flow: (N, 28, 28, 3) uint8, the flow PNGs as ``cv2.imread`` returns them (BGR order of the u, v,
        strain images).
    landmarks: (N, 5, 2) int64 (x, y) after the release's clipping to [7, 21].
    landmark_found: (N,) bool, MTCNN found a face (False: the release's fallback set); all False for
        landmarks='fallback'.
    landmark_mode: 'shipped' | 'mtcnn' | 'fallback' | 'given'.
    tiles: (N, 28, 28, 3) uint8, the release's model input before its float conversion: the crops around
        landmarks 0, 1 (top) and 3, 4 (bottom), indexed as the release does (x as the row).
    face_paths: (N,) paths of the apex face crops; ``apex_faces`` reads them (lazily, once).
    folds: subject -> (k,) int64 indices of that subject's samples (the fold's test set), in the order of
        the release's fold list; every sample is in exactly one fold (checked).
    root: the folder the data was read from.
    """

    root: str
    names: np.ndarray
    subjects: np.ndarray
    datasets: np.ndarray
    clips: np.ndarray
    labels: np.ndarray
    flow: np.ndarray
    landmarks: np.ndarray
    landmark_found: np.ndarray
    landmark_mode: str
    tiles: np.ndarray
    face_paths: tuple[str, ...]
    folds: types.MappingProxyType = field(repr=False)

    def __len__(self) -> int:
        return len(self.names)

    def __repr__(self) -> str:
        counts = "/".join(str(int((self.labels == k).sum())) for k in range(3))
        return (
            f"HtnetRelease({len(self)} samples, {len(self.folds)} subjects, labels {counts}, "
            f"landmarks {self.landmark_mode} (MTCNN face in {int(self.landmark_found.sum())}), "
            f"root={self.root!r})"
        )

    @cached_property
    def apex_faces(self) -> np.ndarray:
        """(N, 224, 224, 3) uint8 BGR apex face crops (read on first use, each checked complete)."""
        faces = np.stack([read_image(p) for p in self.face_paths])
        faces.setflags(write=False)
        return faces

    def fold(self, subject: str) -> tuple[np.ndarray, np.ndarray]:
        """(train indices, test indices) of ``subject``'s leave-one-subject-out fold."""
        test = self.folds[subject]
        mask = np.ones(len(self), bool)
        mask[test] = False
        return np.flatnonzero(mask), test


class _Problems:
    def __init__(self, root: Path):
        self.root, self.lines = root, []

    def add(self, text: str) -> None:
        self.lines.append(text)

    def raise_if_any(self, fix: str) -> None:
        if not self.lines:
            return
        if len(self.lines) == 1:  # one problem: one line
            raise HtnetReleaseError(f"HTNet release at {self.root}: {self.lines[0]}. {fix}", self.lines)
        shown = [f"  - {t}" for t in self.lines[:MAX_LINES]]
        if len(self.lines) > MAX_LINES:
            shown.append(f"  ... and {len(self.lines) - MAX_LINES} more")
        raise HtnetReleaseError(
            f"HTNet release at {self.root}: {len(self.lines)} problem(s):\n" + "\n".join(shown) + f"\n{fix}", self.lines
        )


def _find(root: Path, name: str, *, folder: bool) -> Path | None:
    for base in (root, root / "datasets"):
        p = base / name
        if p.is_dir() if folder else p.is_file():
            return p
    return None


def _read_sheet(path: Path) -> list[dict]:
    import csv

    try:
        with open(path, newline="") as f:
            rows = list(csv.reader(f))
    except (OSError, UnicodeDecodeError) as e:
        raise HtnetReleaseError(
            f"cannot read the sample sheet {path}: {e}; restore it from the release repository"
        ) from None
    if not rows:
        raise HtnetReleaseError(f"the sample sheet {path} is empty; restore it from the release repository")
    header = [c.strip() for c in rows[0]]
    missing = [c for c in SHEET_COLUMNS if c not in header]
    if missing:
        raise HtnetReleaseError(
            f"the sample sheet {path} has no column(s) {', '.join(missing)} (header: "
            f"{','.join(header)}); expected the release's {SHEET} with columns "
            f"{','.join(SHEET_COLUMNS)}"
        )
    out = []
    for i, r in enumerate(rows[1:], start=2):
        if not any(c.strip() for c in r):
            continue
        padded = [c.strip() for c in r] + [""] * (len(header) - len(r))  # a short row: blank cells
        cells = dict(zip(header, padded, strict=False))  # (cells past the header are ignored)
        cells["_line"] = i
        out.append(cells)
    return out


def _parse_folds(root: Path, problems: _Problems) -> tuple[list[tuple[str, str, str, str]], str]:
    """[(subject, label, flow file, where)] from loso_test_lists.txt or the u_test folders."""
    listed = _find(root, FOLDS_LIST, folder=False)
    entries = []
    if listed is not None:
        with open(listed) as f:
            for n, line in enumerate(f, start=1):
                line = line.rstrip("\r\n")
                if not line.strip():
                    continue
                parts = line.split("/")
                if len(parts) != 4 or parts[1] != "u_test":
                    problems.add(f"{listed.name} line {n}: {line!r} is not <subject>/u_test/<label>/<flow file>")
                    continue
                entries.append((parts[0], parts[2], parts[3], f"{listed.name} line {n}"))
        return entries, str(listed)
    folder = _find(root, FOLDS_DIR, folder=True)
    if folder is None:
        raise HtnetReleaseError(
            f"no fold list under {root}: expected {FOLDS_LIST} or the release's {FOLDS_DIR}/<subject>/u_test/ "
            "folders (in root or root/datasets); point root at a complete clone of the release"
        )
    for sdir in sorted(p for p in folder.iterdir() if p.is_dir()):
        test = sdir / "u_test"
        if not test.is_dir():
            problems.add(f"{sdir}: no u_test folder")
            continue
        for ldir in sorted(p for p in test.iterdir() if p.is_dir()):
            for name in sorted(os.listdir(ldir)):
                if not name.startswith("."):
                    entries.append((sdir.name, ldir.name, name, str(ldir.relative_to(folder))))
    return entries, str(folder)


def _check_folds(entries, by_name: dict[str, int], subjects, labels, problems: _Problems):
    folds: dict[str, list[int]] = {}
    seen: dict[int, str] = {}
    for subj, lab, name, where in entries:
        i = by_name.get(name)
        if i is None:
            problems.add(f"{where}: {name!r} is not a sample of the sheet")
            continue
        if subj != subjects[i]:
            problems.add(f"{where}: {name!r} is listed in subject {subj}'s fold but belongs to {subjects[i]}")
        if lab != str(labels[i]):
            problems.add(f"{where}: {name!r} is listed under label {lab} but the sheet says {labels[i]}")
        if i in seen:
            problems.add(f"{where}: {name!r} is listed twice (also {seen[i]})")
            continue
        seen[i] = where
        folds.setdefault(subj, []).append(i)
    missing = [n for n, i in by_name.items() if i not in seen]
    if missing:
        problems.add(
            f"{len(missing)} sample(s) are in no fold's test set: {', '.join(missing[:10])}"
            + (" ..." if len(missing) > 10 else "")
        )
    for s in sorted(set(subjects) - set(folds)):
        problems.add(f"subject {s} has no fold")
    return {s: np.array(sorted(ix), np.int64) for s, ix in folds.items()}


def _shipped_landmarks() -> dict[str, tuple[np.ndarray, bool]]:
    import csv

    if not SHIPPED_LANDMARKS.is_file():
        raise HtnetReleaseError(
            f"the shipped landmarks {SHIPPED_LANDMARKS} are missing from this install of "
            "mer; reinstall it, or use landmarks='mtcnn' or 'fallback'"
        )
    out = {}
    with open(SHIPPED_LANDMARKS, newline="") as f:
        for r in csv.DictReader(f):
            pts = np.array([[int(r[f"x{k}"]), int(r[f"y{k}"])] for k in range(5)], np.int64)
            out[r["flow_file"]] = (pts, r["source"] == "mtcnn")
    return out


def read_shipped_landmarks() -> dict[str, tuple[np.ndarray, bool]]:
    """{flow file name: ((5, 2) int64 clipped landmarks, MTCNN found a face)} shipped with mer."""
    return _shipped_landmarks()


def load_htnet_release(root, *, landmarks="shipped", check_counts: bool = True, progress: bool = False) -> HtnetRelease:
    """Read and validate the HTNet release's MEGC2019 composite (442 samples, 68 LOSO folds).

    root: a clone of the release repository (files under ``datasets/``) or a folder holding
        ``STSNet_whole_norm_u_v_os/``, ``combined_datasets_whole/``, the sheet and the fold list.
    landmarks: 'shipped' (default: the release's MTCNN landmarks, computed once by
        scripts/htnet_release_landmarks.py and shipped in mer/data/lists/htnet_release_landmarks.csv),
        'mtcnn' (recompute them now; needs facenet-pytorch), 'fallback' (the release's fixed set for every
        sample), or a mapping {flow file name: (5, 2) float landmarks (x, y)} (clipped as the release does).
    check_counts: require the composite's counts (442 samples, 68 subjects, labels 250/109/83); False
        for subsets (tests).

    Raises HtnetReleaseError (a DatasetError) listing every problem found: wrong root, missing, extra,
    unreadable or wrongly sized files, sheet rows without files, fold lists that do not match the sheet,
    counts that are not the composite's.
    """
    if not (isinstance(landmarks, str) and landmarks in LANDMARK_MODES) and not hasattr(landmarks, "keys"):
        raise ValueError(
            f"landmarks must be one of {LANDMARK_MODES} or a mapping name -> (5, 2) array, got {landmarks!r}"
        )
    root = Path(root).expanduser()
    hint = (
        "point root at a clone of the HTNet release (wangzhifengharrison/HTNet) or at a folder holding "
        f"{FLOW_DIR}/, {FACE_DIR}/, {SHEET} and {FOLDS_LIST}"
    )
    if not root.is_dir():
        raise HtnetReleaseError(f"HTNet release root {root} is not a folder; {hint}")
    root = root.resolve()
    sheet = _find(root, SHEET, folder=False)
    flow_dir = _find(root, FLOW_DIR, folder=True)
    face_dir = _find(root, FACE_DIR, folder=True)
    absent = [n for n, p in ((SHEET, sheet), (FLOW_DIR + "/", flow_dir), (FACE_DIR + "/", face_dir)) if p is None]
    if absent:
        raise HtnetReleaseError(
            f"{root} is not the HTNet release: {', '.join(absent)} not found there (nor "
            f"under {root / 'datasets'}); {hint}"
        )
    problems = _Problems(root)
    rows = _read_sheet(sheet)
    names, subjects, datasets, clips, labels, faces = [], [], [], [], [], []
    by_name: dict[str, int] = {}
    for r in rows:
        where = f"{sheet.name} line {r['_line']}"
        name = flow_file_name(r["sub"], r["filename_o"])
        if r["dataset"] not in DATASET_NAMES:
            problems.add(f"{where}: dataset {r['dataset']!r} is not one of {', '.join(DATASET_NAMES)}")
        if r["label"] not in ("0", "1", "2"):
            problems.add(f"{where}: label {r['label']!r} is not 0, 1 or 2")
        if name in by_name:
            problems.add(f"{where}: duplicate of line {rows[by_name[name]]['_line']} ({name!r})")
            continue
        by_name[name] = len(names)
        names.append(name)
        subjects.append(r["sub"])
        datasets.append(r["dataset"])
        clips.append(r["filename_o"])
        labels.append(int(r["label"]) if r["label"] in ("0", "1", "2") else -1)
        faces.append(r["imagename"])
    problems.raise_if_any(f"Fix or restore {sheet}.")

    # files: every sheet row has its flow and face file, no other files, every file reads completely
    on_disk = {n for n in os.listdir(flow_dir) if not n.startswith(".")}
    faces_on_disk = {n for n in os.listdir(face_dir) if not n.startswith(".")}
    for i, name in enumerate(names):
        if name not in on_disk:
            near = [n for n in on_disk if n.replace(" ", "") == name.replace(" ", "")]
            extra = f" (found {near[0]!r}: the release's names have a space before .png)" if near else ""
            problems.add(f"{sheet.name} row of {name!r}: flow file {flow_dir / name} is missing{extra}")
        if faces[i] not in faces_on_disk:
            problems.add(f"{sheet.name} row of {name!r}: apex face {face_dir / faces[i]} is missing")
    for n in sorted(on_disk - set(names)):
        problems.add(f"{flow_dir / n}: not in the sheet (extra file; remove it or restore the sheet)")
    for n in sorted(faces_on_disk - set(faces)):
        problems.add(f"{face_dir / n}: not in the sheet (extra file; remove it or restore the sheet)")
    problems.raise_if_any(
        "Restore the missing files from the release (git checkout), remove the extra ones, "
        "or point root at an unmodified copy."
    )
    flow = np.zeros((len(names), *FLOW_SHAPE), np.uint8)
    from tqdm.auto import tqdm

    for i, name in enumerate(tqdm(names, desc="HTNet release", unit="sample", disable=not progress)):
        for path, shape, kind in (
            (flow_dir / name, FLOW_SHAPE, "flow image"),
            (face_dir / faces[i], FACE_SHAPE, "apex face"),
        ):
            try:
                img = read_image(path)
            except ImageError as e:
                problems.add(f"{kind} {path}: {e.reason}")
                continue
            if img.shape[:2] != shape[:2]:
                problems.add(f"{kind} {path}: {img.shape[1]}x{img.shape[0]} pixels, expected {shape[1]}x{shape[0]}")
            elif kind == "flow image":
                flow[i] = img
    problems.raise_if_any("Restore these files from the release (git checkout) or point root at an unmodified copy.")

    # counts of the composite
    subjects_a, labels_a = np.array(subjects), np.array(labels, np.int64)
    if check_counts:
        counts = tuple(int((labels_a == k).sum()) for k in range(3))
        n_subj = len(set(subjects))
        if len(names) != sum(COMPOSITE_LABELS) or counts != COMPOSITE_LABELS or n_subj != COMPOSITE_SUBJECTS:
            problems.add(
                f"{sheet.name}: {len(names)} samples, {n_subj} subjects, labels {counts[0]}/{counts[1]}/"
                f"{counts[2]}; the MEGC2019 composite has {sum(COMPOSITE_LABELS)} samples, "
                f"{COMPOSITE_SUBJECTS} subjects, labels {'/'.join(map(str, COMPOSITE_LABELS))} "
                "(negative/positive/surprise)"
            )
    problems.raise_if_any("Point root at the unmodified release (check_counts=False accepts a subset).")

    entries, fold_src = _parse_folds(root, problems)
    folds = _check_folds(entries, by_name, subjects, labels, problems)
    problems.raise_if_any(f"Restore the fold list {fold_src} from the release, or point root at an unmodified copy.")

    lm, found, mode = _landmarks(landmarks, names, [face_dir / f for f in faces], root, progress)
    tiles = (
        np.stack([release_tiles(flow[i], lm[i]) for i in range(len(names))])
        if names
        else np.zeros((0, *FLOW_SHAPE), np.uint8)
    )
    arrays = {
        "names": np.array(names),
        "subjects": subjects_a,
        "datasets": np.array(datasets),
        "clips": np.array(clips),
        "labels": labels_a,
        "flow": flow,
        "landmarks": lm,
        "landmark_found": found,
        "tiles": tiles,
    }
    for a in arrays.values():
        a.setflags(write=False)
    return HtnetRelease(
        root=str(root),
        landmark_mode=mode,
        face_paths=tuple(str(face_dir / f) for f in faces),
        folds=types.MappingProxyType(folds),
        **arrays,
    )


def _landmarks(landmarks, names, face_paths, root, progress):
    n = len(names)
    if isinstance(landmarks, str) and landmarks == "fallback":
        lm = np.broadcast_to(clip_landmarks(FALLBACK_LANDMARKS), (n, 5, 2)).copy()
        return lm, np.zeros(n, bool), "fallback"
    if isinstance(landmarks, str) and landmarks == "mtcnn":
        try:
            mtcnn = facenet_mtcnn()
        except ImportError as e:
            raise HtnetReleaseError(str(e)) from None
        raw, found = mtcnn_landmarks([apex_face_28(p) for p in face_paths], mtcnn, progress=progress)
        return np.stack([clip_landmarks(p) for p in raw]) if n else np.zeros((0, 5, 2), np.int64), found, "mtcnn"
    if isinstance(landmarks, str):  # shipped
        table = _shipped_landmarks()
        absent = [nm for nm in names if nm not in table]
        if absent:
            raise HtnetReleaseError(
                f"no shipped landmarks for {len(absent)} sample(s) of {root} ({', '.join(map(repr, absent[:5]))}"
                f"{' ...' if len(absent) > 5 else ''}): the shipped set covers the release's 442 flow files; "
                "use landmarks='mtcnn' (recompute; needs facenet-pytorch) or 'fallback'"
            )
        lm = np.stack([table[nm][0] for nm in names]) if n else np.zeros((0, 5, 2), np.int64)
        return lm, np.array([table[nm][1] for nm in names], bool), "shipped"
    given = dict(landmarks)
    absent = [nm for nm in names if nm not in given]
    if absent:
        raise HtnetReleaseError(
            f"landmarks mapping has no entry for {len(absent)} sample(s): {', '.join(map(repr, absent[:5]))}"
        )
    lm = (
        np.stack([clip_landmarks(np.asarray(given[nm], np.float64)) for nm in names])
        if n
        else np.zeros((0, 5, 2), np.int64)
    )
    return lm, np.ones(n, bool), "given"


def summary(rel: HtnetRelease) -> str:
    """One line: samples per dataset, labels, subjects, landmark source."""
    per = ", ".join(f"{d} {c}" for d, c in Counter(rel.datasets.tolist()).items())
    return f"{len(rel)} samples ({per}); {len(rel.folds)} subjects; {rel!r}"
