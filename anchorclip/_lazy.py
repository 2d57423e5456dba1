"""Lazy re-exports: a package `__init__` declares its public names and loads each from its module on first use.

So `import anchorclip.anchors` (or `anchorclip.evaluation`) stays light, while `from anchorclip.anchors import
Captioner` works.
"""

from __future__ import annotations

import importlib
import sys
from typing import Any


def load_public(package: str, public: dict[str, str], name: str) -> Any:
    """The module-level `__getattr__` of `package`: `name` from the module `public[name]` names."""
    if name not in public:
        raise AttributeError(f"module {package!r} has no attribute {name!r}")
    return getattr(importlib.import_module(public[name]), name)


def public_dir(package: str, public: dict[str, str]) -> list[str]:
    """The module-level `__dir__` of `package`: what it holds plus the names it loads lazily."""
    return sorted({*vars(sys.modules[package]), *public})
