import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_api_reference_matches_docstrings():
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen_api_docs.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_readme_first_screen_has_install_run_and_test_commands():
    first_screen = "\n".join((ROOT / "README.md").read_text().splitlines()[:20])
    assert "accelerate launch examples/run_anchor_ft.py" in first_screen
    assert "pip install" in first_screen
    assert "python -m pytest -q tests" in first_screen
    assert "python -m pytest -q tests" in (ROOT / ".ci" / "run").read_text()


def test_docs_links_resolve():
    for page in [ROOT / "README.md", *(ROOT / "docs").rglob("*.md")]:
        for line in page.read_text().splitlines():
            for target in [part.split(")")[0] for part in line.split("](")[1:]]:
                if target.startswith(("http", "#")) or not target:
                    continue
                assert (page.parent / target.split("#")[0]).exists(), f"{page.name} links to missing {target}"


def test_package_map_in_docs_index_matches_the_tree():
    """Every module and folder of anchorclip/ is named in docs/index.md's map, and everything it names exists."""
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    text = (root / "docs" / "index.md").read_text()
    table = text.split("## The package at a glance")[1].split("## ")[0]
    package = root / "anchorclip"
    for path in sorted(package.rglob("*.py")):
        relative = path.relative_to(package)
        if path.name in ("__init__.py", "__main__.py"):
            continue
        if len(relative.parts) == 1:
            assert f"`{path.name}`" in table, f"{relative} is missing from the package map"
        else:
            assert f"`{relative.parts[0]}/`" in table, f"{relative.parts[0]}/ is missing from the package map"
            if relative.parts[0] in ("anchors", "evaluation", "hub") and not path.stem.startswith("_"):
                assert f"`{path.stem}`" in table, f"{relative} is missing from the package map"
    for name in re.findall(r"`([\w/]+\.py)`", table):
        assert (package / name).exists(), f"the package map names {name}, which does not exist"


# ------------------------------------------------------------------ one story: defaults and ID sets

# Pages whose prose states what the code does now (the results notebook and results files are dated records).
STORY_PAGES = ["README.md", *sorted(f"docs/{p.name}" for p in (ROOT / "docs").glob("*.md") if p.name != "api.md")]
_LITERAL = re.compile(r"^-?[\w.]+(?:e-?\d+)?$")


def _argument_dataclasses() -> list[type]:
    """The argument dataclasses whose fields are the commands' flags. The one place that imports them: when a
    class moves, update this list."""
    from transformers import TrainingArguments

    from anchorclip import AnchorTrainingArguments
    from anchorclip.cli.caption import CaptionArguments
    from anchorclip.cli.eval import EvalArguments
    from anchorclip.cli.retrieve import RetrievalArguments
    from anchorclip.cli.train import DataArguments, ModelArguments

    return [
        AnchorTrainingArguments, TrainingArguments, DataArguments, ModelArguments,
        RetrievalArguments, CaptionArguments, EvalArguments,
    ]  # fmt: skip


def _normalize(value) -> str | None:
    """A default as the docs would write it, or None when it is not a single literal (None, tuples, prose)."""
    if isinstance(value, (list, tuple)):
        return _normalize(value[0]) if len(value) == 1 else None
    if value is None or hasattr(value, "value") and not isinstance(value, (str, int, float, bool)):
        value = getattr(value, "value", None)  # enums (schedulers, strategies) as their string
    if value is None:
        return None
    if isinstance(value, bool):
        return str(value).lower()
    text = str(value).strip().strip("`").lower()
    text = {"on": "true", "off": "false", "yes": "true", "no": "false"}.get(text, text)
    try:
        return repr(float(text))
    except ValueError:
        return text if _LITERAL.match(text) else None


def true_defaults() -> dict[str, set[str]]:
    """flag name -> every default the argument dataclasses give it (a flag may be several commands')."""
    import dataclasses

    defaults: dict[str, set[str]] = {}
    for cls in _argument_dataclasses():
        for field in dataclasses.fields(cls):
            if field.default is not dataclasses.MISSING:
                value = field.default
            elif field.default_factory is not dataclasses.MISSING:
                value = field.default_factory()
            else:
                continue
            defaults.setdefault(field.name, set()).add(_normalize(value))
    return defaults


def stated_defaults(text: str, page: str) -> list[tuple[str, str, str]]:
    """`(where, flag, value)` for every default a page states in prose or in an options table (code blocks skipped)."""
    found, in_code, default_column = [], False, None
    for number, line in enumerate(text.splitlines(), 1):
        where = f"{page}:{number}"
        if line.lstrip().startswith("```"):
            in_code = not in_code
            continue
        if in_code:
            continue
        if line.startswith("|"):
            cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
            lowered = [cell.lower() for cell in cells]
            if "default" in lowered:  # a table header naming a default column
                default_column = lowered.index("default")
                continue
            flags = re.findall(r"`--([\w-]+)`", cells[0])
            if default_column is not None and len(cells) > default_column:
                flags = re.findall(r"`--([\w-]+)`", " ".join(cells[:default_column]))
                parts = [part.strip() for part in cells[default_column].split(",")]
                if len(flags) == 1:
                    parts = [cells[default_column]]
                if flags and len(parts) == len(flags):
                    for flag, part in zip(flags, parts):  # "`arf`", "1.0", "100 per class", "0 (off)"
                        leading = re.match(r"`([^`]+)`|(-?\d[\d.e-]*)(?:\s|$)|(\w+)$", part.split(" (")[0])
                        if leading:
                            found.append((where, flag, next(group for group in leading.groups() if group)))
                continue
            if len(flags) == 1:  # an options table without a default column: "(default X" in its text
                rest = "|".join(cells[1:])
                match = re.search(r"`([^`]+)` \(default\)|\(default:? `?([\w.\-/]+)`?", rest)
                if match:
                    found.append((where, flags[0], match.group(1) or match.group(2)))
                continue
        else:
            default_column = None
        patterns = [
            r"`--([\w-]+)`[^`|.;]{0,30}?\bdefault:?\s+`?([\w.\-/]+)`?",  # `--x` (λ1, default 1.0)
            r"`--([\w-]+) ([^`\s]+)`,?\s*\(?(?:the\s+)?default\b",  # `--x 0.9`, the default
            r"\bdefaults? \(`--([\w-]+) ([^`\s]+)`",  # by default (`--x 0.9`
        ]
        for pattern in patterns:
            for flag, value in re.findall(pattern, line):
                found.append((where, flag, value))
    return [(where, flag.replace("-", "_"), value) for where, flag, value in found]


def check_stated_defaults(pages: dict[str, str]) -> list[str]:
    """Every problem: a stated default the code does not have, or two pages stating different defaults."""
    truth, problems, seen = true_defaults(), [], {}
    for page, text in pages.items():
        for where, flag, value in stated_defaults(text, page):
            stated = _normalize(value)
            if flag not in truth or stated is None or truth[flag] == {None}:
                continue  # not a flag of these commands, or prose ("detected", "2 * lora_r") for a None default
            if stated not in truth[flag]:
                problems.append(f"{where}: --{flag} default {value!r}, the code's is {sorted(map(str, truth[flag]))}")
            seen.setdefault(flag, {}).setdefault(stated, []).append(where)
    for flag, values in seen.items():
        if len(values) > 1 and len(truth[flag]) == 1:
            problems.append(f"--{flag}: pages state different defaults {values}")
    return problems


def test_pages_state_the_code_defaults_and_agree():
    pages = {page: (ROOT / page).read_text() for page in STORY_PAGES}
    problems = check_stated_defaults(pages)
    assert not problems, "\n".join(problems)
    assert sum(len(stated_defaults(text, page)) for page, text in pages.items()) >= 20, "the reader found nothing"


def test_default_checker_catches_a_wrong_and_a_conflicting_default():
    truth = true_defaults()
    assert truth["diversity"] == {repr(0.9)} and truth["lambda_distill"] == {repr(0.0)}
    wrong = {"a.md": "Top k by default (`--diversity 0`, the paper's)."}
    assert any("--diversity default '0'" in p for p in check_stated_defaults(wrong))
    table = {"b.md": "| flag | default |\n|---|---|\n| `--lambda_caption`, `--lambda_pairs` | 1.0, 2.0 |\n"}
    assert any("lambda_pairs" in p for p in check_stated_defaults(table))
    assert not check_stated_defaults(
        {"c.md": "`--lambda_caption` (λ1, default 1.0) and `--diversity 0.9`, the default."}
    )


def _has_id_set(argv: list[str]) -> bool:
    from anchorclip.evaluation.suites import load_suite

    values, flag = {}, None
    for word in argv:
        if word.startswith("--"):
            flag = word.split("=")[0]
            values.setdefault(flag, [])
            if "=" in word:
                values[flag].append(word.split("=", 1)[1])
        elif flag:
            values[flag].append(word)
    if any("@id=" in spec for spec in values.get("--eval_datasets", [])):
        return True
    return any(entry.group == "id" for suite in values.get("--eval_suite", []) for entry in load_suite(suite))


def commands_without_id_set(page: str) -> list[str]:
    """The `anchorclip train` / `run_anchor_ft.py` commands of a page that train on a real dataset (not the
    miniature world) without scoring an ID set."""
    sys.path.insert(0, str(ROOT / "tests"))
    from test_docs_commands import collect

    missing = []
    for command in collect(page):
        argv = command.argv
        trains = "run_anchor_ft.py" in " ".join(argv) or any(
            a == "anchorclip" and b == "train" for a, b in zip(argv, argv[1:])
        )
        if trains and any(word.split("=")[0] == "--dataset_name" for word in argv) and not _has_id_set(argv):
            missing.append(f"{command.source}: {command.text[:120]}")
    return missing


@pytest.mark.parametrize("page", ["README.md", *STORY_PAGES[1:]])
def test_training_commands_on_real_data_score_an_id_set(page):
    missing = commands_without_id_set(page)
    assert not missing, "a training command on real data evaluates no ID set:\n" + "\n".join(missing)


def _heading_anchors(page: Path) -> set[str]:
    """GitHub's anchors of a page's headings: lower case, punctuation dropped, spaces to hyphens."""
    anchors, in_code = set(), False
    for line in page.read_text().splitlines():
        if line.startswith("```"):
            in_code = not in_code
        elif not in_code and line.startswith("#"):
            anchors.add(re.sub(r"[^\w\- ]", "", line.lstrip("#").strip().lower()).replace(" ", "-"))
    return anchors


def test_docs_link_anchors_resolve():
    for page in [ROOT / "README.md", *(ROOT / "docs").rglob("*.md")]:
        for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
            if target.startswith("http") or "#" not in target:
                continue
            file, anchor = target.split("#", 1)
            destination = page.parent / file if file else page
            if destination.suffix == ".md" and destination.exists():
                assert anchor in _heading_anchors(destination), f"{page.name} links to a missing anchor {target}"
