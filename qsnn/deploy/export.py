"""Exporting a converted spiking network for deployment (docs/EXPORT.md).

Two formats:

* ``qsnn-int`` (:func:`export_package`): a folder with ``manifest.json`` (everything
  described in words and numbers) and ``weights.npz`` (integer arrays), readable with
  NumPy alone and runnable by :mod:`qsnn.deploy.runner`, the reference runner. It holds
  integer-only networks: INT and SG nets, and NSD nets whose hidden weights are integers.
* ``nir`` (:func:`export_nir`): the Neuromorphic Intermediate Representation. SG nets map
  exactly onto standard nodes (Conv2d / Linear / IF, one time step); NSD and INT nets
  need negative spikes and adapting thresholds, which standard NIR lacks, so their IF
  nodes carry the scheme in ``metadata`` and the graph is marked not portable.
"""

from __future__ import annotations

import io
import json
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from qsnn import __version__
from qsnn.deploy.runner import (
    FORMAT,
    MANIFEST,
    MINUS_INFINITY,
    PLUS_INFINITY,
    SCHEMA_VERSION,
    SEAL,
    WEIGHTS,
    package_digest,
)
from qsnn.errors import QsnnError, integer_in
from qsnn.io import atomic_path, folder_lock, write_bytes, write_json
from qsnn.snn import schemes
from qsnn.snn.model import OutputLayer, SpikingLayer, SpikingNet

NIR_FORMAT = "qsnn-nir"
NIR_HUGE = 2.0**62  # NIR threshold of a level that never fires (or, negated, always fires)
EXACT = 2**53  # every membrane stays below this (conversion guarantees it)

OUTPUT_RULE = (
    "non-spiking accumulator: acc (classes) starts at 0; every step acc += W @ flatten(spikes "
    "of the last hidden layer in that step) (SG: its gathered counts); prediction = argmax(acc), "
    "the first index among ties"
)
THRESHOLD_FORMULA = (
    "T(i) = table[c, i], the exact least integer membrane whose count is above i, for "
    "0 <= i < size[c]; T(i) = -inf for i < 0 and +inf for i >= size[c]; a constant channel "
    "(constant[c] >= 0) has T(i) = -inf for i < constant[c] and +inf otherwise. "
    "count(V) = #{i : V >= T(i)}. ceil((offset[c] + i * step[c]) / divisor) is a linear "
    "estimate of T(i), within (1 + i) / (2 divisor) + 1 of it (the INT paper's rounded "
    "thresholds, --threshold-scale, are exactly this formula)"
)


def smallest_int_dtype(values: np.ndarray) -> np.dtype:
    """The smallest signed integer dtype holding every value (int8 for ternary weights)."""
    low, high = (int(values.min()), int(values.max())) if values.size else (0, 0)
    for dtype in (np.int8, np.int16, np.int32, np.int64):
        info = np.iinfo(dtype)
        if info.min <= low and high <= info.max:
            return np.dtype(dtype)
    raise QsnnError("weights beyond 64-bit integers; re-convert the network")


def check_integral(net: SpikingNet) -> None:
    """Raise if ``net`` cannot be expressed as a qsnn-int package (see module docstring)."""
    scheme = schemes.of(net.scheme)
    if scheme.integer_package:
        return
    scaled = [i + 1 for i, layer in enumerate(net.layers) if layer.role == "hidden" and layer.exponent > 0]
    if scaled:
        raise QsnnError(
            f"this {scheme.title} network has real-valued hidden weights (layer(s) {scaled} on a 2^-s grid), "
            "and the qsnn-int package holds integer-weight networks; train with --ternary, "
            "or export with --format nir"
        )


def _finite(value: float) -> float | None:
    return None if not math.isfinite(value) else float(value)


def _weight_entry(key: str, weight: np.ndarray, exponent: int, arrays: dict) -> dict:
    dtype = smallest_int_dtype(weight)
    arrays[key] = weight.astype(dtype)
    return {"key": key, "dtype": dtype.name, "shape": list(weight.shape), "exponent": exponent}


def _layer_entry(net: SpikingNet, index: int, layer: SpikingLayer, arrays: dict) -> dict:
    name = f"layer{index + 1}"
    thresholds = {
        "formula": THRESHOLD_FORMULA,
        "offset": f"{name}.offset",
        "step": f"{name}.step",
        "size": f"{name}.size",
        "constant": f"{name}.constant",
        "divisor": int(layer.divisor),
        "divisor_key": f"{name}.divisor",
        "table": None,
        "threshold_scale": net.threshold_scale if index > 0 else None,
    }
    for key in ("offset", "step", "size", "constant"):
        arrays[f"{name}.{key}"] = np.asarray(getattr(layer, key), dtype=np.int64)
    arrays[f"{name}.divisor"] = np.array(layer.divisor, dtype=np.int64)
    thresholds["table"] = f"{name}.thresholds"
    arrays[f"{name}.thresholds"] = layer_table(layer)
    return {
        "name": name,
        "kind": layer.kind,
        "role": layer.role,
        "in_shape": list(layer.in_shape),
        "out_shape": list(layer.out_shape),
        "kernel": layer.kernel,
        "stride": layer.stride,
        "padding": layer.padding,
        "k": layer.k,
        "B": layer.bound,
        "levels": layer.levels,
        "weight": _weight_entry(f"{name}.weight", layer.weight, layer.exponent, arrays),
        "thresholds": thresholds,
        "count_limit": layer.count_limit,
        "input_limit": _finite(layer.input_limit),
        "neuron": schemes.of(net.scheme).neuron_rule(layer.role),
    }


def layer_table(layer: SpikingLayer) -> np.ndarray:
    """The layer's exact threshold table int64 [C, levels] with the sentinels: +inf at and
    beyond each channel's size, and constant channels written out (-inf below their
    count, +inf from it on). ``levels``: 2^k*B, or an unbounded layer's count limit + 1."""
    levels = layer.levels if layer.levels is not None else layer.count_limit + 1
    level = np.arange(levels, dtype=np.int64)[None, :]
    width = layer.table.shape[1]
    values = layer.table[:, np.minimum(level[0], width - 1)]
    values = np.where(level >= layer.size[:, None], PLUS_INFINITY, values)
    constant = layer.constant[:, None]
    return np.where(constant >= 0, np.where(level < constant, MINUS_INFINITY, PLUS_INFINITY), values).astype(np.int64)


def _output_entry(output: OutputLayer, features: int, arrays: dict) -> dict:
    return {
        "kind": "dense",
        "in_features": features,
        "classes": output.classes,
        "weight": _weight_entry("output.weight", output.weight, output.exponent, arrays),
        "input_limit": _finite(output.input_limit),
        "rule": OUTPUT_RULE,
    }


def _input_entry(net: SpikingNet) -> dict:
    return {
        "shape": list(net.input_shape),
        "layout": "CHW",
        "dtype": "uint8",
        "range": [0, 255],
        "dataset": net.source.get("dataset"),
        "preprocessing": "raw 8-bit pixels, no scaling or mean subtraction (the 1/255 scale is "
        "folded into the encoding layer's thresholds); images larger than `shape` (CIFAR "
        "32x32 for 24x24 nets) are centre-cropped to it",
    }


def _plain(value):
    """JSON for the NumPy values and paths a manifest may hold (as qsnn.io writes them)."""
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot write {type(value).__name__} as JSON")


def package_contents(net: SpikingNet, steps: int | None = None) -> tuple[dict, dict[str, np.ndarray]]:
    """The manifest (JSON-ready dict, sealed) and arrays of the qsnn-int package of ``net``.

    The seal ``manifest["sha256"]`` (:func:`qsnn.deploy.runner.package_digest`) is computed over
    the manifest as it reads back from JSON, so a reader recomputes the same digest.
    """

    check_integral(net)
    if steps is not None and not integer_in(steps, 1):
        raise QsnnError(f"steps must be a positive integer or None (run until silent), got {steps!r}")
    rules = schemes.of(net.scheme)
    if steps not in (None, 1) and rules.single_step:
        raise QsnnError(f"--steps does not apply to {rules.title} (it takes one step); drop it")
    arrays: dict[str, np.ndarray] = {}
    layers = [_layer_entry(net, i, layer, arrays) for i, layer in enumerate(net.layers)]
    features = math.prod(net.layers[-1].out_shape)
    manifest = {
        "format": FORMAT,
        "schema_version": SCHEMA_VERSION,
        "scheme": net.scheme,
        "time_steps": 1 if rules.single_step else steps,
        "time_steps_note": "null: run until a step in which no neuron spikes (that step is not "
        "counted unless it is the first); SG always takes one step",
        "input": _input_entry(net),
        "sentinels": {"plus_infinity": PLUS_INFINITY, "minus_infinity": MINUS_INFINITY},
        "neuron_model": {role: schemes.of(net.scheme).neuron_rule(role) for role in ("encoding", "hidden")},
        "layers": layers,
        "output": _output_entry(net.output, features, arrays),
        "threshold_scale": net.threshold_scale,
        "net": net.spec.to_dict(),
        "source": net.source,
        "qsnn_version": __version__,
        "spec": "docs/EXPORT.md",
    }
    manifest = json.loads(json.dumps(manifest, default=_plain))  # (as it reads back)
    manifest[SEAL] = package_digest(manifest, arrays)
    return manifest, arrays


def export_package(net: SpikingNet, out_dir: str | os.PathLike, *, steps: int | None = None) -> Path:
    """Write the qsnn-int package of ``net`` into ``out_dir``; returns the folder.

    ``steps``: time steps for NSD/INT (None: run until no neuron spikes). The weights
    file is written first, the manifest (with the seal over both) last, so a manifest
    means a complete package; :func:`qsnn.deploy.runner.load` verifies the seal. The folder is
    locked while they are written (:func:`qsnn.io.folder_lock`): two exports into it at
    once would mix the weights of one with the manifest of the other.
    """
    _check_raw_pixels(net, "a qsnn-int package")
    manifest, arrays = package_contents(net, steps)
    folder = Path(out_dir)
    if folder.exists() and not folder.is_dir():
        raise QsnnError(f"{folder} is a file; give a folder for the package (-o DIR)")
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    with folder_lock(folder, option="-o"):
        write_bytes(folder / WEIGHTS, buffer.getvalue())
        write_json(folder / MANIFEST, manifest)
    return folder


# --- NIR ------------------------------------------------------------------------------


def nir_thresholds(table: np.ndarray) -> np.ndarray:
    """Integer thresholds T (qsnn fires on V >= T) as NIR thresholds (NIR fires on v > theta).

    For integer v, v > T - 1/2 <=> v >= T; where T - 1/2 is not a float64 (|T| >= 2^52)
    T - 1 is used, which is exact too. Unreachable levels (+inf, or T >= 2^53) get
    +NIR_HUGE, always-reached ones (-inf, or T <= -2^53) -NIR_HUGE.
    """
    values = table.astype(np.float64)
    out = np.where(np.abs(values) < 2.0**52, values - 0.5, values - 1.0)
    out = np.where(table >= EXACT, NIR_HUGE, out)
    return np.where(table <= -EXACT, -NIR_HUGE, out)


def _expand_inputs(weight: np.ndarray, in_shape: tuple[int, ...], copies: int) -> np.ndarray:
    """Dense weights (O, features) over an input whose every channel became ``copies``
    binary channels: each copy gets the channel's weight (the gather, folded in)."""
    channels = in_shape[0]
    per_channel = weight.reshape(weight.shape[0], channels, -1)
    return np.repeat(per_channel, copies, axis=1).reshape(weight.shape[0], -1)


def _if_metadata(net: SpikingNet, index: int, layer: SpikingLayer, copies: int) -> dict:
    meta = {
        "qsnn_layer": f"layer{index + 1}",
        "qsnn_scheme": net.scheme,
        "qsnn_role": layer.role,
        "qsnn_channels": layer.channels,
        "qsnn_copies": copies,
        "qsnn_neuron": schemes.of(net.scheme).neuron_rule(layer.role),
    }
    if not schemes.of(net.scheme).standard_nir:
        meta.update(
            {
                "qsnn_portable": False,
                "qsnn_threshold_formula": THRESHOLD_FORMULA,
                "qsnn_offset": np.asarray(layer.offset, np.int64),
                "qsnn_step": np.asarray(layer.step, np.int64),
                "qsnn_divisor": int(layer.divisor),
                "qsnn_size": np.asarray(layer.size, np.int64),
                "qsnn_constant": np.asarray(layer.constant, np.int64),
                "qsnn_levels": -1 if layer.levels is None else layer.levels,
            }
        )
        meta["qsnn_thresholds"] = layer_table(layer)
    return meta


def nir_graph(net: SpikingNet):
    """The NIR graph of ``net`` (see the module docstring and docs/EXPORT.md)."""
    import nir

    sg = schemes.of(net.scheme).binary_copies
    nodes: dict = {"input": nir.Input(input_type=np.array(net.input_shape))}
    edges: list[tuple[str, str]] = []
    last, shape, copies_in = "input", tuple(net.input_shape), 1  # shape: with copies
    sender = tuple(net.input_shape)  # the previous layer's shape without copies

    def add(name: str, node) -> None:
        nonlocal last
        nodes[name] = node
        edges.append((last, name))
        last = name

    def flatten(name: str) -> None:
        if len(shape) > 1:
            add(name, nir.Flatten(input_type={"input": np.array(shape)}, start_dim=0, end_dim=-1))

    for index, layer in enumerate(net.layers):
        copies = layer.levels if sg else 1
        weight = layer.weight.astype(np.float64)
        tag = index + 1
        if layer.kind == "conv":
            weight = np.repeat(np.repeat(weight, copies, axis=0), copies_in, axis=1)
            add(f"conv{tag}", nir.Conv2d(
                input_shape=tuple(shape[1:]), weight=weight, stride=layer.stride,
                padding=layer.padding, dilation=1, groups=1, bias=np.zeros(weight.shape[0]),
            ))
        else:
            flatten(f"flatten{tag}")
            weight = np.repeat(_expand_inputs(weight, sender, copies_in), copies, axis=0)
            add(f"linear{tag}", nir.Linear(weight=weight))
        shape = (layer.channels * copies, *layer.out_shape[1:])
        if sg:
            levels = layer_table(layer).reshape(-1)  # copy i of channel c: T_c(i)
        else:
            levels = layer_table(layer)[:, 0]
        theta = np.broadcast_to(nir_thresholds(levels).reshape((-1,) + (1,) * (len(shape) - 1)), shape)
        add(f"if{tag}", nir.IF(
            r=np.ones(shape), v_threshold=np.array(theta), v_reset=np.zeros(shape),
            metadata=_if_metadata(net, index, layer, copies),
        ))
        copies_in, sender = copies, tuple(layer.out_shape)
    flatten("flatten_out")
    out_weight = _expand_inputs(net.output.weight.astype(np.float64), sender, copies_in)
    add("linear_out", nir.Linear(weight=out_weight))
    add("output", nir.Output(output_type=np.array([net.classes])))
    return nir.NIRGraph(nodes=nodes, edges=edges, metadata=_graph_metadata(net))


def _graph_metadata(net: SpikingNet) -> dict:
    rules = schemes.of(net.scheme)
    if rules.standard_nir:
        note = (
            "exact in float64: present the raw pixels (0..255) for ONE time step; every IF "
            "node is a bank of binary neurons (channel c's copies c*L .. c*L+L-1); the output "
            "Linear node gives integer logits, the class is their argmax"
        )
    else:
        note = (
            f"NOT portable: {rules.title} needs negative spikes and adapting thresholds, "
            "which standard NIR cannot express; the IF nodes' standard parameters only hold the "
            "first threshold T(0) - 1/2, the scheme is in their qsnn_* metadata (docs/EXPORT.md)"
        )
    return {
        "format": NIR_FORMAT,
        "scheme": net.scheme,
        "portable": rules.standard_nir,
        "time_steps": 1 if rules.single_step else -1,
        "note": note,
        "input": "raw uint8 pixel values 0..255 as float, shape (C, H, W), at t = 0 only",
        "net": net.spec.notation,
        "source": json.dumps(net.source, default=str),
    }


def _check_raw_pixels(net: SpikingNet, what: str) -> None:
    if net.spec.input_stage != "pixels":
        raise QsnnError(
            f"{what} takes raw 8-bit pixels, but this network standardizes each image first (--recipe paper "
            "on CIFAR); export a network trained on raw pixels"
        )


def export_nir(net: SpikingNet, path: str | os.PathLike) -> Path:
    """Write ``net`` as a NIR graph (HDF5) to ``path``; needs the optional ``nir`` package."""
    _check_raw_pixels(net, "a NIR export")
    return write_nir(nir_graph, net, path)


def write_nir(build: Callable, network, path: str | os.PathLike) -> Path:
    """``build(network)``, a NIR graph, written atomically to ``path``; one line where the
    optional ``nir`` package is missing."""
    try:
        import nir
    except ImportError:
        raise QsnnError("NIR export needs the nir package: pip install 'qsnn[nir]'") from None
    graph = build(network)
    with atomic_path(path) as tmp:
        nir.write(str(tmp), graph)
    return Path(path)


@dataclass(frozen=True)
class ExportFormat:
    """One export format: its name on the command line, what it writes, and its writer."""

    name: str
    writes: str  # "folder" or "file"
    takes_steps: bool  # whether --steps (the time steps recorded) applies
    write: Callable[..., Path]  # (net, out, steps) -> the path written


def _write_package(net: SpikingNet, out: str | os.PathLike, steps: int | None) -> Path:
    return export_package(net, out, steps=steps)


def _write_nir(net: SpikingNet, out: str | os.PathLike, steps: int | None) -> Path:
    return export_nir(net, out)


EXPORT_FORMATS: dict[str, ExportFormat] = {
    fmt.name: fmt
    for fmt in (
        ExportFormat("qsnn-int", "folder", takes_steps=True, write=_write_package),
        ExportFormat("nir", "file", takes_steps=False, write=_write_nir),
    )
}


def export(net: SpikingNet, fmt: str, out: str | os.PathLike, *, steps: int | None = None) -> Path:
    """``qsnn export``: write ``net`` in format ``fmt`` (:data:`EXPORT_FORMATS`)."""
    chosen = EXPORT_FORMATS.get(fmt)
    if chosen is None:
        raise QsnnError(f"unknown export format {fmt!r}: use one of {', '.join(EXPORT_FORMATS)}")
    if steps is not None and not chosen.takes_steps:
        takes = [name for name, other in EXPORT_FORMATS.items() if other.takes_steps]
        raise QsnnError(f"--steps belongs to --format {' or '.join(takes)} (a NIR graph of SG takes one step); drop it")
    return chosen.write(net, out, steps)
