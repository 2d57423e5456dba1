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
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_readme_first_screen_has_install_run_and_test_commands():
    first_screen = "\n".join((ROOT / "README.md").read_text().splitlines()[:20])
    assert "accelerate launch examples/run_anchor_ft.py" in first_screen
    assert "pip install" in first_screen
    assert "python -m pytest -q tests" in first_screen
    assert "python -m pytest -q tests" in (ROOT / ".ci" / "run").read_text()


def test_docs_links_resolve():
    for page in (ROOT / "docs").glob("*.md"):
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
