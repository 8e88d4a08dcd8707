"""The exception of a failed CadQuery program (raised by the Rust extension)."""

from typing import Optional


class CadError(Exception):
    """A program failed to execute, to measure or to render.

    Attributes:
        kind: the failure's stable name: ``syntax``, ``unsupported``, ``runtime``,
            ``invalid_geometry``, ``budget``, ``no_result`` (the executor's own), or ``out_of_fuel``,
            ``out_of_memory``, ``timeout``, ``crash`` (the sandbox's).
        message: what went wrong, without the location.
        line, column: 1-based place of the construct it names, or ``None`` (sandbox failures).
        program: which program failed where a call takes two (``"a"`` or ``"b"`` for :func:`iou`).
    """

    def __init__(
        self,
        kind: str,
        message: str,
        line: Optional[int] = None,
        column: Optional[int] = None,
        program: Optional[str] = None,
    ) -> None:
        self.kind = kind
        self.message = message
        self.line = line
        self.column = column
        self.program = program
        where = f"line {line}, column {column}: " if line is not None else ""
        which = f"program {program}: " if program is not None else ""
        super().__init__(f"{which}{kind}: {where}{message}")

    def __reduce__(self):
        # picklable with its attributes (multiprocessing and Ray send exceptions between processes)
        return (CadError, (self.kind, self.message, self.line, self.column, self.program))
