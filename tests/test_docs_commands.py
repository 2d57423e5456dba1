"""Executable docs: every shell command in README.md, docs/*.md and the example's docstring runs in CI.

Collected: ```bash / ```sh / ```shell / ```console blocks (console: the `$ ` lines), indented blocks that
start with a known program, and inline `python <repo script>` / `bash <repo script>` spans. `\\`
continuations are joined, comments dropped, `&&` / `;` chains split. Each command then meets the first
matching row of RULES: run (with the stand-ins of tests/standins.py and a tiny budget), parse-only (its own
parser checks the flags, see tests/parse_only.py) or skip. A command no rule knows fails the test, so a
new docs command cannot escape. A doc marks a block that cannot run offline with
`<!-- docs-test: parse-only (why) -->` on the line before it.

Commands run page by page in a temporary copy of the stand-in world (so `openai/clip-vit-base-patch16`,
`imagenet-1k`, ... are local folders), in the page's order: a page's later command reads what an earlier
one wrote (the recipes' caption -> retrieve -> train). Paths a page's commands write to start absent.
`accelerate launch` runs on the CPU: a config or flags asking for N > 1 processes get 2 gloo processes
(`--multi_gpu`), otherwise 1; the config's other keys (mixed precision, distributed type) are kept.
"""

from __future__ import annotations

import ast
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from helpers import free_port

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = "examples/run_anchor_ft.py"
PAGES = ["README.md", *sorted(f"docs/{p.name}" for p in (ROOT / "docs").glob("*.md")), EXAMPLE]
SHELL_FENCES = {"bash", "sh", "shell", "console"}
PROGRAMS = {"python", "accelerate", "anchorclip", "torchrun", "pip", "bash", "hf", "ls"}  # starts of indented commands
MARKER = re.compile(r"<!--\s*docs-test:\s*parse-only\b")
INLINE = re.compile(r"`((?:python|bash) (?:benchmarks|scripts|examples)/[^`]+)`")

RUN, PARSE, SKIP = "run", "parse-only", "skip"
# First match wins; the pattern is searched in the command without its leading VAR=value assignments.
RULES = [
    (r"^pip install ", SKIP, "installs packages; CI installs the package itself, a test must not"),
    (r"^python -m pytest\b", SKIP, "the test suite this test belongs to (.ci/run runs it)"),
    (r"^hf ", PARSE, "needs a Hub login and network: `hf <subcommand> --help` checks the subcommand"),
    (r"^python benchmarks/flops\.py\b", RUN, "arithmetic only, seconds"),
    (r"^python benchmarks/", PARSE, "measures for minutes to hours, writes docs/results/ (see test_benchmarks_smoke)"),
    (r"^python scripts/gen_api_docs\.py\b", PARSE, "rewrites docs/api.md; tests/test_docs.py runs its --check"),
    (r"^python scripts/(pretrain_miniclip|train_minicaptioner)\.py\b", PARSE, "retrains a shipped model (30+ min)"),
    (r"^bash benchmarks/gpu_check\.sh\b", PARSE, "needs a GPU; even --cpu-smoke takes ~3 min: bash -n + known flags"),
    (r"^(accelerate launch .*|python )examples/run_anchor_ft\.py\b", RUN, "stand-ins, --max_steps 2, tiny batch, CPU"),
    (r"^(accelerate launch .*-m |python -m )?anchorclip (caption|retrieve)\b", RUN, "stand-in models and data"),
    (r"^(accelerate launch .*-m |python -m )?anchorclip train\b", RUN, "the example's job: its budget, CPU"),
    (r"^(accelerate launch .*-m |python -m )?anchorclip eval\b", RUN, "stand-in checkpoints and sets, CPU"),
    (
        r"^sbatch examples/multinode/slurm\.sbatch (caption|train)\b",
        RUN,
        "two loopback 'nodes': tests/fake_slurm/ stands in for srun and scontrol",
    ),
    (r"^ls ", RUN, "checks that a path the docs show exists"),
]
# Appended to a run (later flags win in argparse and HfArgumentParser).
EXAMPLE_BUDGET = [
    "--max_steps", "2", "--per_device_train_batch_size", "4", "--per_device_eval_batch_size", "64",
    "--save_strategy", "no", "--report_to", "none", "--use_cpu", "--dataloader_num_workers", "0",
    "--logging_steps", "1", "--caption_batch_size", "16",
    # 1,000 ImageNet classes x the 80 OpenAI templates cost ~25 s of CPU per evaluation and process: the runs
    # use the 7 simple ones; test_documented_template_sets_exist checks the documented names.
    "--eval_templates", "simple",
]  # fmt: skip
MINIWORLD_BUDGET = ["--miniworld_fraction", "0.02"]  # the default world, when no --dataset_name is given
CAPTION_BUDGET = ["--max-new-tokens", "8", "--num-workers", "0", "--no-progress", "--no-resume"]
# The stand-in CLIP has random weights: most image pairs sit above the default leakage cosine (0.95), so a guard
# over the 16 sets the ImageNet recipe is scored on would leave no pool image; 0.99 keeps a few.
RETRIEVE_BUDGET = ["--batch_size", "64", "--num_workers", "0", "--recall_queries", "16", "--leakage_threshold", "0.99"]
EVAL_BUDGET = [
    "--per_device_eval_batch_size", "64", "--dataloader_num_workers", "0", "--use_cpu", "--eval_templates", "simple",
]  # fmt: skip
# A suite's sets fix their own templates (imagenet-ood: OpenAI's 80 over 1,000 classes, ~22 s of CPU per set and
# evaluation here): a run's `--eval_suite` is replaced by a copy whose `openai_imagenet` sets use one template
# (see budget_suite); names, class subsets, formats and every other template set stay as shipped.
BUDGET_TEMPLATES = ["a photo of a {}."]
TIMEOUT_S = 300


@dataclass
class Command:
    source: str  # "docs/recipes.md:12"
    argv: list[str]  # leading VAR=value assignments included
    parse_only: bool = False  # marked in the doc

    @property
    def text(self) -> str:
        return shlex.join(self.argv)


# ------------------------------------------------------------------ collecting


def split_commands(lines: list[str], source: str, parse_only: bool = False) -> list[Command]:
    """Shell lines -> commands: continuations joined, comments dropped, `&&` / `;` chains split."""
    logical, current = [], ""
    for line in lines:
        current += line.rstrip()
        if current.endswith("\\"):
            current = current[:-1] + " "
            continue
        logical.append(current)
        current = ""
    commands = []
    for line in logical + [current]:
        argv = []
        lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
        lexer.whitespace_split, lexer.commenters = True, "#"
        for token in [*lexer, "&&"]:
            if token in ("&&", ";"):
                if argv:
                    commands.append(Command(source, argv, parse_only))
                argv = []
            else:
                argv.append(token)
    return commands


def _indented_blocks(lines: list[str]):
    """(line index, lines) of indented code blocks (after a blank line) whose first word is a program."""
    i = 0
    while i < len(lines):
        if lines[i].startswith("    ") and lines[i].strip() and (i == 0 or not lines[i - 1].strip()):
            start = i
            while i < len(lines) and (lines[i].startswith("    ") or not lines[i].strip()):
                i += 1
            block = [line[4:] for line in lines[start:i] if line.strip()]
            first = block[0].removeprefix("$ ").split()[0]
            if first in PROGRAMS or re.match(r"[A-Z_]+=", first):
                yield start, [line.removeprefix("$ ") for line in block]
        else:
            i += 1


def collect_markdown(text: str, name: str, first_line: int = 1) -> list[Command]:
    lines = [""] * (first_line - 1) + text.splitlines()
    commands, prose, i = [], [], 0
    while i < len(lines):
        fence = re.match(r"\s*```(\w*)", lines[i])
        if not fence:
            prose.append(lines[i])
            i += 1
            continue
        start, lang = i, fence.group(1)
        i += 1
        while i < len(lines) and not lines[i].strip().startswith("```"):
            i += 1
        body = lines[start + 1 : i]
        i += 1
        prose += [""] * (i - start)  # a fence is never part of an indented block; keeps line numbers
        if lang in SHELL_FENCES:
            if lang == "console":
                body = [line[2:] for line in body if line.startswith("$ ")]
            before = [line for line in lines[:start] if line.strip()][-1:]
            marked = bool(before and MARKER.search(before[0]))
            commands += split_commands(body, f"{name}:{start + 1}", marked)
    for start, block in _indented_blocks(prose):
        commands += split_commands(block, f"{name}:{start + 1}")
    for number, line in enumerate(prose, 1):
        for span in INLINE.findall(line):
            commands += split_commands([span], f"{name}:{number}")
    return commands


def collect(page: str) -> list[Command]:
    text = (ROOT / page).read_text()
    if page.endswith(".py"):  # the module docstring
        node = ast.parse(text).body[0]
        return collect_markdown(ast.get_docstring(ast.parse(text), clean=True) or "", page, node.lineno)
    return collect_markdown(text, page)


def rule_for(command: Command) -> tuple[str, str, str]:
    """(pattern, action, why) of the first matching rule; a doc's parse-only marker turns run into parse-only."""
    words = list(command.argv)
    while words and re.match(r"[A-Z_][A-Z0-9_]*=", words[0]):
        words.pop(0)
    line = " ".join(words)
    if set(words) & {"|", "||", ">", ">>", "<", "(", ")", "&"}:
        return "", "", ""  # pipes, redirections, subshells: run them as separate commands instead
    for pattern, action, why in RULES:
        if re.search(pattern, line):
            if action == RUN and command.parse_only:
                return pattern, PARSE, "marked parse-only in the doc"
            return pattern, action, why
    return "", "", ""


ALL = {page: collect(page) for page in PAGES}
FILE_BLOCK = re.compile(r"#\s*(\S+\.(?:ya?ml|json))\s*$")


def doc_files(page: str) -> dict[str, str]:
    """Files a page shows and its commands read: a ```yaml block whose first line is `# NAME.yaml`."""
    files, lines = {}, (ROOT / page).read_text().splitlines()
    for i, line in enumerate(lines[:-1]):
        named = FILE_BLOCK.fullmatch(lines[i + 1].strip())
        if re.match(r"\s*```ya?ml\s*$", line) and named:
            end = next(j for j in range(i + 1, len(lines)) if lines[j].strip().startswith("```"))
            files[named.group(1)] = "\n".join(lines[i + 1 : end]) + "\n"
    return files


# ------------------------------------------------------------------ rewriting a command for this machine


def _env_and_words(argv: list[str]) -> tuple[dict, list[str]]:
    env, words = {}, list(argv)
    while words and re.match(r"[A-Z_][A-Z0-9_]*=", words[0]):
        key, _, value = words.pop(0).partition("=")
        env[key] = value
    return env, words


def _repo_paths(words: list[str]) -> list[str]:
    """examples/..., benchmarks/..., scripts/... are the repository's files whatever the working directory."""
    return [str(ROOT / w) if w.split("/")[0] in ("examples", "benchmarks", "scripts") else w for w in words]


def _launcher(launch_args: list[str], workdir: Path) -> list[str]:
    """`accelerate launch` flags for this CPU machine (see the module docstring)."""
    from accelerate.commands.launch import launch_command_parser

    args = launch_command_parser().parse_args([*launch_args, "x.py"])
    flags = ["--num_machines", "1", "--dynamo_backend", "no", "--main_process_port", str(free_port())]
    processes, mixed = args.num_processes or 1, args.mixed_precision or "no"
    if args.config_file:
        config = yaml.safe_load(open(args.config_file))
        processes, mixed = config.get("num_processes", 1), config.get("mixed_precision", "no")
        config.update(num_processes=min(processes, 2), mixed_precision=mixed)
        config.pop("gpu_ids", None)
        if processes == 1:
            config["distributed_type"] = "NO"
        (workdir / "accelerate_config.yaml").write_text(yaml.safe_dump(config))
        flags += ["--config_file", str(workdir / "accelerate_config.yaml")]
    flags += ["--num_processes", str(min(processes, 2)), "--mixed_precision", mixed]
    return flags + (["--multi_gpu"] if processes > 1 else [])


def _options(words: list[str], cwd: Path) -> list[str]:
    """A subcommand's options as it will see them: a leading config file (`anchorclip eval run.yaml`) expanded."""
    from anchorclip.cli import config_to_argv

    if words and words[0].endswith((".yaml", ".yml", ".json")) and not words[0].startswith("-"):
        return config_to_argv(str(cwd / words[0])) + words[1:]
    return words


def budget_suite(suite: str, scratch: Path, cwd: Path) -> str:
    """A copy of `suite` (shipped name or YAML file under `cwd`) with BUDGET_TEMPLATES for `openai_imagenet`.

    A user's file is copied beside itself (its relative data paths keep working), a shipped suite into
    `scratch` (its names, subsets and templates files are found in the shipped folders either way)."""
    from anchorclip.evaluation.suites import SUITES_DIR

    path = cwd / suite
    target = path.with_name(f"{path.stem}.budget{path.suffix}")
    if not path.is_file():
        path, target = Path(SUITES_DIR) / f"{suite}.yaml", scratch / f"{suite}.budget.yaml"
    data = yaml.safe_load(path.read_text())
    for entry in data["sets"]:
        if entry.get("templates") == "openai_imagenet":
            entry["templates"] = BUDGET_TEMPLATES
    target.write_text(yaml.safe_dump(data, sort_keys=False))
    return str(target)


def to_run(words: list[str], scratch: Path, cwd: Path) -> list[str]:
    """A documented run command -> the argv that runs it here (in `cwd`), with the budget appended."""
    words = _repo_paths(words)
    if words[:2] == ["accelerate", "launch"]:
        at = next(i for i, w in enumerate(words) if w == "-m" or w.endswith(".py"))
        prefix = [sys.executable, "-m", "accelerate.commands.launch", *_launcher(words[2:at], scratch)]
        words = words[at:]
    elif words[0] == "python":
        prefix, words = [sys.executable], words[1:]
    elif words[0] == "anchorclip":
        prefix, words = [sys.executable, "-m"], words
    elif words[0] == "sbatch":  # the batch script itself, its srun and scontrol stood in by tests/fake_slurm/
        prefix, words = ["bash"], words[1:]
    else:
        return words  # ls
    if words[0].endswith("run_anchor_ft.py"):
        budget = EXAMPLE_BUDGET + ([] if "--dataset_name" in words else MINIWORLD_BUDGET)
    elif "caption" in words[:3]:
        budget = CAPTION_BUDGET
    elif "retrieve" in words[:3]:
        budget = RETRIEVE_BUDGET
    elif "train" in words[:3] or "eval" in words[:3]:
        command = "train" if "train" in words[:3] else "eval"
        options = _options(words[words.index(command) + 1 :], cwd)
        budget = list(EVAL_BUDGET if command == "eval" else EXAMPLE_BUDGET)
        if command == "train" and not {"--dataset_name", "--dataset-name"} & set(options):
            budget += MINIWORLD_BUDGET
        suites = [v for f, v in zip(options, options[1:]) if f in ("--eval_suite", "--eval-suite")]
        if suites:
            budget += ["--eval_suite", budget_suite(suites[-1], scratch, cwd)]
    else:
        budget = []
    return [*prefix, *words, *budget]


def slurm_env(base_env: dict) -> dict:
    """A two-node SLURM job on this host: fake srun/scontrol first on PATH, every node at 127.0.0.1."""
    return {
        "PATH": os.pathsep.join([str(ROOT / "tests" / "fake_slurm"), base_env.get("PATH", "")]),
        "SLURM_JOB_NUM_NODES": "2", "SLURM_JOB_NODELIST": "node[0-1]", "MAIN_PROCESS_PORT": str(free_port()),
        "LAUNCH": str(ROOT / "examples" / "multinode" / "launch.sh"), "PYTHON": sys.executable,
    }  # fmt: skip


def to_parse(words: list[str]) -> list[str]:
    words = _repo_paths(words)
    trains = ("anchorclip", "train") in zip(words, words[1:]) or (words[0] == "sbatch" and words[2:3] == ["train"])
    if trains or any(w.endswith("run_anchor_ft.py") for w in words):
        words = [*words, "--use_cpu"]  # no GPU here: `--bf16` is validated against the device at parse time
    return words


def _outputs(commands: list[Command]) -> set[str]:
    out = set()
    for command in commands:
        for flag, value in zip(command.argv, command.argv[1:]):
            if flag in ("--output_dir", "--output-dir"):
                out.add(value)
    return out


def _crash_report(stderr: str, size: int = 4000) -> str:
    """The tail of `stderr`, after the first crash report in it (a traceback, or the stack faulthandler prints for a
    process killed by a signal) when the launcher's own report and the other process's output push that out."""
    found = [at for at in (stderr.find("Fatal Python error"), stderr.find("Traceback")) if at >= 0]
    first = min(found, default=len(stderr))
    head = stderr[first : first + size] + "\n[...]\n" if first < len(stderr) - size else ""
    return head + stderr[-size:]


# ------------------------------------------------------------------ fixtures


@pytest.fixture(scope="session")
def world(tmp_path_factory):
    import torch
    from standins import build_world

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return build_world(tmp_path_factory.mktemp("docs-world"))
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def base_env(tmp_path_factory):
    cache = tmp_path_factory.mktemp("docs-cache")
    env = dict(os.environ)
    env.update(
        HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_HOME=str(cache / "hf"),
        ANCHORCLIP_CACHE=str(cache / "anchorclip"), OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false",
        PYTHONPATH=os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]),
        # A process killed by a signal then prints its stack (`_crash_report` keeps it in the failure message).
        PYTHONFAULTHANDLER="1",
    )  # fmt: skip
    return env


# ------------------------------------------------------------------ tests


def test_collector_reads_every_form():
    page = "\n".join([
        "```bash", "# a comment", "anchorclip caption --dataset d \\", "    --model m  # trailing", "```",
        "<!-- docs-test: parse-only (needs the Hub) -->", "", "```sh", "pip install x && ls out; hf auth login", "```",
        "```console", "$ python -m pytest -q tests", "passed", "```", "```python", "print('not shell')", "```",
        "", "    L = L_cls + L_caption", "", "prose", "", "    accelerate launch examples/run_anchor_ft.py", "",
        "Run `python benchmarks/flops.py --batch 8` first; `anchorclip caption` alone is prose.",
    ])  # fmt: skip
    commands = collect_markdown(page, "page.md")
    assert [(c.text, c.parse_only) for c in commands] == [
        ("anchorclip caption --dataset d --model m", False),
        ("pip install x", True), ("ls out", True), ("hf auth login", True),
        ("python -m pytest -q tests", False),
        ("accelerate launch examples/run_anchor_ft.py", False),
        ("python benchmarks/flops.py --batch 8", False),
    ]  # fmt: skip
    assert [c.source for c in commands][:2] == ["page.md:1", "page.md:8"]


def test_every_documented_command_has_a_rule():
    assert sum(map(len, ALL.values())) > 20, "the collector found (almost) no commands"
    unknown = [f"{c.source}: {c.text}" for commands in ALL.values() for c in commands if not rule_for(c)[1]]
    assert not unknown, "commands no rule knows how to run (add a rule or a parse-only marker):\n" + "\n".join(unknown)


def test_documented_template_sets_exist():
    from anchorclip.templates import resolve_templates

    flags = ("--eval_templates", "--train_templates", "--templates", "--retrieval_templates")
    values = {v for cs in ALL.values() for c in cs for f, v in zip(c.argv, c.argv[1:]) if f in flags}
    assert values, "no documented template set found"
    for value in values:
        assert resolve_templates(value), value


@pytest.mark.slow
def test_commands_parse_with_their_own_parsers(tmp_path, base_env):
    """Parse-only commands, and run commands as written (without the budget), through their own parsers."""
    checks = {c.text: to_parse(_env_and_words(c.argv)[1]) for cs in ALL.values() for c in cs if rule_for(c)[1] != SKIP}
    for page in PAGES:  # config files the docs show (`anchorclip eval run.yaml`)
        for name, text in doc_files(page).items():
            (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / name).write_text(text)
    # The checker itself must catch a renamed flag, or a pass below would mean nothing.
    canary = ["accelerate", "launch", str(ROOT / EXAMPLE), "--no_such_flag", "1"]
    result = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "parse_only.py"), json.dumps([*checks.values(), canary])],
        cwd=tmp_path, env=base_env, capture_output=True, text=True, timeout=TIMEOUT_S,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    verdicts = json.loads(result.stdout.strip().splitlines()[-1])
    assert "--no_such_flag" in verdicts.pop(shlex.join(canary))
    failed = [
        f"{text}\n    {verdicts[shlex.join(a)]}" for text, a in checks.items() if verdicts[shlex.join(a)] != "ok"
    ]
    assert not failed, "documented flags that their parser rejects:\n" + "\n".join(failed)


def _runs() -> dict[str, list[Command]]:
    """Run commands by page; a command already run on an earlier page (the quickstart) runs once."""
    seen, runs = set(), {}
    for page, commands in ALL.items():
        new = [c for c in commands if rule_for(c)[1] == RUN and c.text not in seen]
        seen.update(c.text for c in new)
        if new:
            runs[page] = new
    return runs


RUNS = _runs()


@pytest.mark.slow
@pytest.mark.parametrize("page", list(RUNS))
def test_documented_commands_run(page, world, base_env, tmp_path):
    workdir = tmp_path / "cwd"
    shutil.copytree(world, workdir)
    commands = RUNS[page]
    for output in _outputs(commands):  # what the page builds must be built by the page
        shutil.rmtree(workdir / output, ignore_errors=True)
    for name, text in doc_files(page).items():  # the config files it shows
        (workdir / name).parent.mkdir(parents=True, exist_ok=True)
        (workdir / name).write_text(text)
    for command in commands:
        env, words = _env_and_words(command.argv)
        if words[0] == "sbatch":
            env |= slurm_env(base_env)
        argv = to_run(words, tmp_path, workdir)
        result = subprocess.run(
            argv, cwd=workdir, env={**base_env, **env}, capture_output=True, text=True, timeout=TIMEOUT_S
        )
        assert result.returncode == 0, (
            f"{command.source}: {command.text}\nran as: {shlex.join(argv)}\n"
            f"{result.stdout[-2000:]}\n{_crash_report(result.stderr)}"
        )
