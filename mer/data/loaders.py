"""Public loaders: :func:`load_dataset`, :func:`megc2019_composite`, :func:`casme3_part_a`."""

from __future__ import annotations

import importlib
from pathlib import Path

from mer.data.errata import apply_errata
from mer.data.errata import resolve as resolve_errata
from mer.data.frames import build_samples
from mer.data.layout import check_root
from mer.data.problems import DatasetError, Problems, check_on_error
from mer.data.sample import DATASETS, Sample
from mer.data.sample_lists import ListEntry, read_sample_list, shipped_list

_MODULES = {"casme2": "mer.data.casme2", "samm": "mer.data.samm", "smic": "mer.data.smic", "casme3": "mer.data.casme3"}


def _load(
    name: str,
    root,
    *,
    annotation=None,
    frames="auto",
    on_error="raise",
    smic_apex="middle",
    missing_apex="estimate",
    keep: dict[tuple[str, str], ListEntry] | None = None,
    errata="shipped",
) -> tuple[list[Sample], Problems]:
    if name not in _MODULES:
        raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    check_on_error(on_error)
    table = resolve_errata(errata)
    root = check_root(name, root)
    problems = Problems(name)
    mod = importlib.import_module(_MODULES[name])
    found = mod.discover(root, annotation=annotation, frames=frames, problems=problems, smic_apex=smic_apex)
    entries = found.entries
    if keep is not None:
        by_key = {(e.subject, e.clip): e for e in entries}
        for key, le in keep.items():
            if key not in by_key:
                problems.add(
                    f"{name} {key[0]}/{key[1]} ({le.source})",
                    f"in the sample list but not found in the data under {root}",
                    "not-in-data",
                )
        # annotation problems of clips outside the list do not concern this protocol
        listed = {f"{name} {s}/{c}" for s, c in keep}
        problems.problems = [
            p for p in problems.problems if p.kind == "not-in-data" or p.where.split(" (", 1)[0] in listed
        ]
        entries = [e for e in entries if (e.subject, e.clip) in keep]
        for e in entries:
            e.label, e.label_given = keep[(e.subject, e.clip)].label, True
    apply_errata(name, entries, table, problems)
    samples = build_samples(
        name,
        entries,
        found.clip_dir,
        cropped=found.cropped,
        root=root,
        problems=problems,
        missing_apex="estimate" if name == "smic" else missing_apex,
        apex_rule=found.apex_rule,
        tolerate_gaps=found.tolerate_gaps,
        frames_index=found.frames_index,
    )
    if keep is not None:  # the list's order
        order = {k: i for i, k in enumerate(keep)}
        samples.sort(key=lambda s: order[(s.subject, s.clip)])
    return samples, problems


def load_dataset(
    name: str,
    root,
    *,
    annotation=None,
    frames: str = "auto",
    on_error: str = "raise",
    smic_apex="middle",
    missing_apex: str = "estimate",
    errata="shipped",
) -> list[Sample]:
    """All annotated clips of one dataset, validated against the frames on disk.

    name: 'casme2' | 'samm' | 'smic' | 'casme3'. root: the folder holding the dataset as distributed
    (see docs/data.md for the layouts). annotation: the annotation file (default: found in root by its
    usual name). frames: 'auto' (the dataset's crops when present, else raw), 'raw' or 'cropped'.
    on_error: 'raise' -> one DatasetError listing every problem; 'warn' -> a DatasetWarning listing
    them, the affected samples excluded and counted. smic_apex: 'middle' or a callable
    (onset, offset) -> frame for SMIC (no apex annotated). missing_apex: 'estimate' (middle frame,
    ``apex_is_estimated=True``, reported in a warning) or 'error' for rows with '/' or blank apex.
    Samples outside the 3-class protocol ("others") are returned with ``label=None``. errata: 'shipped'
    (default: correct the known annotation errors of the public sheets, announced in a warning and
    recorded in ``Sample.errata``; see mer.data.errata), 'none', or a path to a table of the same form.
    """
    samples, problems = _load(
        name,
        root,
        annotation=annotation,
        frames=frames,
        on_error=on_error,
        smic_apex=smic_apex,
        missing_apex=missing_apex,
        errata=errata,
    )
    problems.finish(on_error, len(samples))
    return samples


def megc2019_composite(
    casme2=None, samm=None, smic=None, *, sample_list=None, on_error: str = "raise", **kw
) -> list[Sample]:
    """The MEGC2019 composite (CDE) protocol: the samples of an explicit list with the list's labels.

    casme2, samm, smic: dataset roots. sample_list: None (the shipped 442-row list), or a path to a CSV
    of the same format (``dataset,subject,clip,label``; e.g. the synthetic generator's) or the 441-row
    headerless challenge file. Other keywords go to the loaders (annotation files are per dataset, so
    pass ``casme2_annotation=...``/``samm_annotation=...``; frames, smic_apex, missing_apex, errata).
    Every list entry must be found: problems of all three datasets are reported together.
    Returned in list order.
    """
    check_on_error(on_error)
    allowed = {"frames", "smic_apex", "missing_apex", "casme2_annotation", "samm_annotation", "errata"}
    unknown = sorted(set(kw) - allowed)
    if unknown:
        raise TypeError(f"megc2019_composite got unexpected keyword(s) {unknown}; allowed: {sorted(allowed)}")
    entries = read_sample_list(sample_list) if sample_list is not None else shipped_list("megc2019_composite")
    roots = {"casme2": casme2, "samm": samm, "smic": smic}
    per: dict[str, dict] = {d: {} for d in roots}
    for le in entries:
        if le.dataset not in per:
            raise DatasetError(f"{le.source}: dataset {le.dataset!r} is not part of the composite (casme2, samm, smic)")
        per[le.dataset][(le.subject, le.clip)] = le
    missing_roots = [d for d in roots if per[d] and roots[d] is None]
    if missing_roots:
        raise DatasetError(
            f"the sample list has {', '.join(f'{len(per[d])} {d}' for d in missing_roots)} "
            f"sample(s) but no root was given for {', '.join(missing_roots)} "
            f"(pass {', '.join(f'{d}=ROOT' for d in missing_roots)})"
        )
    out, all_problems = {}, []
    for d in roots:
        if not per[d]:
            continue
        opts = {k: v for k, v in kw.items() if k in ("frames", "smic_apex", "missing_apex", "errata")}
        opts["annotation"] = kw.get(f"{d}_annotation")
        samples, problems = _load(d, roots[d], keep=per[d], on_error=on_error, **opts)
        out[d] = {s.uid: s for s in samples}
        all_problems.append((problems, len(samples)))
    bad = [p for p, _ in all_problems if p.problems]
    if bad and on_error == "raise":
        n_ok = sum(n for _, n in all_problems)
        merged = Problems("megc2019 composite")
        for p, _ in all_problems:
            merged.problems += p.problems
            merged.notes += [f"{p.dataset}: {t}" for t in p.notes]
        merged.finish("raise", n_ok)
    for p, n in all_problems:
        p.finish(on_error, n)
    result = []
    for le in entries:
        s = out.get(le.dataset, {}).get(f"{le.dataset}/{le.subject}/{le.clip}")
        if s is not None:
            result.append(s)
    return result


def casme3_part_a(root, *, sample_list=None, annotation=None, **kw) -> list[Sample]:
    """CAS(ME)^3 Part A in the 3-class protocol: the clips of ``casme3_partA.csv`` (shipped: 687,
    "others" removed) with the list's labels. annotation: the dataset's .xlsx (default: the list itself
    provides onset/apex/offset, so no spreadsheet is needed)."""
    import csv

    path = Path(sample_list) if sample_list else shipped_list_path("casme3_partA")
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    from mer.data.casme3 import clip_id, norm_subject

    keep = {}
    for i, r in enumerate(rows, start=2):
        key = (norm_subject(r["subject"]), clip_id(r["clip"], int(r["onset"])))
        keep[key] = ListEntry("casme3", key[0], key[1], int(r["label"]), f"{path.name} row {i}")
    samples, problems = _load("casme3", root, annotation=annotation or path, keep=keep, **kw)
    problems.finish(kw.get("on_error", "raise"), len(samples))
    return samples


def shipped_list_path(name: str) -> Path:
    return Path(__file__).parent / "lists" / f"{name}.csv"
