"""`anchorclip` console script: `anchorclip caption ...`, `anchorclip retrieve ...`.

Each subcommand lives in its own module with a `main(argv)`; they are imported lazily so that
`anchorclip --help` stays fast. `accelerate launch -m anchorclip caption ...` works too (see __main__.py).
"""

from __future__ import annotations

import importlib
import sys

_COMMANDS = {
    "caption": ("anchorclip.captioning", "Caption an image dataset with any HF captioning model."),
    "retrieve": ("anchorclip.retrieval", "Retrieve image-caption anchors from a pool for the downstream classes."),
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in _COMMANDS:
        print("usage: anchorclip {caption,retrieve} [options]\n")
        for name, (_, text) in _COMMANDS.items():
            print(f"  {name:<10} {text}")
        return 0 if not argv or argv[0] in ("-h", "--help") else 2
    module = importlib.import_module(_COMMANDS[argv[0]][0])
    return module.main(argv[1:]) or 0


if __name__ == "__main__":
    sys.exit(main())
