"""scripts/real_results_figure.py: the README's real-data figure is drawn from the committed result files,
its numbers are the ones the README's table quotes, and a missing file is named."""

import json
import re
import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "benchmarks" / "results"

# figure row -> the start of the README table row that quotes the same runs
README_ROWS = {
    "released structure, dim 32": "| released HTNet structure at CPU size",
    "working HTNet (htnet_small)": "| working HTNet",
    "+ LAPE": "| + LAPE (",
    "+ LAPE + agent attention": "| + LAPE + agent attention",
    "ESAAT k = 1": "| ESAAT k = 1",
    "paper's chain: ESAAT k = 1 + DDPM": "| **the paper's chain**",
}


def test_the_figure_draws_the_committed_results_that_the_readme_quotes(load_script, tmp_path):
    mod = load_script("real_results_figure")
    assert mod.main(["--out", str(tmp_path)]) == 0
    assert (tmp_path / "real-summary.png").stat().st_size > 20_000
    data = json.loads((tmp_path / "real-summary.json").read_text())
    rows = {r["label"]: r for r in data["rows"]}
    # the floor and one row recomputed from their files
    floor = json.loads((RESULTS / mod.FLOOR).read_text())
    (loso,) = [r for r in floor["results"] if r["input"] == "flow" and r["protocol"] == "loso"]
    assert data["floor"]["uf1"] == loso["runs"][0]["scores"]["all"]["uf1"]
    abl = json.loads((RESULTS / mod.LOSO).read_text())["rows"]
    scaled = [r["uf1"] for r in abl if r["config"] == "released_scaled"]
    assert len(scaled) == 3 and rows["released structure, dim 32"]["honest"]["per_seed"] == scaled
    # the README's table quotes the same means and standard deviations
    text = (ROOT / "README.md").read_text()
    readme = text[text.index("### Micro-expression recognition on real data") :].split("\n### ")[0].splitlines()
    for label, start in README_ROWS.items():
        (line,) = [x for x in readme if x.startswith(start)]
        honest = rows[label]["honest"]
        mean, std = (float(v) for v in re.search(r"\| \**([0-9.]+) ± ([0-9.]+)\** \|", line).groups())
        assert (round(honest["mean"], 3), round(honest["std"], 3)) == (mean, std), label
    full = rows[next(k for k in rows if k.startswith("released HTNet, full size"))]
    assert full["oracle"]["mean"] > full["floor_same_clips"] > full["honest"]["mean"]  # the finding it shows


def test_a_missing_result_file_is_named(load_script, tmp_path, capsys):
    mod = load_script("real_results_figure")
    results = tmp_path / "results"
    for rel in (mod.LOSO, mod.ESAAT, mod.FLOOR, mod.FULL):  # the DDPM table left out
        (results / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(RESULTS / rel, results / rel)
    assert mod.main(["--results", str(results), "--out", str(tmp_path / "out")]) == 1
    assert f"{results / mod.DDPM}: not found" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
