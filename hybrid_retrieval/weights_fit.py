"""Whether saved weights fit the model a config builds, and the first tensor that does not.

Loading with `load_state_dict(strict=True)` refuses such weights too, but with a traceback-sized
message listing every tensor; this names one tensor, its shape in the file and in the model, and
how many more differ, so the one-line error can also say which config key shapes that tensor.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from torch import Tensor


@dataclass
class Misfit:
    tensor: str  # the first tensor that does not fit
    found: tuple | None  # its shape in the file (None: missing there)
    wanted: tuple | None  # its shape in the model (None: the model has no such tensor)
    wrong: int  # tensors of the model missing from the file or of another shape
    extra: int  # tensors of the file the model does not have

    def __str__(self) -> str:
        found = "missing" if self.found is None else self.found
        wanted = "not in this model" if self.wanted is None else self.wanted
        return (f"tensor {self.tensor!r} is {found}, the model needs {wanted} ({self.wrong} tensors do not fit, "
                f"{self.extra} unknown)")


def find_misfit(expected: Mapping[str, Tensor], found: Mapping[str, Tensor],
                skip: tuple[str, ...] = ()) -> Misfit | None:
    """The first way `found` (a file's tensors) differs from `expected` (the model's state dict),
    or None when they fit; model tensors whose names start with `skip` may be missing."""
    wrong = [k for k in expected if (k not in found and not k.startswith(skip))
             or (k in found and tuple(found[k].shape) != tuple(expected[k].shape))]
    extra = [k for k in found if k not in expected]
    if not (wrong or extra):
        return None
    first = wrong[0] if wrong else extra[0]
    return Misfit(first, tuple(found[first].shape) if first in found else None,
                  tuple(expected[first].shape) if first in expected else None, len(wrong), len(extra))
