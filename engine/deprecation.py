"""Old names that keep working for one release, with a ``DeprecationWarning`` (docs/glossary.md).

:func:`renamed_field` is a property that reads (and, where the type is mutable, writes) a field
under its glossary name, for types whose fields were renamed: ``Decoded.low_res`` ->
``low_res_logits`` and so on. The retired names are listed in :data:`RETIRED`;
``tests/test_vocabulary.py`` checks the code uses them nowhere else.
"""

from __future__ import annotations

import warnings
from typing import Any

# retired Python name -> glossary name (fields, attributes and local names alike)
RETIRED = {
    "low_res": "low_res_logits",
    "decoder_ms": "decode_ms",
    "upsample_ms": "postprocess_ms",
}


def warn_renamed(owner: str, old: str, new: str, stacklevel: int = 3) -> None:
    warnings.warn(f"{owner}.{old} is deprecated and goes in the next release: use {owner}.{new}",
                  DeprecationWarning, stacklevel=stacklevel)


def renamed_field(new: str, old: str, *, settable: bool = False) -> Any:
    """A property ``old`` that warns and reads (``settable``: also writes) the field ``new``."""

    def fget(self: Any) -> Any:
        warn_renamed(type(self).__name__, old, new)
        return getattr(self, new)

    def fset(self: Any, value: Any) -> None:
        warn_renamed(type(self).__name__, old, new)
        setattr(self, new, value)

    return property(fget, fset if settable else None, doc=f"Deprecated alias of ``{new}``.")
