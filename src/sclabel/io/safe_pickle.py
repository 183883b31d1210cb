"""Read pickles without running their code: only listed globals may be looked up.

A pickle can call any importable function while it loads, so `pickle.load` on a file from a
user or the internet is code execution. This unpickler resolves only (module, name) pairs on
an allowlist: numpy's array reconstruction, a few builtins, and, where a caller asks for them,
class names that are *not imported* but replaced by `PickledObject`, an inert record of the
state the class would have received. Nothing else can be reached.
"""

from __future__ import annotations

import io
import pickle
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from sclabel.errors import InputError

# what plain data pickles (dicts, lists, numpy arrays and scalars) need
_DATA_GLOBALS: dict[tuple[str, str], Any] = {
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("builtins", "slice"): slice,
    ("collections", "OrderedDict"): __import__("collections").OrderedDict,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}
_multiarray = getattr(np, "_core", None) or np.core  # numpy 2 renamed numpy.core
for _core in ("numpy.core.multiarray", "numpy._core.multiarray"):  # either name in the file
    _DATA_GLOBALS[(_core, "_reconstruct")] = _multiarray.multiarray._reconstruct
    _DATA_GLOBALS[(_core, "scalar")] = _multiarray.multiarray.scalar


class PickledObject:
    """Stands in for an object of a class we refuse to import; keeps only its state."""

    pickled_class: str = ""

    def __init__(self, *args: Any, **kwargs: Any) -> None:  # for classes pickled by a call
        self.args, self.kwargs, self.state = args, kwargs, None

    def __setstate__(self, state: Any) -> None:  # for classes pickled with their __dict__
        self.state = state

    def __repr__(self) -> str:
        return f"PickledObject({self.pickled_class})"


def _record_class(qualified: str) -> type:
    return type("PickledObject", (PickledObject,), {"pickled_class": qualified})


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file, records: frozenset[str]) -> None:
        super().__init__(file)
        self._records = records

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _DATA_GLOBALS:
            return _DATA_GLOBALS[(module, name)]
        qualified = f"{module}.{name}"
        if qualified in self._records:
            return _record_class(qualified)
        msg = (
            f"refusing to load {qualified} from a pickle: it is not an allowed type, and "
            "loading it could run arbitrary code"
        )
        raise InputError(msg)


def load(path: str | Path, *, records: Iterable[str] = ()) -> Any:
    """Load a pickle of plain data; classes named in `records` come back as PickledObject."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"pickle not found: {path}")
    data = path.read_bytes()
    try:
        return _RestrictedUnpickler(io.BytesIO(data), frozenset(records)).load()
    except InputError:
        raise
    except (pickle.UnpicklingError, EOFError, AttributeError, TypeError, ValueError) as err:
        raise InputError(f"cannot read pickle {path}: {err}") from err
