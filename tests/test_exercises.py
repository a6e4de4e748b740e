"""The exercise checker passes right learner answers and catches wrong ones.

The answers in ``tests/exercise_solutions/`` are written independently of the library (plain
loops, or the computation graph step by step); each wrong one makes a single typical mistake,
either as a file of its own or as one edit of a right answer (``exercise_solutions/mistakes.py``).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from exercise_solutions.mistakes import MISTAKES, write_wrong

from npmobilenet import cli, exercises

SOLUTIONS = Path(__file__).resolve().parent / "exercise_solutions"
RIGHT = sorted(SOLUTIONS.glob("right_*.py"))
WRONG = sorted(p.stem for p in SOLUTIONS.glob("wrong_*.py")) + [f"wrong_{m}" for m in MISTAKES]


def exercise_of(path) -> str:
    stem = Path(path).stem.split("_", 1)[1]
    return next(name for name in exercises.EXERCISES if stem.startswith(name))


def test_every_exercise_has_right_and_wrong_answers_and_a_skeleton():
    names = set(exercises.EXERCISES)
    assert {exercise_of(p) for p in RIGHT} == names
    assert {exercise_of(stem) for stem in WRONG} == names
    assert {p.stem for p in exercises.SKELETONS.glob("*.py")} - {"__init__"} == names


@pytest.mark.parametrize("path", RIGHT, ids=lambda p: p.stem)
def test_checker_passes_a_right_answer(path):
    result = exercises.check(exercise_of(path), path, max_examples=40)
    assert result.passed, str(result)
    assert result.examples >= 20  # it really drew configurations


def wrong_answer(stem: str, directory: Path) -> Path:
    """The wrong answer ``stem``: its own file, or a right answer with one edit."""
    if (SOLUTIONS / f"{stem}.py").exists():
        return SOLUTIONS / f"{stem}.py"
    return write_wrong(stem.removeprefix("wrong_"), directory)


@pytest.mark.parametrize("stem", WRONG)
def test_checker_catches_a_wrong_answer(stem, tmp_path):
    path = wrong_answer(stem, tmp_path)
    name = exercise_of(path)
    result = exercises.check(name, path, max_examples=40)
    assert not result.passed
    assert result.config and result.problem and result.hint == exercises.EXERCISES[name].hint
    assert "FAILED" in str(result) and "smallest failing case" in str(result)


def test_failing_case_is_shrunk_to_the_mistake(tmp_path):
    # Ignoring the stride is only visible with stride > 1; shrinking finds the smallest such case.
    wrong = write_wrong("depthwise_forward_stride", tmp_path)
    result = exercises.check("depthwise_forward", wrong)
    assert result.config["stride"] == 2 and result.config["N"] == 1 and result.config["C"] == 1
    # Overwriting instead of accumulating dx only shows where windows overlap (stride < k).
    wrong = write_wrong("depthwise_backward_overwrite", tmp_path)
    result = exercises.check("depthwise_backward", wrong)
    assert result.config["stride"] < result.config["k"]
    assert result.problem.startswith("dx")


def test_gradient_checker_judges_gradients_on_its_own():
    # A backward that matches no reference at all is caught by the numerical check too.
    from npmobilenet.exercises import catalog, references

    cfg = {"N": 1, "C": 2, "H": 4, "W": 4, "k": 3, "stride": 1, "padding": 1, "seed": 3}
    rng, x, w = catalog.conv_inputs(cfg)
    dout = rng.standard_normal((1, 2, 4, 4))
    dx, dw = references.depthwise_conv_backward(dout, x, w, 1, 1)

    def fwd(x, w):
        return references.depthwise_conv_forward(x, w, 1, 1)

    assert catalog.gradcheck(fwd, {"x": x, "w": w}, dout, {"x": dx, "w": dw}) is None
    problem = catalog.gradcheck(fwd, {"x": x, "w": w}, dout, {"x": dx, "w": 2 * dw})
    assert problem.startswith("gradient checker:") and "'w'" in problem


def test_skeletons_fail_with_the_todo_named(tmp_path):
    for name in exercises.EXERCISES:
        path = exercises.start(name, tmp_path)
        result = exercises.check(name, path, max_examples=2)
        assert not result.passed and "TODO" in result.problem


def test_cli_list_start_check(tmp_path, capsys):
    assert cli.main(["exercise", "list"]) == 0
    listed = capsys.readouterr().out
    assert all(name in listed for name in exercises.EXERCISES)
    assert cli.main(["exercise", "start", "fold_bn", str(tmp_path)]) == 0
    assert (tmp_path / "fold_bn.py").read_text().count("TODO") >= 1
    assert cli.main(["exercise", "start", "fold_bn", str(tmp_path)]) == 2  # never overwrites
    assert "exists already" in capsys.readouterr().err
    assert cli.main(["exercise", "check", "fold_bn", str(SOLUTIONS / "right_fold_bn.py")]) == 0
    assert "passed on" in capsys.readouterr().out
    wrong = write_wrong("fold_bn_no_eps", tmp_path / "answers")
    assert cli.main(["exercise", "check", "fold_bn", str(wrong)]) == 1
    out = capsys.readouterr().out
    assert "smallest failing case: K=1, Cg=1, k=1" in out and "hint: scale = gamma" in out


def test_unknown_exercise_and_missing_file_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown exercise 'conv'"):
        exercises.check("conv", tmp_path / "x.py")
    with pytest.raises(ValueError, match="no file at"):
        exercises.check("fold_bn", tmp_path / "x.py")
    (tmp_path / "x.py").write_text("def something_else(): pass\n")
    with pytest.raises(ValueError, match=r"defines no function fold_bn\(\)"):
        exercises.check("fold_bn", tmp_path / "x.py")
