"""Weights I/O: balancap TF1 checkpoints by variable name, the project's model directory, SavedModel export.

Project model directory layout::

    model.yaml     manifest: format, architecture config (incl. class names and default thresholds)
    weights.npz    one array per Keras variable, keyed by its path ("conv1_1/kernel"); no pickle
    VERSION        optional: the model version served (one line, ``[A-Za-z0-9][A-Za-z0-9._-]{0,63}``)

The model version (:func:`model_version`) is the ``VERSION`` file's line, else ``sha-`` and the first 12
hex digits of the SHA-256 of the weight files (``weights.npz``, or a checkpoint's ``.index`` and
``.data-*`` files): the same weights give the same version on every replica.

A balancap directory holds ``ssd_300_vgg.ckpt.index`` + ``ssd_300_vgg.ckpt.data-00000-of-00001`` (or the
512 model); :func:`load_model` recognises both layouts.
"""

from __future__ import annotations

import hashlib
import os
import re
import zipfile
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
import yaml

from predictor.ssd.config import SSDConfig, ssd300_vgg16, ssd512_vgg16
from predictor.ssd.network import build_network

MANIFEST = "model.yaml"
WEIGHTS = "weights.npz"
FORMAT = "ssd-predictor/v1"
VERSION_FILE = "VERSION"
#: What a model version may be: one URL path segment (``/v2/models/ssd/versions/{version}``), a
#: Prometheus label value, an HTTP header value.
VERSION_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
#: The version of a detector built without a model directory (tests, random weights).
UNVERSIONED = "unversioned"
_BALANCAP_CONFIGS = {"ssd_300_vgg": ssd300_vgg16, "ssd_512_vgg": ssd512_vgg16}
# Checkpoint entries that are not model weights (training bookkeeping).
_IGNORED = re.compile(r"^(global_step|.*/(ExponentialMovingAverage|Momentum|RMSProp|Adam(_1)?))$")


class ModelLoadError(ValueError):
    """A model directory or checkpoint cannot be used; the message names the file or variable."""


# --------------------------------------------------------------------------- balancap checkpoints
def balancap_variable_map(model: keras.Model, config: SSDConfig) -> dict[str, keras.Variable]:
    """Balancap checkpoint variable name -> Keras variable, for a VGG config without batch norm.

    Keras layer names encode the TF1 scopes: ``conv4_3`` -> ``conv4/conv4_3``, ``conv6`` -> ``conv6``,
    ``block8_conv3x3`` -> ``block8/conv3x3``, ``block4_box_conv_loc`` -> ``block4_box/conv_loc``,
    ``block4_box_l2norm`` -> ``block4_box/L2Normalization``.
    """
    if config.backbone != "vgg16" or config.batch_norm:
        raise ModelLoadError(f"architecture {config.name!r} has no balancap checkpoint layout")
    mapping: dict[str, keras.Variable] = {}
    for layer in model.layers:
        name = layer.name
        if m := re.fullmatch(r"conv(\d)_(\d)", name):
            scope = f"conv{m[1]}/{name}"
        elif re.fullmatch(r"conv[67]", name):
            scope = name
        elif m := re.fullmatch(r"(block\d+_box)_(conv_loc|conv_cls)", name):
            scope = f"{m[1]}/{m[2]}"
        elif m := re.fullmatch(r"(block\d+_box)_l2norm", name):
            mapping[f"{config.name}/{m[1]}/L2Normalization/gamma"] = layer.gamma
            continue
        elif m := re.fullmatch(r"(block\d+)_(conv\dx\d)", name):
            scope = f"{m[1]}/{m[2]}"
        else:
            continue
        mapping[f"{config.name}/{scope}/weights"] = layer.kernel
        mapping[f"{config.name}/{scope}/biases"] = layer.bias
    return mapping


def find_checkpoint_prefix(path: str | os.PathLike) -> str | None:
    """The TF checkpoint prefix in ``path`` (a directory or a prefix), or None when there is none."""
    p = Path(path)
    if p.is_dir():
        found = tf.train.latest_checkpoint(str(p))
        if found:
            return found
        indexes = sorted(p.glob("*.index"))
        return str(indexes[0])[: -len(".index")] if indexes else None
    return str(p) if Path(f"{p}.index").exists() else None


def checkpoint_scope(prefix: str) -> str:
    """Root variable scope of a balancap checkpoint (``ssd_300_vgg`` or ``ssd_512_vgg``)."""
    names = [n for n, _ in tf.train.list_variables(prefix)]
    scopes = {n.split("/", 1)[0] for n in names if "/" in n}
    known = scopes & set(_BALANCAP_CONFIGS)
    if len(known) != 1:
        raise ModelLoadError(
            f"checkpoint {prefix} is not a balancap SSD checkpoint: variable scopes {sorted(scopes)}, "
            f"expected one of {sorted(_BALANCAP_CONFIGS)}"
        )
    return known.pop()


def load_balancap_checkpoint(model: keras.Model, config: SSDConfig, path: str | os.PathLike) -> int:
    """Assign a balancap TF1 checkpoint to ``model`` by variable name; returns the number assigned.

    Raises ModelLoadError naming the first missing, unexpected or wrongly shaped variable.
    """
    prefix = find_checkpoint_prefix(path)
    if prefix is None:
        raise ModelLoadError(f"no TF checkpoint (*.index) found at {path}")
    try:
        reader = tf.train.load_checkpoint(prefix)
    except (tf.errors.OpError, ValueError) as e:
        raise ModelLoadError(f"cannot read checkpoint {prefix}: {e}") from e
    shapes = reader.get_variable_to_shape_map()
    mapping = balancap_variable_map(model, config)
    missing = sorted(set(mapping) - set(shapes))
    if missing:
        raise ModelLoadError(f"checkpoint {prefix} lacks variable {missing[0]} ({len(missing)} missing)")
    unexpected = sorted(n for n in set(shapes) - set(mapping) if not _IGNORED.match(n))
    if unexpected:
        raise ModelLoadError(f"checkpoint {prefix} has unexpected variable {unexpected[0]}")
    for name, var in mapping.items():
        if tuple(shapes[name]) != tuple(var.shape):
            raise ModelLoadError(
                f"checkpoint variable {name} has shape {list(shapes[name])}, "
                f"the model needs {list(var.shape)}"
            )
    for name, var in mapping.items():
        var.assign(reader.get_tensor(name).astype(np.float32))
    return len(mapping)


# --------------------------------------------------------------------------- project model directory
def save_model_dir(
    model: keras.Model, config: SSDConfig, path: str | os.PathLike, version: str | None = None, **extra
) -> Path:
    """Write ``model.yaml`` + ``weights.npz`` + ``VERSION`` into ``path``; ``extra`` keys go into the
    manifest. ``version`` defaults to the written weights' digest (:func:`write_version`)."""
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    arrays = {v.path: np.asarray(v.numpy()) for v in model.weights}
    if len(arrays) != len(model.weights):
        raise ValueError("model has duplicate variable paths; cannot save by path")
    np.savez_compressed(out / WEIGHTS, **arrays)
    manifest = {"format": FORMAT, "weights": WEIGHTS, "config": config.to_dict(), **extra}
    (out / MANIFEST).write_text(yaml.safe_dump(manifest, sort_keys=False))
    write_version(out, version)
    return out


def weight_files(path: str | os.PathLike) -> list[Path]:
    """The files holding the weights of a model directory or a balancap checkpoint (directory or prefix)."""
    p = Path(path)
    if p.is_dir() and (p / MANIFEST).exists():
        return [p / str(read_manifest(p).get("weights", WEIGHTS))]
    prefix = find_checkpoint_prefix(p)
    if prefix is None:
        raise ModelLoadError(f"{p} holds neither {MANIFEST} nor a TF checkpoint (*.ckpt.index)")
    return sorted(Path(prefix).parent.glob(Path(prefix).name + ".*"))


def weights_digest(path: str | os.PathLike) -> str:
    """``sha-`` + the first 12 hex digits of the SHA-256 over the weight files' bytes (in name order)."""
    digest = hashlib.sha256()
    for file in weight_files(path):
        try:
            with open(file, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    digest.update(chunk)
        except OSError as e:
            raise ModelLoadError(f"cannot read weights {file}: {e}") from e
    return "sha-" + digest.hexdigest()[:12]


def check_version(version: str, source: str = "model version") -> str:
    """``version`` if it matches :data:`VERSION_PATTERN`, else :class:`ModelLoadError` naming ``source``."""
    if not VERSION_PATTERN.fullmatch(version):
        raise ModelLoadError(
            f"{source}: {version[:80]!r} is not a model version (1-64 characters of A-Z a-z 0-9 . _ -, "
            "starting with a letter or digit)"
        )
    return version


def model_version(path: str | os.PathLike) -> str:
    """The version of the model at ``path``: its ``VERSION`` file's line, else :func:`weights_digest`."""
    p = Path(path)
    file = (p if p.is_dir() else p.parent) / VERSION_FILE
    if file.is_file():
        try:
            lines = file.read_text().splitlines()
        except (OSError, UnicodeDecodeError) as e:
            raise ModelLoadError(f"cannot read {file}: {e}") from e
        return check_version(lines[0].strip() if lines else "", str(file))
    return weights_digest(p)


def write_version(path: str | os.PathLike, version: str | None = None) -> str:
    """Write ``VERSION`` into the model directory ``path``: ``version``, else the weights' digest."""
    version = check_version(version) if version else weights_digest(path)
    (Path(path) / VERSION_FILE).write_text(version + "\n")
    return version


def read_manifest(path: str | os.PathLike) -> dict:
    """Read and check ``model.yaml`` of a model directory."""
    file = Path(path) / MANIFEST
    try:
        manifest = yaml.safe_load(file.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise ModelLoadError(f"cannot read model manifest {file}: {e}") from e
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ModelLoadError(f"{file} is not a {FORMAT} manifest")
    return manifest


def load_weights_npz(model: keras.Model, file: str | os.PathLike) -> None:
    """Assign ``weights.npz`` arrays to ``model`` by variable path, checking names and shapes."""
    try:
        with np.load(file, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise ModelLoadError(f"cannot read weights {file}: {e}") from e
    variables = {v.path: v for v in model.weights}
    missing = sorted(set(variables) - set(arrays))
    if missing:
        raise ModelLoadError(f"weights {file} lack variable {missing[0]} ({len(missing)} missing)")
    unexpected = sorted(set(arrays) - set(variables))
    if unexpected:
        raise ModelLoadError(f"weights {file} have unexpected variable {unexpected[0]}")
    for name, var in variables.items():
        if tuple(arrays[name].shape) != tuple(var.shape):
            raise ModelLoadError(
                f"weights variable {name} has shape {list(arrays[name].shape)}, the model needs "
                f"{list(var.shape)}"
            )
    for name, var in variables.items():
        var.assign(arrays[name])


def load_model(path: str | os.PathLike, dtype: str = "float32") -> tuple[SSDConfig, keras.Model]:
    """Load a project model directory or a balancap checkpoint (directory or prefix).

    Returns:
      ``(config, model)`` with weights assigned.
    Raises:
      ModelLoadError: one line naming what is wrong (missing path, no model, bad variable ...).
    """
    p = Path(path)
    if not p.exists() and not Path(f"{p}.index").exists():
        raise ModelLoadError(f"model path {p} does not exist")
    if p.is_dir() and (p / MANIFEST).exists():
        manifest = read_manifest(p)
        try:
            config = SSDConfig.from_dict(manifest["config"])
        except (KeyError, TypeError, ValueError) as e:
            raise ModelLoadError(f"{p / MANIFEST}: invalid architecture config: {e}") from e
        try:
            model = build_network(config, dtype=dtype)
        except (TypeError, ValueError) as e:  # e.g. a backbone option its builder does not take
            raise ModelLoadError(f"{p / MANIFEST}: invalid architecture config: {e}") from e
        load_weights_npz(model, p / str(manifest.get("weights", WEIGHTS)))
        return config, model
    prefix = find_checkpoint_prefix(p)
    if prefix is None:
        raise ModelLoadError(f"{p} holds neither {MANIFEST} nor a TF checkpoint (*.ckpt.index)")
    try:
        scope = checkpoint_scope(prefix)
    except tf.errors.OpError as e:
        raise ModelLoadError(f"cannot read checkpoint {prefix}: {e}") from e
    config = _BALANCAP_CONFIGS[scope]()
    model = build_network(config, dtype=dtype)
    load_balancap_checkpoint(model, config, prefix)
    return config, model
