"""Package-level names imported on first use.

Every ``dimalign`` command imports the subpackages to register its
subcommands, so their ``__init__`` modules must not import torch,
torchvision or scikit-learn. They list their public names instead, and the
module that defines each name is imported when the name is first used.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def lazy_exports(
    package: str, exports: Mapping[str, str]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """Return the ``__getattr__`` and ``__dir__`` of a package with lazy names.

    Args:
        package (str): The package's ``__name__``.
        exports (Mapping[str, str]): Public name -> submodule that defines it,
            relative to the package (``"vice"`` for ``package.vice``).

    Returns:
        tuple: ``(__getattr__, __dir__)`` to assign in the package. ``dir()``
        lists the lazy names too, so tab completion finds them.

    Example:
        >>> getattr_, dir_ = lazy_exports("dimalign.io", {"load_triplets": "triplets"})
        >>> getattr_("load_triplets").__name__
        'load_triplets'
    """
    def __getattr__(name: str) -> Any:
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(f"{package}.{exports[name]}"), name)

    def __dir__() -> list[str]:
        module = importlib.import_module(package)
        return sorted(set(vars(module)) | set(exports))

    return __getattr__, __dir__
