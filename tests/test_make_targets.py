"""The Makefile's layout: every target in the Makefile or in the mk/<topic>.mk of its topic, once, and
listed by `make help` (the self-documenting Makefile of the `helm create`/KServe servers' habit)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MAKEFILES = [REPO / "Makefile", *sorted((REPO / "mk").glob("*.mk"))]
TARGET = re.compile(r"^([a-zA-Z0-9_.-]+):(?!=)")

#: A recipe running this belongs to that file's topic.
TOPICS = {
    "-m bench.": "mk/bench.mk",
    "bench/gpu_check.sh": "mk/bench.mk",
    "-m predictor.tools.": "mk/model.mk",
    "$(HELM) ": "mk/deploy.mk",
    "$$engine ": "mk/image.mk",
    "-m pytest -q tests/test_fuzz.py": "Makefile",
}


def targets() -> dict[str, list[tuple[str, str]]]:
    """``{target: [(file relative to the repo, recipe text), ...]}`` of every named target."""
    found: dict[str, list[tuple[str, str]]] = {}
    for path in MAKEFILES:
        lines = path.read_text().splitlines()
        for i, line in enumerate(lines):
            match = TARGET.match(line)
            if not match or match[1].startswith("."):
                continue
            recipe = []
            for body in lines[i + 1 :]:
                if not body.startswith("\t"):
                    break
                recipe.append(body)
            found.setdefault(match[1], []).append((str(path.relative_to(REPO)), "\n".join(recipe)))
    return found


def test_every_target_is_defined_once_and_listed_by_make_help():
    proc = subprocess.run(["make", "-s", "help"], cwd=REPO, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    listed = re.findall(r"^  (\S+)", re.sub(r"\x1b\[[0-9;]*m", "", proc.stdout), re.MULTILINE)
    found = targets()
    assert len(found) > 30, "the parser found too few targets"
    for target, places in found.items():
        assert len(places) == 1, f"{target} is defined in {[f for f, _ in places]}"
    assert sorted(listed) == sorted(found), "`make help` must list each target exactly once"


def test_each_target_lives_in_the_file_of_its_topic():
    for target, [(where, recipe)] in targets().items():
        for marker, home in TOPICS.items():
            if marker in recipe:
                assert where == home, f"{target} runs {marker!r}: it belongs in {home}, not {where}"
