"""scripts/distill_table.py: the measured distillation tables of docs/distillation.md are what the
script prints from the JSON files shipped under docs/quality/distill, seeds merged into mean ± std."""

import json
import runpy
import statistics
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DISTILL = ROOT / "docs" / "quality" / "distill"


def _script():
    return runpy.run_path(str(ROOT / "scripts" / "distill_table.py"), run_name="distill_table")


def test_every_table_row_in_the_docs_is_what_the_script_prints_from_the_json():
    script = _script()
    page = (ROOT / "docs" / "distillation.md").read_text()
    for folder in (DISTILL, *sorted(DISTILL.glob("pd_*_teacher"))):
        printed = script["table"](folder) + "\n" + script["swaps_table"](folder)
        rows = [line for line in printed.splitlines() if line.startswith("| ") and "---" not in line]
        assert len(rows) > 3, folder
        missing = [r for r in rows if r not in page]
        assert not missing, f"{folder.name}: docs/distillation.md lacks {missing}"


def test_seeds_of_one_setting_print_as_their_mean_and_std():
    """The teacher's Algorithm 2 of pd_long_teacher is three sets (seeds 0-2) in one file: one row, the
    mean and the sample std of the three FDs, computed here from the file itself."""
    rows = json.loads((DISTILL / "pd_long_teacher" / "teacher_alg2.json").read_text())["rows"]
    fds = [r["fd"] for r in rows]
    assert sorted(r["seed"] for r in rows) == [0, 1, 2]
    printed = [line for line in _script()["table"](DISTILL / "pd_long_teacher").splitlines()
               if line.startswith("| teacher, Algorithm 2")]
    assert len(printed) == 1 and "3 sets (± over them)" in printed[0]
    assert f"| {statistics.mean(fds):.2f} ± {statistics.stdev(fds):.2f} |" in printed[0]


def test_teacher_alg2_copies_the_teachers_own_rows_and_refuses_another_models(tmp_path, capsys):
    """scripts/teacher_alg2.py (used by both measuring scripts) reproduces the committed teacher_alg2.json
    of pd_long_teacher from the shipped model's quality table, and refuses the previous model's table."""
    import pytest

    copy = runpy.run_path(str(ROOT / "scripts" / "teacher_alg2.py"), run_name="teacher_alg2")["main"]
    out = tmp_path / "alg2.json"
    teacher = str(ROOT / "src" / "ddpm" / "assets" / "digits")
    copy(teacher, str(ROOT / "docs" / "quality" / "digits_table.json"), str(out))
    committed = json.loads((DISTILL / "pd_long_teacher" / "teacher_alg2.json").read_text())
    assert json.loads(out.read_text())["rows"] == committed["rows"]
    with pytest.raises(SystemExit) as exit_:
        copy(teacher, str(ROOT / "docs" / "quality" / "digits_table_annealed_v1.json"), str(tmp_path / "other.json"))
    assert exit_.value.code == 2 and "not of the weights" in capsys.readouterr().err
    assert not (tmp_path / "other.json").exists()
