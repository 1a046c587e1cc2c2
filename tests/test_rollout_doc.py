"""docs/rollout.md's commands: every ``helm upgrade --install`` is rendered (as ``helm template``) and
admitted by the platform rules, in the order and with the rollout state the page describes; the local
rehearsal's edit of the demo model still applies."""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path
from typing import Any

import k8s_admission_rules as rules
import yaml
from pinned_tools import pinned_helm

REPO = Path(__file__).resolve().parent.parent
DOC = REPO / "docs" / "rollout.md"


def bash_commands() -> list[str]:
    """Every command of the page's bash blocks, backslash continuations joined."""
    blocks = re.findall(r"```bash\n(.*?)```", DOC.read_text(), re.DOTALL)
    text = "\n".join(blocks).replace("\\\n", " ")
    return [line.strip() for line in text.splitlines() if line.strip()]


def render(command: str) -> dict[str, Any]:
    """The InferenceService that ``helm upgrade --install NAME CHART ARGS`` would apply."""
    words = shlex.split(command)
    assert words[:3] == ["helm", "upgrade", "--install"], command
    proc = subprocess.run(
        [pinned_helm(), "template", *words[3:]], cwd=REPO, capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, f"{command}\n{proc.stderr}"
    (isvc,) = [d for d in yaml.safe_load_all(proc.stdout) if d and d["kind"] == "InferenceService"]
    return isvc


def state(isvc: dict[str, Any]) -> tuple[str, str | None, int | None, str | None]:
    """(mode, the predictor's model, canary percent, the canary's model)."""
    mode = isvc["metadata"]["annotations"]["serving.kserve.io/deploymentMode"]
    predictor = isvc["spec"]["predictor"]
    model = rules.custom_storage_uri(predictor)
    if "canary" in isvc["spec"]:
        (canary,) = isvc["spec"]["canary"]
        return mode, model, canary["trafficPercent"], rules.custom_storage_uri(canary["predictor"])
    return mode, model, predictor.get("canaryTrafficPercent"), None


def test_every_helm_command_renders_is_admitted_and_does_what_the_page_says():
    commands = [c for c in bash_commands() if c.startswith("helm upgrade")]
    states = []
    for command in commands:
        isvc = render(command)
        problems = rules.admit(isvc, rules.Platform())
        assert not problems, f"{command}\n" + "\n".join(problems)
        states.append(state(isvc))
    v1, v2 = "s3://models/ssd/v1", "s3://models/ssd/v2"
    assert states == [
        ("Knative", v1, None, None),  # 3. deploy v1
        ("Knative", v2, 10, None),  # 4. Knative canary: the predictor is the new revision, 10%
        ("Standard", v1, 10, v2),  # 4. Standard canary: spec.canary beside the stable predictor
        ("Knative", v2, None, None),  # 6. promote
    ]


def test_the_rehearsal_edits_the_demo_models_threshold():
    (sed,) = [c for c in bash_commands() if c.startswith("sed ")]
    pattern = re.search(r"s/\^(.*?)\$/", sed)[1]
    manifest = (REPO / "predictor" / "models" / "demo" / "model.yaml").read_text()
    assert pattern in manifest.splitlines(), f"{sed!r} no longer matches the demo model.yaml"
