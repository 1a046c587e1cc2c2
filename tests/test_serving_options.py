"""One owner of the serving defaults: :class:`predictor.serving.options.ServingOptions`.

The command line is built from it (every flag's default and help come from its field), and the
automatic values (0: sized from the container's cgroup limits) are filled by one function.
"""

from __future__ import annotations

import dataclasses

import pytest

from predictor.protocol import wire
from predictor.serving import resources
from predictor.serving.options import (
    AUTOMATIC,
    ServingOptions,
    build_parser,
    env_name,
    resolve_automatic,
)
from predictor.serving.resources import Limits

FIELDS = dataclasses.fields(ServingOptions)


@pytest.fixture
def no_ssd_env(monkeypatch):
    for f in FIELDS:
        monkeypatch.delenv(env_name(f.name), raising=False)
    return monkeypatch


def test_every_flag_default_is_the_options_default(no_ssd_env):
    """A flag whose default is written anywhere else than its field (a ``set_defaults``, a second
    ``add_argument``) parses to something else here."""
    args = build_parser().parse_args([])
    disagreeing = {
        f.name: (getattr(args, f.name), f.default) for f in FIELDS if getattr(args, f.name) != f.default
    }
    assert not disagreeing, f"flag defaults (parsed, ServingOptions) disagree: {disagreeing}"


def test_wire_defaults_are_the_servers(no_ssd_env):
    """The model name and ports the client, bench and tools assume (:mod:`predictor.protocol.wire`) are
    what a server started without flags uses (the ports are KServe's parser defaults)."""
    args = build_parser().parse_args([])
    assert (args.model_name, args.http_port, args.grpc_port) == (
        wire.MODEL_NAME,
        wire.DEFAULT_HTTP_PORT,
        wire.DEFAULT_GRPC_PORT,
    )
    assert ServingOptions.from_args(args) == ServingOptions()


def test_the_parser_has_one_flag_per_option_and_no_other_ssd_flag():
    parser = build_parser()
    ours = {a.dest for g in parser._action_groups if g.title == "SSD predictor" for a in g._group_actions}
    kserve_owned = {f.name for f in FIELDS if f.metadata["kserve"]}
    assert ours == {f.name for f in FIELDS} - kserve_owned
    dests = {a.dest for a in parser._actions}
    assert kserve_owned <= dests, "ServingOptions names a KServe flag the parser does not have"


@pytest.mark.parametrize("f", FIELDS, ids=lambda f: f.name)
def test_every_flag_help_names_its_environment_variable(f):
    (action,) = [a for a in build_parser()._actions if a.dest == f.name]
    assert f"Env {env_name(f.name)}." in action.help
    assert action.help.startswith(f.metadata["help"])


def test_environment_sets_the_default_and_the_command_line_wins(no_ssd_env):
    no_ssd_env.setenv("SSD_DECODE_THREADS", "3")
    no_ssd_env.setenv("SSD_MODEL_NAME", "detector")
    no_ssd_env.setenv("SSD_XLA", "true")
    args = build_parser().parse_args(["--decode_threads", "5"])
    assert (args.decode_threads, args.model_name, args.xla) == (5, "detector", True)


@pytest.mark.parametrize(("name", "raw"), [("SSD_MAX_BATCH_SIZE", "0"), ("SSD_REQUEST_TIMEOUT_S", "soon")])
def test_a_bad_environment_value_names_the_variable(no_ssd_env, name, raw):
    no_ssd_env.setenv(name, raw)
    with pytest.raises(SystemExit, match=f"{name}={raw!r}"):
        build_parser()


def test_options_from_args_carry_every_flag(no_ssd_env):
    args = build_parser().parse_args(["--decode_threads", "7", "--no-xla", "--mixed_precision", "bfloat16"])
    options = ServingOptions.from_args(args, "/models/ssd")
    assert (options.decode_threads, options.xla, options.dtype) == (7, False, "mixed_bfloat16")
    assert options.model_dir == "/models/ssd"


def test_grpc_limit_defaults_to_the_request_limit():
    assert ServingOptions(max_request_bytes=1000).grpc_limit == 1000
    assert ServingOptions(max_request_bytes=1000, grpc_max_receive_message_length=10).grpc_limit == 10


def test_resolve_automatic_sizes_the_zero_fields_from_the_limits():
    limits = Limits(2.5, "test", 16, 8 * 2**30, "test")  # 3 usable CPUs, 8 GiB
    options, filled = resolve_automatic(ServingOptions(tf_inter_op_threads=5), limits)
    assert filled == [name for name in AUTOMATIC if name != "tf_inter_op_threads"]
    assert options.decode_threads == resources.default_decode_threads(limits) == 3
    assert (options.tf_intra_op_threads, options.tf_inter_op_threads) == (3, 5)
    assert options.max_inflight_bytes == resources.default_inflight_bytes(limits) == 2**29
    again, none = resolve_automatic(options, limits)
    assert again == options and none == []


def _readme_flag_defaults() -> dict[str, str]:
    """``--flag`` -> the default cell of the flag reference table (docs/flags.md, which the README links)."""
    import re
    from pathlib import Path

    readme = (Path(__file__).resolve().parent.parent / "docs" / "flags.md").read_text()
    rows = re.findall(r"^\| (`--[^|]+)\| `SSD_\w+`[^|]*\| ([^|]+) \|", readme, re.MULTILINE)
    return {flag: cell.strip() for flags, cell in rows for flag in re.findall(r"`--(\w+)`", flags)}


def _stated_default(cell: str) -> object:
    """A README default cell as a value, or None when it is prose (``the model's (0.45)``)."""
    first = cell.split()[0].strip("`:")
    if first in ("off", "on"):
        return first == "on"
    if first == "none":
        return "none"
    try:
        return float(first)
    except ValueError:
        return None


def test_readme_flag_table_states_the_options_defaults():
    """The flag reference (generated by scripts/generate.py, read back here independently): every option
    has a row and its stated default is the field's."""
    table = _readme_flag_defaults()
    missing = sorted(f.name for f in FIELDS if f.name not in table and not f.metadata["kserve"])
    assert not missing, f"options without a row in the README's flag table: {missing}"
    checked = 0
    for f in FIELDS:
        stated = _stated_default(table.get(f.name, "prose"))
        if stated is not None:
            assert stated == f.default, (
                f"README says --{f.name} defaults to {table[f.name]!r}, not {f.default!r}"
            )
            checked += 1
    assert checked >= 15, table
