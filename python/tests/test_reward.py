"""The GRPO reward: fences, hostile programs, TRL's calling convention (plain and conversational)."""

import os
import pickle

import pytest

import cadvlm
from conftest import box_program

HOSTILE = [
    "import os\nos.system('touch pwned_by_system')\n",
    "open('pwned_by_open', 'w').write('x')\n",
    "__import__('os').makedirs('pwned_dir')\n",
    "import subprocess\nsubprocess.run(['sh', '-c', 'echo x > pwned_sub'])\n",
    "exec(\"open('pwned_exec', 'w')\")\n",
    "while True:\n    pass\n",
    "x = 'a' * 10**10\n",
    "x = " + "(" * 100_000 + "1" + ")" * 100_000 + "\n",
    "x = [1] * 10**9\n",
    "import cadquery as cq\n" + "# pad\n" * 2_000_000,  # 12 MB of program
    "def f():\n    return f()\nf()\n",
    "import cadquery as cq\nsolid = cq.Workplane(cq.Plane(cq.Vector(0,0,0), cq.Vector(1,0,0), cq.Vector(0,0,1)))"
    + ".moveTo(0,0).lineTo(1e300, 0).lineTo(1, 1).close().extrude(1e308)\n",
    "\x00\x01\x02 \ud800 garbage",  # NUL bytes and a lone surrogate (not encodable as UTF-8)
    "",
    "```python\n```",
]


def test_reward_takes_code_out_of_fences():
    target = box_program(1, 2, 3)
    fenced = f"Here is the part:\n```python\n{target}```\nIt is a box."
    other = box_program(1, 2, 6)
    r = cadvlm.reward([target, fenced, other, "```py\nnot valid python(", "no code at all"], [target] * 5)
    assert r[0] == pytest.approx(1.0) and r[1] == pytest.approx(1.0)
    # unit-cube normalisation scales each solid to the unit cube: the taller box is the same shape
    # only if its proportions are; 1×2×6 vs 1×2×3 gives the IoU of the normalised boxes
    assert r[2] == pytest.approx(cadvlm.iou(other, target, "unitcube"))
    assert r[3] == -0.5 and r[4] == -0.5
    assert cadvlm.code_from_completion(fenced) == target
    raw = cadvlm.reward([other], [target], normalize="raw", invalid=-1.0)
    assert raw == [pytest.approx(0.5)]


def test_hostile_programs_get_the_invalid_reward_and_write_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    target = box_program()
    pwned = lambda: {n for d in (tmp_path, "/tmp", os.path.expanduser("~")) for n in os.listdir(d) if "pwned" in n}
    assert not pwned()
    rewards = cadvlm.reward(HOSTILE, [target] * len(HOSTILE), invalid=-0.5, threads=2)
    assert rewards == [-0.5] * len(HOSTILE)
    # the same through the native backend's parser, and one at a time through execute
    for h in HOSTILE[:8]:
        rep = cadvlm.execute(h)
        assert rep["ok"] is False and rep["kind"] in {
            "syntax", "unsupported", "runtime", "budget", "no_result", "invalid_geometry",
            "out_of_fuel", "out_of_memory", "timeout",
        }, rep
    assert os.listdir(tmp_path) == [] and not pwned()


def test_reward_of_a_failing_target_is_invalid_with_a_warning():
    with pytest.warns(RuntimeWarning, match="target"):
        r = cadvlm.reward([box_program(), box_program()], [box_program(), "x = ("], invalid=-2.0)
    assert r == [pytest.approx(1.0), -2.0]


def test_trl_reward_with_conversational_completions():
    f = cadvlm.trl_reward()  # target column "cadquery", unit-cube IoU, -0.5 for invalid code
    targets = [box_program(1, 1, 1), box_program(1, 1, 1), box_program(2, 1, 1)]
    completions = [
        [{"role": "assistant", "content": f"```python\n{targets[0]}```"}],
        [{"role": "assistant", "content": [{"type": "text", "text": "def broken(:"}]}],
        [{"role": "assistant", "content": box_program(1, 1, 1)}],
    ]
    prompts = [[{"role": "user", "content": "Write the CadQuery code of this part."}]] * 3
    out = f(
        prompts=prompts,
        completions=completions,
        completion_ids=[[1, 2]] * 3,
        cadquery=targets,
        deepcad_id=["a", "b", "c"],
        trainer_state=None,
    )
    assert isinstance(out, list) and all(isinstance(x, float) for x in out)
    assert out[0] == pytest.approx(1.0) and out[1] == -0.5
    assert out[2] == pytest.approx(cadvlm.iou(targets[0], targets[2]))
    assert 0.0 < out[2] < 1.0
    assert f.__name__ == "cadvlm_iou_unitcube"
    # plain completions, another column, picklable (sent to worker processes)
    g = pickle.loads(pickle.dumps(cadvlm.trl_reward(target_column="code", normalize="raw", invalid=-1.0)))
    assert g(completions=["x = (", targets[0]], code=targets[:2]) == [-1.0, pytest.approx(1.0)]
    with pytest.raises(KeyError, match="cadquery"):
        f(completions=["x"], prompts=["p"])
