"""Parse a documented command's flags with the command's own parser, without running it.

    python tests/parse_only.py '[["python", "benchmarks/robustness.py", "--jobs", "2"], ...]'

prints one JSON object, {"<command>": "ok" | "<error>"}. Python targets (a script, `-m module`, the
`anchorclip` console script, each under `accelerate launch` or not) run up to their argument parsing:
`argparse.ArgumentParser.parse_args` and `HfArgumentParser.parse_args_into_dataclasses` (dataclass
validation included) return, then stop the target. An unknown, renamed or badly typed flag is the parser's
own error. `accelerate launch` flags go through accelerate's launch parser; `hf ...` through
`hf <subcommands> --help`; `bash script.sh --flag` through `bash -n` and the script's `case` patterns.
One process checks every command: interpreter start and imports are paid once.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import runpy
import shlex
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_parse_args = argparse.ArgumentParser.parse_args  # the original, for accelerate's own parser


class Parsed(Exception):
    """Raised right after the target parsed its arguments."""


def _stop_after_parsing() -> None:
    from transformers import HfArgumentParser

    into_dataclasses = HfArgumentParser.parse_args_into_dataclasses

    def parse_args(self, *args, **kwargs):
        _parse_args(self, *args, **kwargs)
        raise Parsed

    def parse_args_into_dataclasses(self, *args, **kwargs):
        into_dataclasses(self, *args, **kwargs)
        raise Parsed

    argparse.ArgumentParser.parse_args = parse_args
    HfArgumentParser.parse_args_into_dataclasses = parse_args_into_dataclasses


def _run_python(argv: list[str]) -> None:
    """argv after `python`: `script.py args` or `-m module args`."""
    module = argv[0] == "-m"
    target, args = (argv[1], argv[2:]) if module else (argv[0], argv[1:])
    saved = sys.argv, list(sys.path)
    sys.argv = [target, *args]
    errors = io.StringIO()
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(errors):
            if module:
                runpy.run_module(target, run_name="__main__", alter_sys=True)
            else:
                sys.path.insert(0, os.path.dirname(os.path.abspath(target)))
                runpy.run_path(target, run_name="__main__")
    except Parsed:
        return
    except SystemExit as exit:  # argparse's error, with its message
        raise RuntimeError(f"exit {exit.code} while parsing: {errors.getvalue()[-600:].strip()}") from None
    finally:
        sys.argv, sys.path[:] = saved
    raise RuntimeError("ran to the end without parsing arguments")


def _accelerate(argv: list[str]) -> None:
    from accelerate.commands.launch import launch_command_parser

    try:
        args = _parse_args(launch_command_parser(), argv)
    except SystemExit:
        raise RuntimeError("accelerate launch rejected its flags") from None
    if args.config_file and not os.path.isfile(args.config_file):
        raise RuntimeError(f"no accelerate config {args.config_file}")
    target = [args.training_script, *args.training_script_args]
    _run_python(["-m", *target] if args.module else target)


def check(argv: list[str]) -> None:
    if argv[:2] == ["accelerate", "launch"]:
        _accelerate(argv[2:])
    elif argv[0] == "python":
        _run_python(argv[1:])
    elif argv[0] == "anchorclip":
        _run_python(["-m", *argv])
    elif argv[0] == "hf":
        subcommands = [a for a in argv[1:] if not a.startswith("-")][:2]
        result = subprocess.run(["hf", *subcommands, "--help"], capture_output=True, text=True, timeout=60)
        if result.returncode:
            raise RuntimeError(f"`hf {' '.join(subcommands)}` is not an hf command: {result.stderr[-300:]}")
    elif argv[0] == "bash":
        subprocess.run(["bash", "-n", argv[1]], check=True, timeout=60)
        text = open(argv[1]).read()
        unknown = [flag for flag in argv[2:] if flag.startswith("-") and f"{flag})" not in text]
        if unknown:
            raise RuntimeError(f"{argv[1]} has no case for {unknown}")
    elif argv[0] == "sbatch":  # examples/multinode/slurm.sbatch <anchorclip command>: the script, then the command
        subprocess.run(["bash", "-n", argv[1]], check=True, timeout=60)
        _run_python(["-m", "anchorclip", *argv[2:]])
    elif argv[0] != "ls":  # ls: nothing to parse; the run checks the path
        raise RuntimeError(f"no parser known for {argv[0]!r}")


def main(commands: list[list[str]]) -> dict[str, str]:
    _stop_after_parsing()
    results = {}
    for argv in commands:
        try:
            check(argv)
            results[shlex.join(argv)] = "ok"
        except Exception as error:  # one bad command must not hide the others
            results[shlex.join(argv)] = f"{type(error).__name__}: {error}"
    return results


if __name__ == "__main__":
    print(json.dumps(main(json.loads(sys.argv[1]))))
