"""Type stubs of the Rust extension module ``cadvlm._native`` (use the wrappers in ``cadvlm``)."""

from typing import Any, Dict, List, Optional, Sequence, Tuple

DEFAULT_TIMEOUT_MS: int
DEFAULT_MEMORY_MB: int
DEFAULT_FUEL: int

def execute(
    code: str,
    *,
    sandbox: str = "wasm",
    timeout_ms: Optional[int] = None,
    memory_mb: Optional[int] = None,
    fuel: Optional[int] = None,
) -> Dict[str, Any]: ...
def execute_many(
    codes: Sequence[str],
    threads: Optional[int] = None,
    *,
    sandbox: str = "wasm",
    timeout_ms: Optional[int] = None,
    memory_mb: Optional[int] = None,
    fuel: Optional[int] = None,
) -> List[Dict[str, Any]]: ...
def iou(
    a: str,
    b: str,
    normalize: str = "unitcube",
    *,
    sandbox: str = "wasm",
    timeout_ms: Optional[int] = None,
    memory_mb: Optional[int] = None,
    fuel: Optional[int] = None,
) -> float: ...
def chamfer(
    a: str,
    b: str,
    *,
    sandbox: str = "wasm",
    timeout_ms: Optional[int] = None,
    memory_mb: Optional[int] = None,
    fuel: Optional[int] = None,
) -> float: ...
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
) -> List[Optional[float]]: ...
def reward(
    completions: Sequence[str],
    targets: Sequence[str],
    normalize: str = "unitcube",
    invalid: float = -0.5,
    threads: Optional[int] = None,
    *,
    sandbox: str = "wasm",
    timeout_ms: Optional[int] = None,
    memory_mb: Optional[int] = None,
    fuel: Optional[int] = None,
) -> Tuple[List[float], List[Tuple[int, str, str]]]: ...
def render(
    code: str,
    style: str = "gencad",
    size: Optional[int] = None,
    *,
    sandbox: str = "wasm",
    timeout_ms: Optional[int] = None,
    memory_mb: Optional[int] = None,
    fuel: Optional[int] = None,
) -> Tuple[int, int, bytearray]: ...
def code_from_completion(text: str) -> str: ...
