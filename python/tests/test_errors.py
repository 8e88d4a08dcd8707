"""Failures: kinds, lines and columns, CadError, sandbox limits, bad options."""

import doctest
import pickle

import pytest

import cadvlm
from conftest import box_program

HEADER = box_program().splitlines()[0:2]  # import + workplane


def prog(*lines):
    return "\n".join(HEADER + list(lines)) + "\n"


def test_failures_carry_kind_line_and_column():
    rep = cadvlm.execute(prog("solid = wp.moveTo(0, 0))"))
    assert rep["ok"] is False and rep["valid"] is False
    assert (rep["kind"], rep["line"], rep["column"]) == ("syntax", 3, 24)  # the second `)`
    assert rep["volume"] is None and rep["bbox"] is None
    assert rep["error"].startswith("line 3, column 24: ")
    rep = cadvlm.execute(prog("solid = wp.moveTo(0, 0).lineTo(1, 0).lineTo(1, 1).close().extrude(1"))
    assert (rep["kind"], rep["line"], rep["column"]) == ("syntax", 4, 1)  # unclosed `(`: at the line's end

    rep = cadvlm.execute(prog("x = 1", "solid = wp.box(1, 1, 1)"))
    assert rep["kind"] == "unsupported" and rep["line"] == 4
    assert rep["column"] == 12  # `box` after `solid = wp.`
    rep = cadvlm.execute(prog("solid = wp.moveTo(0, 0).lineTo(1, 0).lineTo(1, 1).close().extrude(q)"))
    assert (rep["kind"], rep["line"], rep["column"]) == ("runtime", 3, 67)  # the undefined `q`


def test_iou_raises_cad_error_naming_the_program():
    good = box_program()
    with pytest.raises(cadvlm.CadError) as e:
        cadvlm.iou(good, prog("solid = wp.box(1, 1, 1)"))
    err = e.value
    assert (err.kind, err.line, err.column, err.program) == ("unsupported", 3, 12, "b")
    assert "box" in err.message and not err.message.startswith("line")
    assert "line 3, column 12" in str(err)
    with pytest.raises(cadvlm.CadError) as e:
        cadvlm.iou("x = (", good)
    assert e.value.kind == "syntax" and e.value.program == "a" and e.value.line == 1
    # picklable with its attributes (processes, Ray)
    back = pickle.loads(pickle.dumps(err))
    assert isinstance(back, cadvlm.CadError)
    assert (back.kind, back.message, back.line, back.column, back.program) == (
        err.kind,
        err.message,
        err.line,
        err.column,
        err.program,
    )
    assert str(back) == str(err)


def test_sandbox_limits_end_in_typed_failures():
    heavy = box_program()
    rep = cadvlm.execute(heavy, fuel=1000)
    assert rep["ok"] is False and rep["kind"] == "out_of_fuel" and rep["line"] is None
    # the same program under the other backend and the defaults
    assert cadvlm.execute(heavy, sandbox="native")["volume"] == pytest.approx(8.0)
    assert cadvlm.execute(heavy, timeout_ms=5000, memory_mb=64)["volume"] == pytest.approx(8.0)
    with pytest.raises(cadvlm.CadError) as e:
        cadvlm.iou(heavy, heavy, fuel=1000)
    assert e.value.kind == "out_of_fuel" and e.value.line is None


@pytest.mark.parametrize(
    "call",
    [
        lambda: cadvlm.execute(box_program(), sandbox="docker"),
        lambda: cadvlm.execute(box_program(), memory_mb=1),
        lambda: cadvlm.execute(box_program(), timeout_ms=0),
        lambda: cadvlm.execute_many([box_program()], threads=0),
        lambda: cadvlm.iou(box_program(), box_program(), normalize="cube"),
        lambda: cadvlm.iou_many([box_program()], [], "raw"),
        lambda: cadvlm.render(box_program(), style="photo"),
        lambda: cadvlm.render(box_program(), size=4),
        lambda: cadvlm.reward(["a", "b"], ["a"]),
    ],
)
def test_bad_options_raise_value_error(call):
    with pytest.raises(ValueError):
        call()


def test_negative_numbers_raise_overflow_not_crash():
    with pytest.raises((OverflowError, TypeError)):
        cadvlm.execute(box_program(), fuel=-1)


def test_docstring_examples():
    failures, tried = doctest.testmod(cadvlm)
    assert tried >= 3 and failures == 0
