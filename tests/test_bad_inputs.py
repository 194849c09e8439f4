"""The quick cases of tools/bad_inputs.py, in CI: one stderr line, exit 2, inputs unchanged,
nothing left behind. The full replay (every subcommand, every case of issue 10) is the tool;
this runs the cases about reading models and choosing output paths."""
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))
import bad_inputs  # noqa: E402
from _bad_input_fixtures import build_fixtures  # noqa: E402

QUICK = (r"^(same_output_\w+|trailing_slash_output|output_is_a_folder|output_under_a_file)/(prune|compile)$"
         r"|^(missing|folder|corrupt|truncated|empty|text|latin1)_model/(analyze|prune)$"
         r"|^outdir_(is|under)_a_file/optimize$|^journal_line_not_an_object/optimize$|^seed_-1/(prune|optimize)$")
CASES = [c for c in bad_inputs.cases() if __import__("re").search(QUICK, c.name)]


@pytest.fixture(scope="module")
def fixtures(tmp_path_factory):
    return build_fixtures(tmp_path_factory.mktemp("bad_inputs") / "fixtures")


def test_the_quick_subset_is_not_empty():
    assert len(CASES) >= 30


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input(case, fixtures, tmp_path):
    r = bad_inputs.run_case(case, fixtures, tmp_path, timeout=120)
    assert r.code == 2, r.stderr
    assert len(r.stderr) == 1 and r.stderr[0].startswith("graphprune: error:"), r.stderr
    assert r.unchanged, "an input file changed"
    assert r.no_partial, "the command left a file behind"
