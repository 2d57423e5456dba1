"""`anchorclip` console script: `anchorclip train | eval | caption | retrieve [options | CONFIG.yaml]`.

Each command lives in its own module with a `main(argv)`, imported lazily so that `anchorclip --help` stays
fast. A command also runs from a YAML or JSON file of its options (`anchorclip train run.yaml`, keys named as
the flags without dashes, lists as lists); flags after the file override it (`anchorclip train run.yaml
--max_steps 3`). `accelerate launch -m anchorclip train ...` runs any command on several processes.

The built-in miniature world plugs into the commands as any user's data would: its sets are a registered
evaluation format (`miniworld:<split>` specs, `plug_in_miniworld`), imported only when a spec names it; only
`anchorclip train`'s default job (its preset) imports the world itself. The library below never imports it.
"""

from __future__ import annotations

import importlib
import json
import os
import sys

_COMMANDS = {
    "train": (
        "anchorclip.cli.train",
        "Finetune CLIP with ARF or a baseline, then evaluate it (the example's job).",
    ),
    "eval": ("anchorclip.cli.eval", "Evaluate CLIP checkpoints zero-shot on evaluation sets or suites."),
    "caption": ("anchorclip.cli.caption", "Caption an image dataset with any HF captioning model."),
    "retrieve": ("anchorclip.cli.retrieve", "Retrieve image-caption anchors from a pool for the downstream classes."),
}


# The world's format, by name: `anchorclip.miniworld` is imported on the first `miniworld:` spec, not before.
MINIWORLD_FORMAT = "anchorclip.miniworld.formats:EVAL_FORMAT"


def plug_in_miniworld() -> None:
    """Read `miniworld:<split>` specs (in `--eval_datasets`, `--eval_suite`, leakage sets) as the world's sets."""
    from anchorclip.evaluation.formats import register_eval_format

    register_eval_format("miniworld", MINIWORLD_FORMAT)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--version"]:
        from anchorclip import __version__

        print(__version__)
        return 0
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in _COMMANDS:
        print("usage: anchorclip [--version] {train,eval,caption,retrieve} [options | CONFIG.yaml [options]]\n")
        for name, (_, text) in _COMMANDS.items():
            print(f"  {name:<10} {text}")
        return 0 if not argv or argv[0] in ("-h", "--help") else 2
    command, options = argv[0], argv[1:]
    if options and options[0].endswith((".yaml", ".yml", ".json")) and not options[0].startswith("-"):
        options = config_to_argv(options[0]) + options[1:]
    module = importlib.import_module(_COMMANDS[command][0])
    result = module.main(options)
    from anchorclip.distributed import close_process_group

    close_process_group()  # the command is done on every process; a live gloo group can abort the exit
    return result if isinstance(result, int) else 0


def config_to_argv(path: str) -> list[str]:
    """The flags a YAML / JSON config file stands for: `{max_steps: 3, wise_alphas: [0.5, 1]}` ->
    `--max_steps 3 --wise_alphas 0.5 1`; `true`/`false` stay words, which every boolean flag here reads."""
    if not os.path.isfile(path):
        raise SystemExit(f"anchorclip: no config file {path!r}.")
    with open(path, encoding="utf-8") as handle:
        if path.endswith(".json"):
            config = json.load(handle)
        else:
            import yaml

            config = yaml.safe_load(handle)
    if not isinstance(config, dict):
        raise SystemExit(f"anchorclip: {path} must hold a mapping of option names to values.")
    argv = []
    for key, value in config.items():
        if value is None:
            continue
        values = value if isinstance(value, list) else [value]
        argv += [f"--{key}", *[str(v).lower() if isinstance(v, bool) else str(v) for v in values]]
    return argv


if __name__ == "__main__":
    sys.exit(main())
