"""The converted spiking network as data: its layers, output accumulator and file format.

A :class:`SpikingNet` holds, per layer, the weights on an integer grid and each
channel's exact threshold table (:mod:`qsnn.snn.convert` makes them), the output
accumulator, the scheme, the trained model's own parameters (so that the exact ANN,
:mod:`qsnn.snn.exact`, can check any simulation independently of the tables) and the
provenance. ``save``/``load`` write and read the ``.npz`` file (format ``qsnn-snn``,
version 2): a JSON manifest plus arrays, checked for structure on load.
"""

from __future__ import annotations

import functools
import json
import math
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from qsnn.errors import QsnnError, integer_in
from qsnn.io import content_digest, write_sealed_npz
from qsnn.net.models import NetSpec, QuantizedNet
from qsnn.net.quantization import max_count
from qsnn.snn.neurons import Thresholds
from qsnn.snn.schemes import SCHEMES

FORMAT = "qsnn-snn"
FORMAT_VERSION = 2
EXACT_LIMIT = 2.0**53  # float64 holds every integer below this exactly
PIXEL_LEVELS = 255  # x = p / 255 for 8-bit images
COUNT_LIMIT = 1023  # unbounded layers: a count beyond this is refused at run time
PIXEL_HEADROOM = 2.0  # pixels may reach 2x their range under multiplicative noise


@dataclass
class SpikingLayer:
    """One spiking layer: integer weights, geometry, and its threshold table."""

    kind: str  # "conv" or "dense"
    role: str  # "encoding" or "hidden"
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    kernel: int
    stride: int
    padding: int
    k: int
    bound: int | None
    weight: np.ndarray  # int64 W_int; the real weights are W_int * 2^-exponent
    exponent: int  # s
    offset: np.ndarray  # int64 [C]: A of the linear estimate (A + i D) / S of T(i)
    step: np.ndarray  # int64 [C]: D
    divisor: int  # S
    table: np.ndarray  # int64 [C, width]: T(i), exact, for i < size (see qsnn.snn.exact)
    size: np.ndarray  # int64 [C]: levels at or above are out of reach
    constant: np.ndarray  # int64 [C], -1 = input-driven
    input_limit: float  # largest input (count or pixel) for which the membrane is exact
    count_limit: int  # largest count this layer may reach (next layer's inputs are checked)
    snapped: bool = False  # True if some weight bits below 2^-s were dropped
    # the exact tables of the quantized ANN, kept only when the SNN uses other ones
    # (--threshold-scale): (offset, step, divisor, table, size)
    ann_thresholds: tuple[np.ndarray, np.ndarray, int, np.ndarray, np.ndarray] | None = None

    @property
    def levels(self) -> int | None:
        return max_count(self.k, self.bound)

    @property
    def neurons(self) -> int:
        return math.prod(self.out_shape)

    @property
    def channels(self) -> int:
        return self.out_shape[0]

    @functools.cached_property
    def largest_row_sum(self) -> float:
        """max over neurons of sum |W_int|: a membrane's magnitude per unit of input."""
        return float(np.abs(self.weight.reshape(self.weight.shape[0], -1)).sum(axis=1).max(initial=0))

    def thresholds(self, ann: bool = False) -> Thresholds:
        """The SNN's threshold tables, or with ``ann`` the quantized ANN's exact ones."""
        offset, step, divisor, table, size = self.offset, self.step, self.divisor, self.table, self.size
        if ann and self.ann_thresholds is not None:
            offset, step, divisor, table, size = self.ann_thresholds
        return Thresholds(
            torch.from_numpy(offset),
            torch.from_numpy(step),
            divisor,
            torch.from_numpy(size),
            torch.from_numpy(self.constant),
            torch.from_numpy(table),
        )


@dataclass
class OutputLayer:
    """The non-spiking accumulator: logits_int = W_int * counts of the last hidden block."""

    weight: np.ndarray  # int64 (classes, features)
    exponent: int
    input_limit: float
    snapped: bool = False

    @property
    def classes(self) -> int:
        return int(self.weight.shape[0])


@dataclass
class SpikingNet:
    """A converted network: spiking layers, output accumulator, scheme and provenance."""

    scheme: str
    layers: list[SpikingLayer]
    output: OutputLayer
    spec: NetSpec
    threshold_scale: int | None = None
    source: dict = field(default_factory=dict)  # checkpoint path, sha256, dataset, accuracy
    # the trained model's own parameters (its state_dict): the definition that the exact
    # ANN (qsnn.snn.exact.ExactANN) evaluates, independently of the tables above
    model_state: dict[str, np.ndarray] = field(default_factory=dict)
    model_eps: list[float] = field(default_factory=list)  # each block's batch-norm eps

    def source_model(self) -> QuantizedNet:
        """The trained quantized network this SNN was converted from (eval mode, CPU)."""
        model = QuantizedNet(self.spec)
        model.load_state_dict({key: torch.from_numpy(np.array(value)) for key, value in self.model_state.items()})
        for block, eps in zip(model.blocks, self.model_eps, strict=True):
            block.norm.eps = eps
        return model.eval()

    @property
    def input_shape(self) -> tuple[int, ...]:
        return self.layers[0].in_shape

    @property
    def classes(self) -> int:
        return self.output.classes

    def thresholds(self, index: int) -> Thresholds:
        return self.layers[index].thresholds()

    def describe(self) -> str:
        scale = "" if self.threshold_scale is None else f", thresholds rounded to 1/{self.threshold_scale}"
        return f"{self.scheme.upper()} SNN of {self.spec.describe()}{scale}"

    # --- file format: one .npz with a JSON manifest, readable with NumPy alone ---------

    def save(self, path: str | Path) -> None:
        arrays: dict[str, np.ndarray] = {}
        layers = []
        for index, layer in enumerate(self.layers):
            meta = {
                key: getattr(layer, key)
                for key in (
                    "kind", "role", "in_shape", "out_shape", "kernel", "stride", "padding",
                    "k", "bound", "exponent", "divisor", "input_limit", "count_limit", "snapped",
                )
            }
            meta["levels"] = layer.levels
            layers.append(meta)
            for name in ("weight", "offset", "step", "table", "size", "constant"):
                arrays[f"layer{index}.{name}"] = getattr(layer, name)
            if layer.ann_thresholds is not None:
                ann_offset, ann_step, divisor, ann_table, ann_size = layer.ann_thresholds
                arrays[f"layer{index}.ann_offset"], arrays[f"layer{index}.ann_step"] = ann_offset, ann_step
                arrays[f"layer{index}.ann_table"], arrays[f"layer{index}.ann_size"] = ann_table, ann_size
                meta["ann_divisor"] = divisor
        arrays["output.weight"] = self.output.weight
        for key, value in self.model_state.items():
            arrays[f"model.{key}"] = value
        manifest = {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "scheme": self.scheme,
            "threshold_scale": self.threshold_scale,
            "net": self.spec.to_dict(),
            "source": self.source,
            "model_eps": self.model_eps,
            "layers": layers,
            "output": {
                "exponent": self.output.exponent,
                "input_limit": self.output.input_limit,
                "snapped": self.output.snapped,
                "classes": self.output.classes,
            },
        }
        write_sealed_npz(path, manifest, arrays, default=_json_number)

    @classmethod
    def load(cls, path: str | Path) -> SpikingNet:
        path = Path(path)
        if path.is_dir():
            raise QsnnError(f"{path} is a folder; give a converted network file (the .npz `qsnn convert` writes)")
        if not path.is_file():
            raise QsnnError(f"no converted network at {path}: create one with `qsnn convert CHECKPOINT -o {path}`")
        try:
            with np.load(path, allow_pickle=False) as data:
                if "manifest" not in data.files and any(name.endswith("data.pkl") for name in data.files):
                    raise QsnnError(
                        f"{path} is a training checkpoint, not a converted network; "
                        f"convert it first: `qsnn convert {path} --scheme nsd`"
                    )
                manifest = json.loads(str(data["manifest"]))
                arrays = {key: data[key] for key in data.files if key != "manifest"}
        except (OSError, ValueError, KeyError, EOFError, RecursionError, NotImplementedError, zipfile.BadZipFile) as error:
            # (NotImplementedError: zipfile's answer to a damaged version or compression field)
            raise QsnnError(
                f"{path} is not a converted qsnn network or is damaged ({type(error).__name__}); "
                "re-create it with `qsnn convert`"
            ) from None
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
            found = manifest.get("format") if isinstance(manifest, dict) else None
            raise QsnnError(f"{path} is not a converted qsnn network (format {found!r})")
        if manifest.get("version") != FORMAT_VERSION:
            raise QsnnError(
                f"{path} has format version {manifest.get('version')!r}, this qsnn reads "
                f"version {FORMAT_VERSION}; re-create it with `qsnn convert`"
            )
        digest = manifest.get("sha256")
        if digest is None:
            raise QsnnError(f"{path} has no checksum (it was not written by qsnn convert, or was edited); re-create it with `qsnn convert`")
        if digest != content_digest(manifest, arrays):
            raise QsnnError(
                f"{path} is damaged: its contents do not match the checksum written with them; "
                "re-create it with `qsnn convert`"
            )
        try:
            net = cls._from_manifest(manifest, arrays)
            problem = net.structure_problem()
        except (KeyError, TypeError, ValueError, IndexError, AttributeError, ZeroDivisionError, QsnnError) as error:
            raise QsnnError(
                f"{path} is damaged: its manifest or arrays are incomplete ({type(error).__name__}: {error}); "
                "re-create it with `qsnn convert`"
            ) from None
        if problem:
            raise QsnnError(f"{path} is damaged: {problem}; re-create it with `qsnn convert`")
        return net

    def structure_problem(self) -> str | None:
        """What makes this network inconsistent (shapes that do not chain, weights or
        tables that do not fit their layer, an unknown scheme), or None."""
        if self.scheme not in SCHEMES:
            return f"unknown scheme {self.scheme!r}"
        if not isinstance(self.source, dict):
            return "its source record is not a JSON object"
        if not self.layers:
            return "it has no layers"
        rules = SCHEMES[self.scheme]
        if self.threshold_scale is not None and (not rules.rounded_thresholds or not integer_in(self.threshold_scale, 1)):
            return f"its threshold scale {self.threshold_scale!r} is not a positive integer of an INT network"
        if self.spec.num_classes != self.output.classes:
            return f"it names {self.spec.num_classes} classes but its output layer has {self.output.classes}"
        integers = [("output weights", self.output.weight)]
        for number, layer in enumerate(self.layers, start=1):
            integers += [(f"layer {number}'s {name}", getattr(layer, name)) for name in ("weight", "table", "size", "constant", "offset", "step")]
        for what, array in integers:
            if not isinstance(array, np.ndarray) or not np.issubdtype(array.dtype, np.integer):
                return f"its {what} is not an integer array"
        for key, value in self.model_state.items():
            if not isinstance(value, np.ndarray) or (value.dtype.kind == "f" and not bool(np.isfinite(value).all())):
                return f"the trained model's parameter {key} is not finite"
        if rules.needs_bounds and any(layer.levels is None for layer in self.layers):
            return f"it is labelled {rules.title} but has a layer without an upper bound B"
        if rules.needs_ternary and any(layer.exponent != 0 or np.abs(layer.weight).max(initial=0) > 1 for layer in self.layers[1:]):
            return f"it is labelled {rules.title} but its hidden weights are not ternary"
        previous = None
        for number, layer in enumerate(self.layers, start=1):
            if not (integer_in(layer.k, 0, 4) and (layer.bound is None or integer_in(layer.bound, 1))
                    and integer_in(layer.divisor, 1, 2**62) and integer_in(layer.exponent, -1100, 1100)
                    and integer_in(layer.count_limit, 0, 2**40) and layer.input_limit >= 0):
                return f"layer {number} has k {layer.k!r}, B {layer.bound!r}, divisor {layer.divisor!r}, exponent {layer.exponent!r} or limits out of range"
            if int(layer.size.min(initial=0)) < 0 or int(layer.constant.min(initial=-1)) < -1:
                return f"layer {number} has negative table sizes or constants"
            if previous is not None and tuple(layer.in_shape) != tuple(previous):
                return f"layer {number} takes {tuple(layer.in_shape)} but layer {number - 1} gives {tuple(previous)}"
            if not (integer_in(layer.kernel, 1, 4096) and integer_in(layer.stride, 1, 4096) and integer_in(layer.padding, 0, 4096)):
                return f"layer {number} has kernel {layer.kernel}, stride {layer.stride}, padding {layer.padding}"
            if layer.kind == "conv":
                channels, height, width = layer.in_shape
                size = [(n + 2 * layer.padding - layer.kernel) // layer.stride + 1 for n in (height, width)]
                expected_out = (layer.out_shape[0], *size)
                expected_weight = (layer.out_shape[0], channels, layer.kernel, layer.kernel)
            elif layer.kind == "dense":
                expected_out = tuple(layer.out_shape[:1])
                expected_weight = (layer.out_shape[0], math.prod(layer.in_shape))
            else:
                return f"layer {number} is of unknown kind {layer.kind!r}"
            if tuple(layer.out_shape) != expected_out:
                return f"layer {number} gives {tuple(layer.out_shape)}, its geometry gives {expected_out}"
            if tuple(layer.weight.shape) != expected_weight:
                return f"layer {number}'s weights have shape {tuple(layer.weight.shape)}, expected {expected_weight}"
            tables = [layer.offset, layer.step, layer.size, layer.constant]
            if any(table.shape != (layer.channels,) for table in tables):
                return f"layer {number}'s threshold tables do not have one entry per channel ({layer.channels})"
            if layer.table.ndim != 2 or layer.table.shape[0] != layer.channels or int(layer.size.max(initial=0)) > layer.table.shape[1]:
                return f"layer {number}'s threshold table has shape {layer.table.shape}, not one row per channel covering every level"
            if layer.table.shape[1] > 1 and bool((np.diff(layer.table, axis=1) < 0).any()):
                return f"layer {number}'s threshold table is not non-decreasing"
            previous = layer.out_shape
        expected = (self.output.classes, math.prod(previous)) if previous is not None else None
        if expected is None or tuple(self.output.weight.shape) != expected:
            return f"the output layer's weights have shape {tuple(self.output.weight.shape)}, expected {expected}"
        wanted = QuantizedNet(self.spec).state_dict()
        if len(self.model_eps) != len(self.layers) or not all(0 <= eps < math.inf for eps in self.model_eps):
            return "the batch-norm eps of the trained model it carries are missing or out of range"
        if set(self.model_state) != set(wanted):
            return "the trained model's parameters it carries are incomplete"
        for key, value in self.model_state.items():
            if tuple(value.shape) != tuple(wanted[key].shape):
                return f"the trained model's parameter {key} has shape {tuple(value.shape)}, expected {tuple(wanted[key].shape)}"
        return None

    @classmethod
    def _from_manifest(cls, manifest: dict, arrays: dict) -> SpikingNet:
        layers = []
        for index, meta in enumerate(manifest["layers"]):
            layers.append(
                SpikingLayer(
                    kind=meta["kind"],
                    role=meta["role"],
                    in_shape=tuple(meta["in_shape"]),
                    out_shape=tuple(meta["out_shape"]),
                    kernel=meta["kernel"],
                    stride=meta["stride"],
                    padding=meta["padding"],
                    k=meta["k"],
                    bound=meta["bound"],
                    weight=arrays[f"layer{index}.weight"],
                    exponent=meta["exponent"],
                    offset=arrays[f"layer{index}.offset"],
                    step=arrays[f"layer{index}.step"],
                    divisor=int(meta["divisor"]),
                    table=arrays[f"layer{index}.table"],
                    size=arrays[f"layer{index}.size"],
                    constant=arrays[f"layer{index}.constant"],
                    input_limit=float(meta["input_limit"]),
                    count_limit=int(meta["count_limit"]),
                    snapped=meta["snapped"],
                    ann_thresholds=(
                        (arrays[f"layer{index}.ann_offset"], arrays[f"layer{index}.ann_step"], int(meta["ann_divisor"]),
                         arrays[f"layer{index}.ann_table"], arrays[f"layer{index}.ann_size"])
                        if "ann_divisor" in meta
                        else None
                    ),
                )
            )
        out = manifest["output"]
        output = OutputLayer(
            arrays["output.weight"], out["exponent"], float(out["input_limit"]), out["snapped"]
        )
        return cls(
            scheme=manifest["scheme"],
            layers=layers,
            output=output,
            spec=NetSpec.from_dict(manifest["net"]),
            threshold_scale=manifest["threshold_scale"],
            source=manifest["source"],
            model_state={key[len("model."):]: value for key, value in arrays.items() if key.startswith("model.")},
            model_eps=[float(eps) for eps in manifest["model_eps"]],
        )


def _json_number(value):
    if isinstance(value, np.integer | np.floating):
        return value.item()
    raise TypeError(f"cannot write {type(value).__name__} as JSON")
