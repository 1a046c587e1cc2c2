"""What ``make generate`` derives from ``ServingOptions`` is committed up to date, and derived right.

``scripts/generate.py`` writes the chart's flag table (``templates/_flags.tpl``), the flag values of
``values.yaml`` (between markers) and of ``values.schema.json``, and ``docs/flags.md``. manifests/ has
its own staleness test (tests/test_deploy_chart.py).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from predictor.serving import options
from predictor.serving.options import VALUE_TYPES, ServingOptions

REPO = Path(__file__).resolve().parents[1]


def _load_generate() -> Any:
    spec = importlib.util.spec_from_file_location("scripts_generate", REPO / "scripts" / "generate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


generate = _load_generate()
CHART_FIELDS = [f for f in dataclasses.fields(ServingOptions) if f.metadata["chart"] is not None]


def _copy_inputs(dest: Path) -> Path:
    """The generated files' committed versions under ``dest`` (a checkout-shaped folder)."""
    for path in generate.render():
        (dest / path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / path, dest / path)
    return dest


def test_generated_files_are_up_to_date(tmp_path):
    """Regenerate into a scratch copy and compare with the committed files."""
    scratch = _copy_inputs(tmp_path)
    expected = generate.render(scratch)
    for path, text in expected.items():
        (scratch / path).write_text(text)
    problems = generate.drift({p: (scratch / p).read_text() for p in expected})
    assert not problems, "generated files are stale; run `make generate`:\n" + "\n".join(problems)


def test_a_hand_edit_of_a_generated_value_is_stale(tmp_path):
    scratch = _copy_inputs(tmp_path)
    values = scratch / generate.VALUES
    text = values.read_text()
    assert "  maxBatchSize: 32\n" in text
    values.write_text(text.replace("  maxBatchSize: 32\n", "  maxBatchSize: 16\n"))
    problems = generate.drift(generate.render(scratch), scratch)
    assert any(f"{generate.VALUES} (committed)" in p and "-  maxBatchSize: 16" in p for p in problems)


def test_hand_written_parts_are_kept(tmp_path):
    """Only the marked block of values.yaml and the marked schema properties are rewritten."""
    scratch = _copy_inputs(tmp_path)
    values = scratch / generate.VALUES
    values.write_text(values.read_text().replace('  tfLogLevel: "1"', '  tfLogLevel: "2"'))
    rendered = generate.render(scratch)
    assert '  tfLogLevel: "2"' in rendered[generate.VALUES]
    schema = json.loads(rendered[generate.SCHEMA])["properties"]["predictor"]
    assert schema["properties"]["extraArgs"]["type"] == "array"
    assert schema["required"] == ["shutdownGraceSeconds"]


def test_flag_table_rows_are_the_chart_fields():
    text = (REPO / generate.FLAGS_TPL).read_text()
    table = yaml.safe_load(text.split('define "ssd-detector.flagTable" -}}', 1)[1].split("{{- end }}")[0])
    assert [row["flag"] for row in table] == [f"--{f.name}" for f in CHART_FIELDS]
    by_flag = {row["flag"]: row for row in table}
    assert by_flag["--max_batch_size"] == {
        "value": "predictor.maxBatchSize",
        "flag": "--max_batch_size",
        "kind": "int",
        "default": 32,
    }
    assert by_flag["--score_threshold"]["kind"] == "float" and by_flag["--score_threshold"]["default"] is None
    assert (
        by_flag["--mixed_precision"]["kind"] == "string" and by_flag["--mixed_precision"]["default"] == "none"
    )
    assert (
        by_flag["--shed_standing_queue"]["kind"] == "bool"
        and by_flag["--shed_standing_queue"]["default"] is True
    )


def test_values_hold_the_server_default_or_null():
    predictor = yaml.safe_load((REPO / generate.VALUES).read_text())["predictor"]
    for f in CHART_FIELDS:
        chart = f.metadata["chart"]
        key = chart.path.removeprefix("predictor.")
        assert predictor[key] == (f.default if chart.pin or chart.required else None), key


def _probe(parse, raw: str) -> bool:
    try:
        parse(raw)
    except (ValueError, argparse.ArgumentTypeError):
        return False
    return True


@pytest.mark.parametrize("parse", list(VALUE_TYPES), ids=lambda p: p.__name__)
def test_schema_ranges_are_what_the_parse_function_accepts(parse):
    """Each bound of VALUE_TYPES (written into values.schema.json) is the parse function's own edge."""
    kind, keywords = VALUE_TYPES[parse]
    step = 1 if kind == "int" else 0.001
    if "minimum" in keywords:
        low = keywords["minimum"]
        assert _probe(parse, str(low)) and not _probe(parse, str(low - step)), (parse, low)
    if "maximum" in keywords:
        high = keywords["maximum"]
        assert _probe(parse, str(high)) and not _probe(parse, str(high + step)), (parse, high)
    if "enum" in keywords:
        assert all(_probe(parse, value) for value in keywords["enum"])
        assert not _probe(parse, "float64")
    if kind == "int":
        assert not _probe(parse, "1.5")
    if kind == "bool":
        assert (parse("true"), parse("off")) == (True, False) and not _probe(parse, "maybe")


def test_every_flag_type_has_a_chart_kind():
    for f in dataclasses.fields(ServingOptions):
        assert f.metadata["parse"] in VALUE_TYPES, f"{f.name}: add its parse function to VALUE_TYPES"


def test_help_text_unescapes_argparse_percent():
    """Help strings are argparse format strings (``%%`` for a percent sign); the docs show prose."""
    field = dataclasses.field(metadata={"help": "within 10%% of the best (%%)"})
    assert generate.help_text(field) == "within 10% of the best (%)"


def test_flag_reference_has_every_option_once():
    text = (REPO / generate.FLAGS_MD).read_text()
    rows = [line for line in text.splitlines() if line.startswith("| `--")]
    assert len(rows) == len(dataclasses.fields(ServingOptions))
    assert "| `--xla` / `--no-xla` | `SSD_XLA` | off | `predictor.xla` | Compile the model with XLA" in text
    assert (
        "| `--max_image_bytes` | `SSD_MAX_IMAGE_BYTES` | 16777216 (16 MiB) | `predictor.maxImageBytes` |"
        in text
    )
    assert options.env_name("max_batch_size") in text
