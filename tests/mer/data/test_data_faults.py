"""Faults in the data layer: annotation errata applied openly, missing annotation columns
named, and the errata table itself checked. Each: a one-line message naming the problem, nothing dropped
silently, no wrong number."""

from __future__ import annotations

import warnings

import pytest
from data_fixtures import SAMM_HEADER, make_samm, write_xlsx

from mer.data import DatasetError, DatasetWarning, load_dataset, megc2019_composite
from mer.data.errata import read_errata

# the two rows of the real SAMM v2 sheet (onset/offset here are stand-ins; the errata key on the sheet's
# wrong value and on the problem, not on the other frame numbers)
ERRATA_ROWS = [(28, "028_4_1", 1100, 1143, 1134, "Anger"), (32, "032_3_1", 4896, 1930, 4910, "Fear")]
GOOD = (6, "006_1_2", 100, 101, 103, "Anger")


@pytest.fixture
def samm_root(tmp_path):
    return make_samm(tmp_path / "samm", [GOOD, *ERRATA_ROWS])


def test_errata_corrected_with_one_notice_and_recorded(samm_root):
    with pytest.warns(DatasetWarning) as rec:
        samples = load_dataset("samm", samm_root)
    by = {s.clip: s for s in samples}
    assert len(samples) == 3  # nothing dropped
    assert by["028_4_1"].apex == 1100 + (1134 - 1100) // 2 == 1117
    assert by["032_3_1"].apex == 4896 + (4910 - 4896) // 2 == 4903
    for c in ("028_4_1", "032_3_1"):
        assert by[c].apex_is_estimated and by[c].onset <= by[c].apex <= by[c].offset
        assert by[c].errata.startswith(f"apex {1143 if c == '028_4_1' else 1930} -> {by[c].apex}")
    assert by["006_1_2"].errata == "" and by["006_1_2"].apex == 101 and not by["006_1_2"].apex_is_estimated
    notes = [str(w.message) for w in rec if "errata" in str(w.message)]
    assert len(notes) == 1 and "\n" not in notes[0]
    assert "2 sample(s)" in notes[0] and "028/028_4_1 apex 1143 -> 1117 (apex after the offset (1134))" in notes[0]
    assert "--errata none" in notes[0]


def test_errata_none_reports_the_rows_as_problems(samm_root):
    with pytest.raises(DatasetError) as e:
        load_dataset("samm", samm_root, errata="none")
    msg = str(e.value)
    assert "2 problem(s) in 2 sample(s)" in msg
    assert "apex 1143 outside onset..offset 1100..1134" in msg and "apex 1930 outside onset..offset 4896..4910" in msg
    with pytest.warns(DatasetWarning, match="Excluded 2 sample"):
        samples = load_dataset("samm", samm_root, errata="none", on_error="warn")
    assert [s.clip for s in samples] == ["006_1_2"]


def test_errata_leave_a_corrected_sheet_alone(tmp_path):
    root = make_samm(tmp_path / "samm", [GOOD, (28, "028_4_1", 1100, 1120, 1134, "Anger")])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no notice at all
        samples = load_dataset("samm", root)
    assert [s.apex for s in samples] == [101, 1120] and all(s.errata == "" for s in samples)


def test_errata_do_not_touch_another_problem(tmp_path):
    """Same clip, but a different wrong value: not the erratum, reported as it is."""
    root = make_samm(tmp_path / "samm", [(28, "028_4_1", 1100, 1150, 1134, "Anger")])
    with pytest.raises(DatasetError, match="apex 1150 outside onset..offset 1100..1134"):
        load_dataset("samm", root)


def test_errata_in_the_composite(tmp_path, samm_root):
    lst = tmp_path / "list.csv"
    lst.write_text("dataset,subject,clip,label\nsamm,028,028_4_1,0\nsamm,032,032_3_1,0\n")
    with pytest.warns(DatasetWarning, match="annotation errata applied to 2 sample"):
        samples = megc2019_composite(samm=samm_root, sample_list=lst)
    assert [s.apex for s in samples] == [1117, 4903] and all(s.errata for s in samples)
    with pytest.raises(DatasetError, match="2 problem"):
        megc2019_composite(samm=samm_root, sample_list=lst, errata="none")


def test_shipped_errata_table_has_evidence():
    table = read_errata()
    keys = {(e.dataset, e.subject, e.clip, e.sheet_value) for e in table}
    assert {("samm", "028", "028_4_1", 1143), ("samm", "032", "032_3_1", 1930)} <= keys
    assert all(len(e.evidence) > 100 and e.correction == "middle" for e in table)


@pytest.mark.parametrize(
    "content, match",
    [
        ("dataset,subject\nsamm,028\n", "row 2 is malformed"),
        (
            "dataset,subject,clip,field,sheet_value,problem,correction,evidence\nsamm,028,028_4_1,onset,1,p,middle,e\n",
            "only field 'apex'",
        ),
    ],
)
def test_bad_errata_table(tmp_path, samm_root, content, match):
    p = tmp_path / "errata.csv"
    p.write_text(content)
    with pytest.raises(DatasetError, match=match):
        load_dataset("samm", samm_root, errata=p)
    with pytest.raises(DatasetError, match="cannot read the errata table"):
        load_dataset("samm", samm_root, errata=tmp_path / "absent.csv")
    with pytest.raises(ValueError, match="errata must be"):
        load_dataset("samm", samm_root, errata=3)


@pytest.mark.parametrize("column", ["Apex Frame", "Estimated Emotion", "Onset Frame"])
def test_missing_annotation_column_is_named(tmp_path, column):
    root = make_samm(tmp_path / "samm", [GOOD])
    header = [h for h in SAMM_HEADER if h != column]
    rows = [
        header,
        [
            6
            if h == "Subject"
            else {
                "Filename": "006_1_2",
                "Onset Frame": 100,
                "Apex Frame": 101,
                "Offset Frame": 103,
                "Estimated Emotion": "Anger",
            }.get(h, "")
            for h in header
        ],
    ]
    write_xlsx(root / "SAMM_Micro_FACS_Codes_v2.xlsx", rows)
    with pytest.raises(DatasetError) as e:
        load_dataset("samm", root)
    msg = str(e.value)
    canon = {"Apex Frame": "apex", "Estimated Emotion": "emotion", "Onset Frame": "onset"}[column]
    assert f"no column for '{canon}'" in msg and "\n" not in msg
    assert "Subject, Filename" in msg  # the header row it did find
