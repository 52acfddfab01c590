"""mer.evaluation on its own: no import of the training package, the selection label from the folds."""

import subprocess
import sys

from mer.evaluation import selection_of


def test_evaluation_does_not_import_training():
    code = "import sys, mer.evaluation; print(sorted(m for m in sys.modules if m.startswith('mer.train')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_selection_comes_from_the_folds():
    fixed = {"selection": "fixed budget (30 epochs, last epoch)", "valid_estimate": True}
    oracle = {"selection": "ORACLE", "valid_estimate": False}
    assert selection_of([fixed, fixed]) == ("fixed budget (30 epochs, last epoch)", True)
    assert selection_of([fixed, oracle]) == ("fixed budget (30 epochs, last epoch) + ORACLE", False)
