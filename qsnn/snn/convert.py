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
the checkpoint's parameters in exact arithmetic (:mod:`qsnn.snn.exact`): for integer V,
V >= theta <=> V >= ceil(theta). The spiking network and the reference quantized ANN
(:func:`reference_counts`) both compare exact integers with these tables. The converted
network also carries the trained model's own parameters, so that the exact ANN of the
model (:class:`qsnn.snn.exact.ExactANN`) can check a simulation independently of the tables.
Unbounded layers carry a count limit (COUNT_LIMIT) that the simulator enforces, so
exactness can never fail silently.
"""

from __future__ import annotations

import copy
import hashlib
import math
from dataclasses import replace
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch
from torch import nn

from qsnn.errors import QsnnError, integer_in
from qsnn.net.models import QuantizedNet
from qsnn.net.quantization import max_count
from qsnn.snn import schemes
from qsnn.snn.from_nir import is_nir_file
from qsnn.snn.graph import SpikingGraph, convert_module, convert_net, convert_nir
from qsnn.snn.model import (
    COUNT_LIMIT,
    EXACT_LIMIT,
    PIXEL_HEADROOM,
    PIXEL_LEVELS,
    OutputLayer,
    SpikingLayer,
    SpikingNet,
)
from qsnn.snn.schemes import SCHEMES
from qsnn.snn.thresholds import ChannelRule, linear_table, round_half_up, threshold_table
from qsnn.train.checkpoint import load_checkpoint

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
    model: QuantizedNet | str | Path | nn.Module,
    scheme: str | torch.Tensor,
    *more: str,
    threshold_scale: int | None = None,
    source: dict | None = None,
    nir_input: str | None = None,
    graph: bool = False,
) -> SpikingNet | SpikingGraph:
    """Convert a trained network into a spiking network.

    - ``convert(net, scheme)``: a qsnn QuantizedNet (or the path of its checkpoint) into
      a SpikingNet. ``threshold_scale`` (INT only) reproduces the original code's
      thresholds rounded to 1/scale instead of the exact integer thresholds; the quantized
      ANN keeps the exact ones.
    - ``convert(module, example_input, scheme)``: a PyTorch model of one's own, with
      :class:`qsnn.nn.QuantAct` activations, into a SpikingGraph
      (:func:`qsnn.snn.graph.convert_module`).
    - ``convert("net.nir", scheme)``: a NIR graph read for one time step, every IF node a
      layer of binary neurons (:func:`qsnn.snn.graph.convert_nir`; ``nir_input``: the
      pixels it takes, "raw" 0..255 or "unit" p / 255), into a SpikingGraph.
    - ``convert(net, scheme, graph=True)``: a notation net (or its checkpoint) as a
      SpikingGraph, its batch norms folded as for a model of one's own
      (:func:`qsnn.snn.graph.convert_net`).
    """
    if isinstance(model, nn.Module) and not isinstance(model, QuantizedNet):
        if not isinstance(scheme, torch.Tensor) or len(more) != 1 or threshold_scale is not None:
            raise QsnnError("convert a model of your own as convert(model, example_input, scheme), e.g. "
                            "convert(model, torch.zeros(1, 1, 28, 28), 'nsd')")
        return convert_module(model, scheme, more[0])
    if more or isinstance(scheme, torch.Tensor):
        raise QsnnError("convert a qsnn network or checkpoint as convert(net, scheme), e.g. convert(net, 'nsd')")
    schemes.of(scheme)  # (a QsnnError naming the schemes, for anything else)
    if graph and (threshold_scale is not None or nir_input is not None):
        raise QsnnError("a notation net converts into a graph with exact thresholds from a qsnn checkpoint; "
                        "drop threshold_scale and nir_input")
    if isinstance(model, str | Path) or nir_input is not None:
        return _convert_file(model, scheme, threshold_scale, nir_input, graph)
    if not isinstance(model, QuantizedNet):
        raise QsnnError(
            f"convert() takes a qsnn QuantizedNet or the path of a checkpoint, got {type(model).__name__}; "
            "load a checkpoint with qsnn.load_checkpoint"
        )
    if graph:
        return convert_net(model, scheme.lower(), source)
    return _convert_chain(model, scheme.lower(), threshold_scale, source)


def _convert_chain(model: QuantizedNet, scheme: str, threshold_scale: int | None, source: dict | None) -> SpikingNet:
    """A notation net into a SpikingNet: integer weights and exact threshold tables, layer by layer."""
    _check_convertible(model, schemes.of(scheme), threshold_scale)
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
    for index, block in enumerate(model.blocks):
        k_in = model.blocks[index - 1].k if index else 0
        weight, zeta0, delta, constant, levels = _fold_block(block)
        w_int, exponent, input_limit, snapped = _grid(weight, input_bound)
        if index == 0:  # z = W_int p 2^-s / 255
            per_unit = PIXEL_LEVELS * Fraction(2) ** exponent
            count_bound = _count_bound(weight, zeta0, delta, constant, levels, largest_x * PIXEL_HEADROOM)
        else:  # z = W_int n 2^-s / 2^k_in
            per_unit = Fraction(2) ** (exponent + k_in)
            count_bound = _count_bound(weight, zeta0, delta, constant, levels, input_bound / (1 << k_in))
        count_limit = int(min(count_bound, COUNT_LIMIT))
        tables = _layer_thresholds(block, index, per_unit, levels, count_limit, threshold_scale if index > 0 else None)
        layer = block.layer
        layers.append(SpikingLayer(
            kind=layer.kind, role="encoding" if index == 0 else "hidden", in_shape=layer.in_shape,
            out_shape=layer.out_shape, kernel=layer.kernel, stride=layer.stride, padding=layer.padding,
            k=block.k, bound=block.bound, weight=w_int, exponent=exponent, **tables,
            input_limit=min(input_limit, input_count_limit), count_limit=count_limit, snapped=snapped,
        ))
        input_bound = min(count_bound, count_limit)
        input_count_limit = count_limit
    out_int, out_exponent, out_limit, out_snapped = _grid(model.classifier.detach(), input_bound)
    output = OutputLayer(out_int, out_exponent, min(out_limit, input_count_limit), out_snapped)
    model.train(was_training)
    state = {key: value.detach().cpu().numpy().copy() for key, value in model.state_dict().items()}
    eps = [float(block.norm.eps) for block in model.blocks]
    return SpikingNet(scheme, layers, output, model.spec, threshold_scale, dict(source or {}), state, eps)


def _convert_file(path, scheme: str, threshold_scale: int | None, nir_input: str | None,
                  graph: bool) -> SpikingNet | SpikingGraph:
    """A NIR file into a SpikingGraph, a qsnn checkpoint into a SpikingNet (or a graph)."""
    if isinstance(path, str | Path) and is_nir_file(path):
        if threshold_scale is not None or graph:
            raise QsnnError("a NIR graph converts into a graph with exact thresholds; drop threshold_scale and graph")
        return convert_nir(path, scheme, input_range=nir_input)
    if nir_input is not None:
        raise QsnnError("nir_input is for NIR files; give the path of an .nir file")
    return _convert_checkpoint(Path(path), scheme, threshold_scale, graph)


def _check_convertible(model: QuantizedNet, rules: schemes.Scheme, threshold_scale: int | None) -> None:
    """What ``rules`` (a scheme) needs of the trained network, each refused with its fix."""
    if not model.quantized:
        raise QsnnError("cannot convert a full-precision network: train it with quantized activations (--k)")
    unbounded = [i + 1 for i, b in enumerate(model.blocks) if b.bound is None]
    if rules.needs_bounds and unbounded:
        raise QsnnError(
            f"{rules.title} needs an upper bound B on every block (scatter makes 2^k*B binary neurons), "
            f"but block(s) {unbounded} have B none; train with --B 1, 2 or 4"
        )
    if rules.needs_ternary and not model.spec.precision.ternary and len(model.blocks) > 1:
        raise QsnnError(f"{rules.title} needs ternary hidden weights so every membrane is an integer; train with --ternary")
    if rules.needs_bounded_encoding and model.blocks[0].bound is None:
        raise QsnnError(f"{rules.title}'s encoding block needs an upper bound (the papers: --encoding-k 0 --encoding-B 4)")
    if threshold_scale is not None:
        if not rules.rounded_thresholds:
            raise QsnnError("--threshold-scale reproduces the INT paper's rounded thresholds; use it with --scheme int")
        if not integer_in(threshold_scale, 1):
            raise QsnnError(f"--threshold-scale must be a positive integer, got {threshold_scale!r}")


def _layer_thresholds(block, index: int, per_unit: Fraction, levels: int | None, count_limit: int,
                      scale: int | None) -> dict:
    """A layer's threshold fields: the exact tables T(i) with their linear estimate, or with
    ``scale`` the INT paper's thresholds rounded to 1/scale for the SNN, the exact ones
    kept for the ANN (``ann_thresholds``)."""
    where = f"block {index + 1} ({block.layer.token})"
    size_cap = levels if levels is not None else count_limit + 1
    rules = channel_rules(block)
    table, size = threshold_table(rules, per_unit, size_cap)
    constant = np.array([-1 if rule.constant_count() is None else rule.constant_count() for rule in rules], np.int64)
    offset, step, divisor = _linear_estimate(rules, per_unit, size, None, where)
    ann_thresholds = None
    if scale is not None:
        ann_thresholds = (offset, step, divisor, table, size)
        offset, step, divisor = _linear_estimate(rules, per_unit, size, scale, where)
        if levels is None and bool((step[constant < 0] == 0).any()):
            raise QsnnError(
                f"--threshold-scale {scale} rounds a threshold step of {where} to 0 with no "
                "bound B; use exact thresholds (omit --threshold-scale)"
            )
        table, size = formula_table(offset, step, divisor, size_cap, where)
    return {
        "offset": offset, "step": step, "divisor": divisor, "table": table, "size": size,
        "constant": constant, "ann_thresholds": ann_thresholds,
    }


def _convert_checkpoint(path: Path, scheme: str, threshold_scale: int | None, graph: bool = False) -> SpikingNet | SpikingGraph:

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
    return convert(model, scheme, threshold_scale=threshold_scale, source=source, graph=graph)


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
