"""cadvlm: execute, measure, compare and render CadQuery programs without CadQuery.

An exact executor of the GenCAD-Code CadQuery subset (ray-interval CSG, written in Rust), sandboxed
in WebAssembly by default (fuel, memory cap, wall-clock deadline, no files or network), so that
model-written code can be run safely and fast — e.g. as a GRPO reward:

>>> import cadvlm
>>> box = ("import cadquery as cq\\n"
...        "wp = cq.Workplane(cq.Plane(cq.Vector(0, 0, 0), cq.Vector(1, 0, 0), cq.Vector(0, 0, 1)))\\n"
...        "solid = wp.moveTo(0, 0).lineTo(2, 0).lineTo(2, 2).lineTo(0, 2).close().extrude(2)\\n")
>>> cadvlm.execute(box)["volume"]
8.0
>>> cadvlm.iou(box, box)
1.0

Every function releases the GIL while Rust works and takes only picklable arguments, so it can be
used from threads, multiprocessing pools and Ray tasks. The ``*_many`` functions and :func:`reward`
run a batch on ``threads`` threads (default: all cores).

Sandbox options (every function): ``sandbox="wasm"`` (default; for untrusted code), ``"native"``
(in-process, faster; trusted code only) or ``"cadquery"`` (real CadQuery in a subprocess, where
``import cadquery`` works); ``timeout_ms``, ``memory_mb`` and ``fuel`` bound each program (``None``:
2000 ms, 256 MiB, 2e9).
"""

from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Union
import warnings

from . import _native
from ._errors import CadError

__all__ = [
    "CadError",
    "execute",
    "execute_many",
    "iou",
    "iou_many",
    "chamfer",
    "render",
    "reward",
    "trl_reward",
    "TrlReward",
    "code_from_completion",
]

#: A completion as TRL passes it: plain text, or a conversation (a list of ``{"role", "content"}``
#: messages whose content is text or a list of ``{"type": "text", "text": ...}`` parts).
Completion = Union[str, Sequence[Mapping[str, Any]], Mapping[str, Any]]


def execute(
    code: str,
    *,
    sandbox: str = "wasm",
    timeout_ms: Optional[int] = None,
    memory_mb: Optional[int] = None,
    fuel: Optional[int] = None,
) -> Dict[str, Any]:
    """Execute one program and measure its result.

    Returns a dict: ``ok`` (it ran to a solid), ``valid`` (the solid is a valid one), ``volume``,
    ``bbox`` ([xmin, ymin, zmin, xmax, ymax, zmax]), ``n_solids``, and for a failure ``error`` (the
    message), ``kind`` (see :class:`CadError`), ``line`` and ``column`` (1-based, or ``None``); also
    ``elapsed_ms``. A failing program never raises; bad options raise ``ValueError``.
    """
    return _native.execute(
        code, sandbox=sandbox, timeout_ms=timeout_ms, memory_mb=memory_mb, fuel=fuel
    )


def execute_many(
    codes: Sequence[str],
    threads: Optional[int] = None,
    *,
    sandbox: str = "wasm",
    timeout_ms: Optional[int] = None,
    memory_mb: Optional[int] = None,
    fuel: Optional[int] = None,
) -> List[Dict[str, Any]]:
    """:func:`execute` over many programs on ``threads`` threads (default: all cores), in input order."""
    return _native.execute_many(
        list(codes), threads, sandbox=sandbox, timeout_ms=timeout_ms, memory_mb=memory_mb, fuel=fuel
    )


def iou(
    a: str,
    b: str,
    normalize: str = "unitcube",
    *,
    sandbox: str = "wasm",
    timeout_ms: Optional[int] = None,
    memory_mb: Optional[int] = None,
    fuel: Optional[int] = None,
) -> float:
    """Volumetric IoU of the solids of programs ``a`` and ``b``.

    ``normalize``: ``"unitcube"`` (each solid scaled and centred into the unit cube, as cadrille),
    ``"best"`` (CAD-Coder's IoU_best: the best over principal-axis alignments) or ``"raw"`` (as
    modelled). Raises :class:`CadError` (with ``program`` ``"a"`` or ``"b"``) when a program fails.
    """
    return _native.iou(
        a, b, normalize, sandbox=sandbox, timeout_ms=timeout_ms, memory_mb=memory_mb, fuel=fuel
    )


def chamfer(
    a: str,
    b: str,
    *,
    sandbox: str = "wasm",
    timeout_ms: Optional[int] = None,
    memory_mb: Optional[int] = None,
    fuel: Optional[int] = None,
) -> float:
    """Chamfer distance between the solids of programs ``a`` and ``b``, as cadrille and CAD-Recode
    compute it: both solids normalised into the unit cube, 8192 points uniform by area on each
    surface, the mean squared nearest-neighbour distance both ways, summed. Papers report it
    ×1000. Deterministic and symmetric; the distance of a solid to itself is the sampling floor
    (~0.5e-3 for a cube), not 0. Raises :class:`CadError` (``program`` ``"a"`` or ``"b"``) when a
    program fails.
    """
    return _native.chamfer(
        a, b, sandbox=sandbox, timeout_ms=timeout_ms, memory_mb=memory_mb, fuel=fuel
    )


def iou_many(
    preds: Sequence[str],
    targets: Sequence[str],
    normalize: str = "unitcube",
    threads: Optional[int] = None,
    *,
    sandbox: str = "wasm",
    timeout_ms: Optional[int] = None,
    memory_mb: Optional[int] = None,
    fuel: Optional[int] = None,
) -> List[Optional[float]]:
    """IoU of ``preds[i]`` against ``targets[i]`` for each i; ``None`` where either program fails.

    Each distinct target is executed once (a GRPO group shares its target).
    """
    return _native.iou_many(
        list(preds),
        list(targets),
        normalize,
        threads,
        sandbox=sandbox,
        timeout_ms=timeout_ms,
        memory_mb=memory_mb,
        fuel=fuel,
    )


def render(
    code: str,
    style: str = "gencad",
    size: int = 448,
    *,
    sandbox: str = "wasm",
    timeout_ms: Optional[int] = None,
    memory_mb: Optional[int] = None,
    fuel: Optional[int] = None,
) -> "numpy.ndarray":  # noqa: F821
    """Render a program's solid: a ``(size, size, 3)`` ``uint8`` numpy array.

    ``style="gencad"``: the GenCAD-Code images (isometric view, grey faces, black edges, white
    background); ``"multiview"``: cadrille's four views tiled 2×2. ``size`` is 8 to 8192 pixels.
    Raises :class:`CadError` when the program fails or its solid is empty.
    """
    import numpy as np

    h, w, buf = _native.render(
        code,
        style,
        size,
        sandbox=sandbox,
        timeout_ms=timeout_ms,
        memory_mb=memory_mb,
        fuel=fuel,
    )
    return np.frombuffer(buf, dtype=np.uint8).reshape(h, w, 3)


def code_from_completion(completion: Completion) -> str:
    """The program in a completion: the text of a plain or conversational completion (its last
    assistant message), then the body of its markdown code fence if it has one."""
    return _native.code_from_completion(_completion_text(completion))


def _completion_text(c: Completion) -> str:
    if isinstance(c, str):
        return c
    if isinstance(c, Mapping):  # one message
        content = c.get("content", "")
        if isinstance(content, str):
            return content
        # multimodal content: the text parts
        return "".join(
            p.get("text", "") for p in content if isinstance(p, Mapping) and p.get("type") == "text"
        )
    if isinstance(c, Sequence):  # a conversation: the last assistant message (else the last one)
        msgs = [m for m in c if isinstance(m, Mapping)]
        if not msgs:
            raise TypeError("a conversational completion must be a list of {'role', 'content'} dicts")
        answers = [m for m in msgs if m.get("role") == "assistant"] or msgs
        return _completion_text(answers[-1])
    raise TypeError(f"a completion must be a string or a list of messages, not {type(c).__name__}")


def _utf8(text: str) -> str:
    """The text, with what UTF-8 cannot encode (lone surrogates) replaced: a completion is never an error."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-8", "replace").decode("utf-8")


def reward(
    completions: Sequence[Completion],
    targets: Sequence[str],
    normalize: str = "unitcube",
    invalid: float = -0.5,
    *,
    threads: Optional[int] = None,
    sandbox: str = "wasm",
    timeout_ms: Optional[int] = None,
    memory_mb: Optional[int] = None,
    fuel: Optional[int] = None,
) -> List[float]:
    """IoU rewards of model completions against target programs (one target per completion).

    The code is taken out of a markdown fence if the completion has one; completions may be plain
    text or conversations. A completion that does not execute to a solid (syntax error, unsupported
    construct, timeout, out of memory, ...) gets ``invalid``. A target that does not execute gets
    ``invalid`` for all its completions (equal rewards: a GRPO group without signal) and a
    ``RuntimeWarning``. Programs run in the wasm sandbox by default: model output is untrusted.
    """
    texts = [_utf8(_completion_text(c)) for c in completions]
    rewards, bad_targets = _native.reward(
        texts,
        list(targets),
        normalize,
        float(invalid),
        threads,
        sandbox=sandbox,
        timeout_ms=timeout_ms,
        memory_mb=memory_mb,
        fuel=fuel,
    )
    if bad_targets:
        i, kind, msg = bad_targets[0]
        warnings.warn(
            f"cadvlm.reward: {len(bad_targets)} completion(s) have a target that does not execute "
            f"(first: #{i}, {kind}: {msg}); they get the invalid reward {invalid}",
            RuntimeWarning,
            stacklevel=2,
        )
    return rewards


class TrlReward:
    """A TRL ``GRPOTrainer`` reward function: ``f(completions, **columns) -> list[float]``.

    The target of each completion is the dataset column ``target_column``, which TRL passes as a
    keyword argument. Picklable (a plain object), so it can be sent to other processes.
    """

    def __init__(
        self,
        target_column: str = "cadquery",
        normalize: str = "unitcube",
        invalid: float = -0.5,
        **options: Any,
    ) -> None:
        self.target_column = target_column
        self.normalize = normalize
        self.invalid = invalid
        self.options = options
        # TRL logs each reward under its function's __name__
        self.__name__ = f"cadvlm_iou_{normalize}"

    def __call__(self, completions: Sequence[Completion], **columns: Any) -> List[float]:
        if self.target_column not in columns:
            raise KeyError(
                f"cadvlm reward: no column {self.target_column!r} among the reward's keyword "
                f"arguments ({', '.join(sorted(columns)) or 'none'}); pass target_column=..."
            )
        return reward(
            completions,
            list(columns[self.target_column]),
            self.normalize,
            self.invalid,
            **self.options,
        )

    def __repr__(self) -> str:
        return (
            f"TrlReward(target_column={self.target_column!r}, normalize={self.normalize!r}, "
            f"invalid={self.invalid!r})"
        )


def trl_reward(
    target_column: str = "cadquery",
    normalize: str = "unitcube",
    invalid: float = -0.5,
    **options: Any,
) -> Callable[..., List[float]]:
    """A reward function for TRL's ``GRPOTrainer(reward_funcs=[...])``: IoU of each completion's code
    against the row's ``target_column`` program (see :func:`reward`; ``options``: ``threads``,
    ``sandbox``, ``timeout_ms``, ``memory_mb``, ``fuel``)."""
    return TrlReward(target_column, normalize, invalid, **options)
