"""From a trained quantized network to a spiking network, exactly (ALGORITHMS.md §2).

Every hidden block's batch norm and quantizer fold into a per-channel threshold table:
count level i (i = 0, 1, ...) is reached when the pre-activation z (the block's
convolution output) satisfies, for gamma > 0,

    z >= zeta_i = ((i + 1/2) / 2^k - beta) * sigma / gamma + mu,    sigma = sqrt(var + eps)

A channel with gamma < 0 has its incoming weights and mu negated (z' = -z) and uses
|gamma|; a channel with gamma == 0 has a constant count (its input is ignored and its
weights are zeroed).

Exactness. Each layer's weights are put on an integer grid, W = W_int * 2^-s, with s as
large as the layer allows while every membrane sum stays below 2^53 (float64 integers are
exact there). For float32 weights that grid almost always holds them exactly; otherwise
only bits below 2^-s are dropped (recorded as ``snapped``). A hidden block's membrane
is then the exact integer V = W_int * n (n: the previous block's integer counts), the
encoding block's is V = W_int * p with p the raw 0..255 pixels (x = p / 255), and each
channel's table T(i) is the least integer membrane that reaches level i, derived from
the checkpoint's parameters in exact arithmetic (:mod:`qsnn.exact`): for integer V,
V >= theta <=> V >= ceil(theta). The spiking network and the reference quantized ANN
(:func:`reference_counts`) both compare exact integers with these tables. The converted
network also carries the trained model's own parameters, so that the exact ANN of the
model (:class:`qsnn.exact.ExactANN`) can check a simulation independently of the tables.
Unbounded layers carry a count limit (COUNT_LIMIT) that the simulator enforces, so
exactness can never fail silently.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import io
import json
import math
import zipfile
from dataclasses import dataclass, field, replace
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from qsnn import schemes
from qsnn.errors import QsnnError, integer_in
from qsnn.exact import (
    ChannelRule,
    float32_is_ieee,
    linear_table,
    round_half_up,
    threshold_table,
)
from qsnn.io import content_digest, write_bytes
from qsnn.models import NetSpec, QuantizedNet
from qsnn.neurons import Thresholds, target_count
from qsnn.quantization import max_count
from qsnn.schemes import SCHEMES

FORMAT = "qsnn-snn"
FORMAT_VERSION = 2
EXACT_LIMIT = 2.0**53  # float64 holds every integer below this exactly
PIXEL_LEVELS = 255  # x = p / 255 for 8-bit images
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
    table: np.ndarray  # int64 [C, width]: T(i), exact, for i < size (see qsnn.exact)
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
    # ANN (qsnn.exact.ExactANN) evaluates, independently of the tables above
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
        manifest = json.loads(json.dumps(manifest, default=_json_number))  # (as it reads back)
        manifest["sha256"] = content_digest(manifest, arrays)
        arrays["manifest"] = np.array(json.dumps(manifest))
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        write_bytes(path, buffer.getvalue())

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
        except (OSError, ValueError, KeyError, EOFError, RecursionError, zipfile.BadZipFile) as error:
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


# --- the integer grid ---------------------------------------------------------------------


def _exact_exponent(values: torch.Tensor) -> int:
    """The smallest s such that every value * 2^s is an integer (values nonzero, float64)."""
    mantissa, exponent = torch.frexp(values)
    digits = (mantissa.abs() * 2.0**53).to(torch.int64)  # exact: 53-bit integer mantissa
    lowest_bit = (digits & -digits).to(torch.float64)
    trailing = torch.log2(lowest_bit).round().to(torch.int64)
    return int((53 - exponent - trailing).max())


def _grid(weight: torch.Tensor, input_bound: float) -> tuple[np.ndarray, int, float, bool]:
    """Put float weights on the integer grid 2^-s (ALGORITHMS.md §2, "use integers").

    Returns (W_int, s, input_limit, snapped). s is the smallest exponent that holds every
    weight exactly, lowered only as far as needed to keep |sum_j W_int * input| < 2^53 for
    inputs up to ``input_bound``, and never below 24 significant bits of the largest
    weight. If the bound does not fit even then (an unbounded layer whose worst-case count
    is huge), ``input_limit`` says how large an input may get before exactness would be
    lost: the simulator checks it and refuses, rather than be silently wrong.
    """
    w = weight.detach().to(torch.float64).reshape(weight.shape[0], -1)
    nonzero = w[w != 0]
    if nonzero.numel() == 0:
        return np.zeros(tuple(weight.shape), np.int64), 0, math.inf, False
    exact = _exact_exponent(nonzero)
    rowabs = float(w.abs().sum(dim=1).max())
    keep_bits = 24 - math.frexp(float(nonzero.abs().max()))[1]
    lowest = min(exact, keep_bits)
    if math.isfinite(input_bound) and input_bound > 0:
        allowed = math.floor(math.log2((EXACT_LIMIT - 1) / (rowabs * input_bound)))
        exponent = max(min(exact, allowed), lowest)
    else:
        exponent = exact if input_bound == 0 else lowest
    scaled = w * 2.0**exponent
    w_int = torch.round(scaled)
    snapped = bool((w_int != scaled).any())
    limit = (EXACT_LIMIT - 1) / float(w_int.abs().sum(dim=1).max())
    return w_int.to(torch.int64).reshape(weight.shape).numpy(), exponent, limit, snapped


def _count_bound(weight: torch.Tensor, zeta0, delta, constant, levels, input_bound) -> float:
    """The largest count any neuron of the layer can reach for inputs in [0, input_bound]."""
    if levels is not None:
        return float(levels)
    w = weight.detach().to(torch.float64).reshape(weight.shape[0], -1)
    z_max = w.clamp(min=0).sum(dim=1) * input_bound
    counts = torch.floor((z_max - zeta0) / delta) + 1
    counts = torch.where(constant >= 0, constant.to(torch.float64), counts.clamp(min=0))
    bound = float(counts.max())
    return bound if math.isfinite(bound) else math.inf


COUNT_LIMIT = 1023  # unbounded layers: a count beyond this is refused at run time
TABLE_BITS = 61  # |A| + size * D of the linear estimate stays below 2^61, well inside int64


def channel_rules(block) -> list[ChannelRule]:
    """The exact quantizer rule of every channel of a hidden block (its float parameters
    taken as the exact rationals they are)."""
    norm = block.norm
    levels = max_count(block.k, block.bound)
    columns = [
        tensor.detach().cpu().to(torch.float64).tolist()
        for tensor in (norm.weight, norm.bias, norm.running_mean, norm.running_var)
    ]
    return [ChannelRule.from_floats(*values, norm.eps, block.k, levels) for values in zip(*columns, strict=True)]


def _linear_estimate(rules: list[ChannelRule], per_unit: Fraction, size: np.ndarray, scale: int | None, where: str):
    """(A, D, S) with (A + i D) / S the thresholds theta_i rounded to 1/S: A = round(S theta_0)
    and D = round(S d), rounded exactly, so |(A + i D) / S - theta_i| <= (1 + i) / (2 S).

    Exact mode (``scale`` None): S = 2^F with the most fractional bits that keep |A| + size D
    below 2^61; this is the kernels' closed-form estimate of a count, corrected by the exact
    table. With ``scale`` (the INT paper's 10^4) it defines the SNN's own thresholds."""
    terms = [rule.base_and_spacing(per_unit) if rule.gamma != 0 else None for rule in rules]
    magnitude = 1.0
    for (a, sign, square), spacing in (term for term in terms if term is not None):
        theta0, d = float(a) + sign * math.sqrt(float(square)), math.sqrt(float(spacing))
        if not (abs(theta0) <= 2.0**55 and 0 < d < math.inf):
            raise QsnnError(f"{where} has thresholds out of range (batch norm gamma or variance extreme); retrain")
        magnitude = max(magnitude, abs(theta0) + (int(size.max(initial=0)) + 1) * d)
    divisor = scale if scale is not None else 1 << max(0, min(62, math.floor(TABLE_BITS - math.log2(magnitude))))
    offset = np.zeros(len(rules), np.int64)
    step = np.ones(len(rules), np.int64)
    for channel, term in enumerate(terms):
        if term is None:
            continue
        (a, sign, square), spacing = term
        offset[channel] = round_half_up(a * divisor, sign, square * divisor * divisor)
        step[channel] = round_half_up(Fraction(0), 1, spacing * divisor * divisor)
    return offset, step, divisor


def formula_table(offset: np.ndarray, step: np.ndarray, divisor: int, size_cap: int, where: str):
    """The table ceil((A + i D) / S), i < size_cap, cut where it reaches MEMBRANE_LIMIT."""
    if size_cap and float(np.max(np.abs(offset) + size_cap * step.astype(np.float64))) >= 2.0**62:
        raise QsnnError(f"{where}: thresholds do not fit 64-bit integers at scale {divisor}; use exact thresholds")
    return linear_table(offset, step, divisor, size_cap)


# --- conversion --------------------------------------------------------------------------


def _fold_block(block):
    """Weights (sign-folded) and z-unit thresholds zeta_0, delta and constants of a block."""
    norm = block.norm
    weight = block.effective_weight().detach().to(torch.float64).clone()
    gamma = norm.weight.detach().to(torch.float64)
    beta = norm.bias.detach().to(torch.float64)
    mean = norm.running_mean.detach().to(torch.float64).clone()
    var = norm.running_var.detach().to(torch.float64)
    for name, values in (("gamma", gamma), ("beta", beta), ("running mean", mean), ("running variance", var)):
        if not bool(torch.isfinite(values).all()):
            raise QsnnError(f"batch norm {name} of block {block.layer.token} is not finite; the checkpoint is damaged")
    sigma = torch.sqrt(var + norm.eps)
    negative = gamma < 0
    weight[negative] = -weight[negative]
    mean[negative] = -mean[negative]
    magnitude = gamma.abs()
    zero = magnitude == 0
    safe = torch.where(zero, torch.ones_like(magnitude), magnitude)
    scale = 1.0 / (1 << block.k)
    delta = sigma / safe * scale
    zeta0 = (0.5 * scale - beta) * sigma / safe + mean
    levels = max_count(block.k, block.bound)
    constant_counts = torch.floor(torch.relu(beta) * (1 << block.k) + 0.5)
    if levels is not None:
        constant_counts = constant_counts.clamp(max=levels)
    constant = torch.where(zero, constant_counts, torch.full_like(beta, -1.0)).to(torch.int64)
    weight[zero] = 0.0
    delta = torch.where(zero, torch.ones_like(delta), delta)
    zeta0 = torch.where(zero, torch.zeros_like(zeta0), zeta0)
    return weight, zeta0, delta, constant, levels


def applicable_schemes(model) -> list[str]:
    """The schemes a trained network converts under: NSD always, SG with every block
    bounded, INT with ternary hidden weights and a bounded encoding block."""
    return [scheme for scheme in SCHEMES if scheme not in skipped_schemes(model)]


def skipped_schemes(model) -> dict[str, str]:
    """The schemes a trained network does not convert under, each with what it would need."""
    skipped = {}
    for name, scheme in SCHEMES.items():
        needs = scheme.missing(model)
        if needs:
            skipped[name] = f"{scheme.title} needs " + " and ".join(needs)
    return skipped


def convert(
    model: QuantizedNet | str | Path,
    scheme: str,
    *,
    threshold_scale: int | None = None,
    source: dict | None = None,
) -> SpikingNet:
    """Convert a trained quantized network (or a checkpoint file) into a spiking network.

    ``threshold_scale`` (INT only) reproduces the original code's thresholds rounded to
    1/scale instead of the exact integer thresholds; the quantized ANN keeps the exact ones.
    """
    schemes.of(scheme)  # (a QsnnError naming the schemes, for anything else)
    if isinstance(model, str | Path):
        return _convert_checkpoint(Path(model), scheme, threshold_scale)
    if not isinstance(model, QuantizedNet):
        raise QsnnError(
            f"convert() takes a qsnn QuantizedNet or the path of a checkpoint, got {type(model).__name__}; "
            "load a checkpoint with qsnn.load_checkpoint"
        )
    scheme = scheme.lower()
    rules = schemes.of(scheme)
    if not model.quantized:
        raise QsnnError("cannot convert a full-precision network: train it with quantized activations (--k)")
    precision = model.spec.precision
    unbounded = [i + 1 for i, b in enumerate(model.blocks) if b.bound is None]
    if rules.needs_bounds and unbounded:
        raise QsnnError(
            f"{rules.title} needs an upper bound B on every block (scatter makes 2^k*B binary neurons), "
            f"but block(s) {unbounded} have B none; train with --B 1, 2 or 4"
        )
    if rules.needs_ternary and not precision.ternary and len(model.blocks) > 1:
        raise QsnnError(f"{rules.title} needs ternary hidden weights so every membrane is an integer; train with --ternary")
    if rules.needs_bounded_encoding and model.blocks[0].bound is None:
        raise QsnnError(f"{rules.title}'s encoding block needs an upper bound (the papers: --encoding-k 0 --encoding-B 4)")
    if threshold_scale is not None:
        if not rules.rounded_thresholds:
            raise QsnnError("--threshold-scale reproduces the INT paper's rounded thresholds; use it with --scheme int")
        if not integer_in(threshold_scale, 1):
            raise QsnnError(f"--threshold-scale must be a positive integer, got {threshold_scale!r}")

    model.check_finite("the network")
    if any(tensor.device.type != "cpu" for tensor in model.state_dict().values()):
        model = copy.deepcopy(model).cpu()  # (a model trained on a GPU: folded on a CPU copy)
    was_training = model.training
    model.eval()
    layers: list[SpikingLayer] = []
    # the encoding block reads raw pixels, x = p / 255 <= 1, or standardized ones, 255 x with
    # |x| <= sqrt(C H W) (a standardized image's values have mean 0 and norm sqrt(C H W))
    largest_x = math.sqrt(math.prod(model.spec.input_shape)) if model.spec.input_stage == "standardize" else 1.0
    input_bound = PIXEL_LEVELS * largest_x * PIXEL_HEADROOM
    input_count_limit = math.inf
    k_in = 0
    for index, block in enumerate(model.blocks):
        where = f"block {index + 1} ({block.layer.token})"
        weight, zeta0, delta, constant, levels = _fold_block(block)
        w_int, exponent, input_limit, snapped = _grid(weight, input_bound)
        if index == 0:  # z = W_int p 2^-s / 255
            per_unit = PIXEL_LEVELS * Fraction(2) ** exponent
            count_bound = _count_bound(weight, zeta0, delta, constant, levels, largest_x * PIXEL_HEADROOM)
        else:  # z = W_int n 2^-s / 2^k_in
            per_unit = Fraction(2) ** (exponent + k_in)
            count_bound = _count_bound(weight, zeta0, delta, constant, levels, input_bound / (1 << k_in))
        count_limit = int(min(count_bound, COUNT_LIMIT))
        size_cap = levels if levels is not None else count_limit + 1
        rules = channel_rules(block)
        table, size = threshold_table(rules, per_unit, size_cap)
        constant = np.array([-1 if rule.constant_count() is None else rule.constant_count() for rule in rules], np.int64)
        offset, step, divisor = _linear_estimate(rules, per_unit, size, None, where)
        ann_thresholds = None
        scale = threshold_scale if index > 0 else None
        if scale is not None:  # the SNN takes the INT paper's rounded thresholds; the ANN keeps the exact ones
            ann_thresholds = (offset, step, divisor, table, size)
            offset, step, divisor = _linear_estimate(rules, per_unit, size, scale, where)
            if levels is None and bool((step[constant < 0] == 0).any()):
                raise QsnnError(
                    f"--threshold-scale {scale} rounds a threshold step of {where} to 0 with no "
                    "bound B; use exact thresholds (omit --threshold-scale)"
                )
            table, size = formula_table(offset, step, divisor, size_cap, where)
        layer = block.layer
        layers.append(
            SpikingLayer(
                kind=layer.kind,
                role="encoding" if index == 0 else "hidden",
                in_shape=layer.in_shape,
                out_shape=layer.out_shape,
                kernel=layer.kernel,
                stride=layer.stride,
                padding=layer.padding,
                k=block.k,
                bound=block.bound,
                weight=w_int,
                exponent=exponent,
                offset=offset,
                step=step,
                divisor=divisor,
                table=table,
                size=size,
                constant=constant,
                input_limit=min(input_limit, input_count_limit),
                count_limit=count_limit,
                snapped=snapped,
                ann_thresholds=ann_thresholds,
            )
        )
        input_bound = min(count_bound, count_limit)
        input_count_limit = count_limit
        k_in = block.k
    out_int, out_exponent, out_limit, out_snapped = _grid(model.classifier.detach(), input_bound)
    output = OutputLayer(out_int, out_exponent, min(out_limit, input_count_limit), out_snapped)
    model.train(was_training)
    state = {key: value.detach().cpu().numpy().copy() for key, value in model.state_dict().items()}
    eps = [float(block.norm.eps) for block in model.blocks]
    return SpikingNet(scheme, layers, output, model.spec, threshold_scale, dict(source or {}), state, eps)


def _convert_checkpoint(path: Path, scheme: str, threshold_scale: int | None) -> SpikingNet:
    from qsnn.training import load_checkpoint

    model, payload = load_checkpoint(path)
    config = payload.get("config") or {}
    history = payload.get("metrics") or []
    source = {
        "checkpoint": str(path),
        "sha256": file_sha256(path),
        "dataset": config.get("dataset"),
        "epochs": payload.get("epoch", config.get("epochs")),
        "test_accuracy": history[-1]["test_acc"] if history else payload.get("test_acc"),
    }
    return convert(model, scheme, threshold_scale=threshold_scale, source=source)


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def with_scheme(net: SpikingNet, scheme: str) -> SpikingNet:
    """The same converted weights and thresholds under another scheme (checks included)."""
    rules = schemes.of(scheme)
    if rules.needs_bounds and any(layer.levels is None for layer in net.layers):
        raise QsnnError(f"{rules.title} needs an upper bound B on every block; this network has B none")
    return replace(net, scheme=scheme)


# --- exact evaluation ---------------------------------------------------------------------


def cpu_kernels(tensor: torch.Tensor) -> bool:
    """Whether ``tensor`` is on the CPU, where qsnn's CPU kernels apply (direct
    convolutions, certified float32 membranes, the numba engine); on any other device the
    device-generic torch definitions run (float64, convolutions as matrix products). The
    one switch between the two, so that a test can run the device-generic path on the CPU."""
    return tensor.device.type == "cpu"


def layer_weight(layer: SpikingLayer | OutputLayer, device, dtype=torch.float64) -> torch.Tensor:
    return torch.from_numpy(layer.weight).to(device=device, dtype=dtype)


def apply_layer(layer: SpikingLayer, inputs: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """The layer's linear map (convolution or dense) on a batch; exact for integer tensors.

    On the CPU, convolutions run directly (plain multiply-adds, exact on integers). On a
    GPU they run as unfold + matrix product: cuDNN may pick FFT or Winograd algorithms
    (and TF32), which round even integer data, while a float64 GEMM only adds products.
    """
    if layer.kind == "dense" or cpu_kernels(inputs):
        return _direct(layer, inputs, weight)
    return conv_as_matmul(layer, inputs, weight)


def _direct(layer: SpikingLayer, inputs: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """The layer's linear map by torch's own operation (direct convolution, or matrix product)."""
    if layer.kind == "dense":
        return F.linear(inputs.flatten(1), weight)
    return F.conv2d(inputs, weight, stride=layer.stride, padding=layer.padding)


def conv_as_matmul(layer: SpikingLayer, inputs: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """A convolution as unfold + one matrix product (exact on integers in float64)."""
    columns = F.unfold(inputs, layer.kernel, padding=layer.padding, stride=layer.stride)
    out = weight.reshape(weight.shape[0], -1) @ columns  # (B, C_out, positions)
    return out.reshape(inputs.shape[0], *layer.out_shape)


def input_bound(net: SpikingNet, index: int, inputs: torch.Tensor) -> float:
    """A bound on the inputs of layer ``index`` (len(layers) = the output accumulator):
    known in advance for raw uint8 pixels and for counts of a bounded layer (a count never
    exceeds 2^k*B), measured otherwise."""
    if index == 0 and inputs.dtype == torch.uint8:
        return float(PIXEL_LEVELS)
    if index > 0 and net.layers[index - 1].levels is not None:
        return float(net.layers[index - 1].levels)
    if inputs.numel() == 0:
        return 0.0
    return float(inputs.max() if index > 0 else inputs.abs().max())


def check_input_limit(layer: SpikingLayer | OutputLayer, largest: float, index: int) -> None:
    """Refuse inputs beyond the range in which the layer's integer membrane is exact."""
    if largest > layer.input_limit:
        raise QsnnError(
            f"an input to layer {index + 1} reached {largest:.0f}, beyond {layer.input_limit:.0f}, "
            "the largest for which its integer membrane is exact; train with an upper bound B"
        )


FLOAT32_EXACT = 2.0**24  # float32 holds every integer below this exactly


def float_stage(layer: SpikingLayer, inputs: torch.Tensor) -> torch.Tensor:
    """The layer's membrane for non-integer inputs (noisy pixels into the encoding layer),
    in float64: the one computation that rounds. It runs on the CPU by one fixed operation
    (the direct convolution, or the matrix product of a dense layer) whatever the device,
    simulator or batch, so that the same inputs round alike everywhere and a noisy run
    gives the same counts on the CPU and on a GPU, bit for bit. Returned on the inputs'
    device."""
    return _direct(layer, inputs.to("cpu", torch.float64), layer_weight(layer, "cpu")).to(inputs.device)


def exact_membrane(layer: SpikingLayer, inputs: torch.Tensor, largest: float) -> torch.Tensor:
    """The layer's membrane for inputs bounded by ``largest``, exactly.

    Computed and returned in float32 (fast, CPU) when the inputs are integers and every
    partial sum stays an integer below 2^24, which makes any summation order exact; in
    float64 (exact below 2^53) otherwise. Non-integer inputs (noisy pixels) go to
    :func:`float_stage`, the one float stage.
    """
    if inputs.is_floating_point():
        return float_stage(layer, inputs)
    # (GPUs may use TF32 for float32: float64 there)
    if cpu_kernels(inputs) and layer.largest_row_sum * largest < FLOAT32_EXACT:
        return apply_layer(layer, inputs.to(torch.float32), layer_weight(layer, inputs.device, torch.float32))
    return apply_layer(layer, inputs.to(torch.float64), layer_weight(layer, inputs.device))


UNIT_ROUNDOFF32 = 2.0**-24


def counting_membrane(layer: SpikingLayer, inputs: torch.Tensor, largest: float) -> torch.Tensor:
    """The layer's membrane, good for counting by its spiking and its ANN tables: exact
    wherever a threshold is near, and elsewhere between the same two thresholds as the
    exact membrane, so that every count taken from it is exact.

    Where :func:`exact_membrane` would need float64 (integer inputs, wide weights), this
    computes a float32 estimate, about 5x faster on the CPU, with the rounding bound of
    any summation order, |error| <= gamma_n * sum |w x| (n terms, gamma_n = n u / (1 - n u),
    u = 2^-24; sum |w x| <= the largest row of |W| times ``largest``), and recomputes
    exactly (:func:`qsnn.engine.certify`) each neuron that has a threshold within the
    bound. Non-integer inputs, GPUs and non-IEEE float32 settings take the exact path.
    """
    rowabs = layer.largest_row_sum
    exact_in_float32 = rowabs * largest < FLOAT32_EXACT
    if not cpu_kernels(inputs) or inputs.is_floating_point() or exact_in_float32 or not float32_is_ieee():
        return exact_membrane(layer, inputs, largest)
    from qsnn import engine

    terms = layer.weight[0].size
    gamma = terms * UNIT_ROUNDOFF32 / (1 - terms * UNIT_ROUNDOFF32)
    bound = gamma * rowabs * largest * (1 + 1e-9) + 2.0  # + the rounding of v -/+ bound
    with torch.backends.nnpack.flags(enabled=False):  # (Winograd and FFT convolutions round otherwise)
        estimate = apply_layer(layer, inputs.to(torch.float32), layer_weight(layer, inputs.device, torch.float32))
    estimate = estimate.to(torch.float64).contiguous()
    tables = [layer.thresholds()] if layer.ann_thresholds is None else [layer.thresholds(), layer.thresholds(ann=True)]
    engine.certify(tables, layer, inputs.numpy(), estimate.numpy(), bound)
    return estimate


def layer_counts(layer: SpikingLayer, membrane: torch.Tensor, ann: bool = False) -> torch.Tensor:
    """m(V) for every neuron (with ``ann``: by the quantized ANN's exact tables): the numba
    kernel on the CPU, the torch definition elsewhere."""
    thresholds = layer.thresholds(ann)
    if cpu_kernels(membrane):
        from qsnn import engine

        return torch.from_numpy(engine.counts(thresholds, membrane.numpy()))
    return target_count(membrane, thresholds.to(membrane.device))


@torch.no_grad()
def reference_counts(net: SpikingNet, pixels: torch.Tensor, membranes: list | None = None,
                     spiking_differences: list | None = None):
    """The quantized ANN evaluated exactly: integer counts of every block and the logits.

    ``pixels`` are raw 0..255 values (uint8 or float for noisy inputs), shape (B, C, H, W).
    Returns ([counts per hidden layer, int64], integer logits as float64). If a list is
    given as ``membranes``, every layer's membrane (float32 or float64) is appended to it:
    exact, or good for counting by the layer's tables (:func:`counting_membrane`). If a
    list is given as ``spiking_differences``, each layer's number of neurons whose binary
    neurons (the spiking side's own counting algorithm, on the same membrane and the
    spiking tables) count otherwise than the ANN is appended to it, or None where that
    was not checked (the layer has ANN tables of its own, or the membrane is not on the CPU).
    """
    from qsnn import engine

    x = pixels
    counts = []
    for index, layer in enumerate(net.layers):
        largest = input_bound(net, index, x)
        check_input_limit(layer, largest, index)
        membrane = counting_membrane(layer, x, largest)
        if membranes is not None:
            membranes.append(membrane)
        if spiking_differences is not None and layer.ann_thresholds is None and cpu_kernels(membrane):
            found, differing = engine.checked_counts(layer.thresholds(), membrane.numpy())
            n = torch.from_numpy(found)
            spiking_differences.append(differing)
        else:
            n = layer_counts(layer, membrane, ann=True)
            if spiking_differences is not None:
                spiking_differences.append(None)
        counts.append(n)
        x = n
    check_input_limit(net.output, input_bound(net, len(net.layers), x), len(net.layers))
    logits = F.linear(x.flatten(1).to(torch.float64), layer_weight(net.output, x.device))
    return counts, logits
