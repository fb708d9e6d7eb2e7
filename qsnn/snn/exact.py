"""The exact ANN: the trained quantized model evaluated from its own parameters, exactly.

:class:`ExactANN` computes every block's counts and the output logits of a
:class:`~qsnn.net.models.QuantizedNet` with no rounding and none of the converter's
tables or weight grid (docs/DESIGN.md, "The exact ANN"): a float32 first pass whose error
is bounded per neuron, and exact integer or rational arithmetic for the neurons that
bound leaves in doubt, each decided by its channel's :class:`~qsnn.snn.thresholds.ChannelRule`.
It is the independent reference that :func:`qsnn.sim.run.simulate` checks every SNN
against; :func:`evaluate_exact` reports its accuracy on a test set.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

import numpy as np
import torch
import torch.nn.functional as F
from numba import njit, prange
from tqdm.auto import tqdm

from qsnn.data.transforms import model_input
from qsnn.snn.thresholds import ChannelRule

# --- the exact quantized ANN ------------------------------------------------------------

PIXEL_SCALE = 255  # x = p / 255
FLOAT_SLACK = 2.0**-36  # relative margin around every level boundary decided in float64


def _integer_grid(weight: np.ndarray) -> tuple[np.ndarray, int]:
    """Float weights (exact dyadic values) as W = W_int 2^-s with integers W_int (an int64
    array, or an object array of Python ints where int64 is too narrow) and s the smallest
    exponent that makes every weight an integer."""
    nonzero = weight[weight != 0]
    if nonzero.size == 0:
        return np.zeros(weight.shape, np.int64), 0
    mantissa, exponent = np.frexp(nonzero)
    digits = np.abs(mantissa * 2.0**53).astype(np.int64)  # exact: 53-bit integer mantissas
    trailing = np.log2((digits & -digits).astype(np.float64)).round().astype(np.int64)
    s = int((53 - exponent - trailing).max())
    if float(np.abs(nonzero).max()) * 2.0**s < 2.0**62:  # a float times 2^s is exact
        return (weight * 2.0**s).astype(np.int64), s
    values = [int(Fraction(float(w)) * Fraction(2) ** s) for w in weight.reshape(-1).tolist()]
    return np.array(values, dtype=object).reshape(weight.shape), s


def _split(scaled: np.ndarray, bits: int) -> list[np.ndarray]:
    """Integers as sum_j parts[j] 2^(bits j), every part below 2^bits in magnitude (float64)."""
    magnitude, sign = np.abs(scaled), np.where(scaled < 0, -1, 1)
    parts = []
    while True:
        parts.append((sign * (magnitude % (1 << bits))).astype(np.float64))
        magnitude = magnitude >> bits
        if not np.any(magnitude != 0):
            return parts


def _combine(sums: list, bits: int):
    """sum_j sums[j] 2^(bits j), exactly: an int64 tensor where it fits, else a nested
    list of Python ints. ``sums``: float64 tensors of exact integers."""

    # |every partial total| <= sum_j max|sums[j]| 2^(bits j); the factor 2 covers the
    # rounding of this float estimate
    bound = sum(float(m.abs().max()) * 2.0 ** (bits * j) for j, m in enumerate(sums) if m.numel())
    if bound * 2 < 2.0**62:
        total = torch.zeros(sums[0].shape, dtype=torch.int64)
        for j, m in enumerate(sums):
            total += m.to(torch.int64) << (bits * j)
        return total
    flat = [m.reshape(-1).to(torch.int64).tolist() for m in sums]
    return [sum(part[i] << (bits * j) for j, part in enumerate(flat)) for i in range(len(flat[0]))]


@dataclass
class ANNResult:
    """A quantized ANN evaluated exactly on a batch, by the trained model's own parameters
    (:class:`ExactANN`) or by a converted net's tables (:func:`qsnn.snn.reference.reference_counts`).

    ``counts``: every block's integer counts, int64 (images, *block output shape).
    ``logits``: float64 (images, classes); exact integers for the tables' ANN, the exact
    logits rounded to float64 for the exact ANN.
    ``predictions``: int64 (images,), the argmax of the exact logits (the first among ties).
    ``membranes``: every layer's membrane, where asked to keep them (tables' ANN).
    ``spiking_differences``: per layer, where asked to check them, the neurons whose
    binary neurons (SG's own counting, on the same membrane and the spiking tables) count
    otherwise than the ANN, or None where not checked.
    ``decided_exactly``: neurons decided in exact arithmetic beyond the first pass (exact ANN).
    """

    counts: list
    logits: torch.Tensor
    predictions: torch.Tensor | None = None
    membranes: list | None = None
    spiking_differences: list | None = None
    decided_exactly: int = 0

    def __post_init__(self) -> None:
        if self.predictions is None:  # (exact integer logits: their float64 argmax is exact)
            self.predictions = self.logits.argmax(dim=1)


UNIT_ROUNDOFF32 = 2.0**-24


@njit(inline="always", cache=True)
def _decide_row(first, box, bounded, capped, b, c, alpha, beta, per_input, per_box, constant, top_level,
                counts, inputs, near):
    """One channel of one image (see :func:`_decide_kernel`): (near neurons, largest count
    of the others). Branch-free, so that LLVM vectorizes it; ``bounded`` and ``capped``
    are constants where it is inlined (most counts are 0, some not, unpredictably): n =
    floor(u) as a float64 integer, exact; the doubt at a clamped end only where u is near it."""
    doubts = 0
    largest = 0
    for p in range(first.shape[2]):
        f = np.float64(first[b, c, p])
        u = alpha * f + beta
        margin = per_input * abs(f) + constant
        if bounded:
            margin += per_box * np.float64(box[b, 0, p])
        n = np.floor(u)
        doubt = ((u - n <= margin) | (n + 1.0 - u <= margin)) & ((n >= 0.0) | (u > -margin))
        n = max(n, 0.0)
        if capped:
            doubt = doubt & ((n < top_level) | (u < top_level + 1.0 + margin))
            n = min(n, top_level)
        count = np.int64(n)
        counts[b, c, p] = count
        inputs[b, c, p] = np.float32(n)
        near[b, c, p] = doubt
        doubts += np.int64(doubt)
        largest = max(largest, count * (1 - np.int64(doubt)))
    return doubts, largest


@njit(parallel=True, cache=True)
def _decide_kernel(first, box, largest_weight, gamma_n, slope, mean, shift, inverse, levels, counts, inputs, near,
                   found, found_count, top):
    """counts[b, c, p] = clamp(floor(u), 0, levels), u = slope (z - mean) + shift with
    z = first[b, c, p] * inverse, as int64 and as float32 (``inputs``, the next block's),
    and near[b, c, p] where an integer may lie within the float error of u. ``first``:
    (images, C, plane) membranes, exact when ``box`` is empty; else within gamma_n
    sum |w x| <= gamma_n largest_weight[c] box[b, 0, p] (float32 summation; box: the sum
    of the inputs in the neuron's receptive field). levels < 0: unbounded.

    Per image b it also lists the near neurons' flat indices c * plane + p in
    ``found[b, :found_count[b]]`` (found_count[b] counts them all, also beyond the room
    ``found`` has) and writes the largest count of the other neurons to ``top[b]``.

    u is computed as alpha first + beta (alpha = slope inverse, beta = shift - slope mean):
    its rounding, like that of every float64 step here, is far inside the FLOAT_SLACK
    margin."""
    images, channels, plane = first.shape
    bounded = box.shape[0] > 0
    capped = levels >= 0
    top_level = np.float64(levels)
    room = found.shape[1]
    for b in prange(images):
        listed = 0
        largest = 0
        for c in range(channels):
            a, m, h = slope[c], mean[c], shift[c]
            alpha, beta = a * inverse, h - a * m
            per_input = abs(alpha) * FLOAT_SLACK
            per_box = abs(alpha) * gamma_n * (1 + 4 * gamma_n) * np.float64(largest_weight[c]) if bounded else 0.0
            constant = FLOAT_SLACK * (abs(a) * abs(m) + abs(h) + 1.0) + abs(alpha) * 2.0**-100
            if bounded and capped:  # (one specialized loop each)
                doubts, most = _decide_row(first, box, True, True, b, c, alpha, beta, per_input, per_box, constant,
                                           top_level, counts, inputs, near)
            elif bounded:
                doubts, most = _decide_row(first, box, True, False, b, c, alpha, beta, per_input, per_box, constant,
                                           top_level, counts, inputs, near)
            elif capped:
                doubts, most = _decide_row(first, box, False, True, b, c, alpha, beta, per_input, per_box, constant,
                                           top_level, counts, inputs, near)
            else:
                doubts, most = _decide_row(first, box, False, False, b, c, alpha, beta, per_input, per_box, constant,
                                           top_level, counts, inputs, near)
            largest = max(largest, most)
            if doubts:
                for p in range(plane):
                    if near[b, c, p]:
                        if listed < room:
                            found[b, listed] = c * plane + p
                        listed += 1
        found_count[b] = listed
        top[b] = largest


NEAR_ROOM = 256  # near neurons per image listed by the decision kernel (more: found by a scan)


# The near sums are sums of products that are exact integers below 2^53 in float64 in any
# order (see _near_sums): reassociating them, as vectorized reductions do, changes nothing.
EXACT_SUMS = {"reassoc", "contract"}


@njit(inline="always", cache=True)
def _receptive_field(flat, plane, out_w, kernel, stride, pad, in_h, in_w):
    """The output channel of neuron ``flat`` (c * plane + position), its receptive field's
    corner (top, left) and the kernel rows and columns inside the image."""
    c = flat // plane
    q = flat - c * plane
    oy = q // out_w
    ox = q - oy * out_w
    top = oy * stride - pad
    left = ox * stride - pad
    return c, top, left, max(0, -top), min(kernel, in_h - top), max(0, -left), min(kernel, in_w - left)


@njit(inline="always", fastmath=EXACT_SUMS, cache=True)
def _near_sum(x, parts, b, flat, plane, out_w, kernel, stride, pad, in_w, out, i):
    """out[:, i] (see :func:`_near_sums`) for the neuron ``flat`` of image ``b``, from
    inputs ``x`` (images, C, H * W) and ``parts`` in the weights' (channel, row, column)
    order."""
    in_c, in_h = x.shape[1], x.shape[2] // in_w
    c, top, left, ky_lo, ky_hi, kx_lo, kx_hi = _receptive_field(flat, plane, out_w, kernel, stride, pad, in_h, in_w)
    for j in range(parts.shape[0]):
        weights = parts[j, c]
        total = 0.0
        for ci in range(in_c):
            for ky in range(ky_lo, ky_hi):
                row = x[b, ci, (top + ky) * in_w : (top + ky + 1) * in_w]
                at = (ci * kernel + ky) * kernel
                for kx in range(kx_lo, kx_hi):
                    total += weights[at + kx] * np.float64(row[left + kx])
        out[j, i] = total


@njit(inline="always", fastmath=EXACT_SUMS, cache=True)
def _near_sum_last(x, parts, b, flat, plane, out_w, kernel, stride, pad, in_w, out, i):
    """:func:`_near_sum` from channel-last inputs, ``x`` (images, H, W * C), and ``parts``
    in (row, column, channel) order: the inputs a kernel row reaches are one contiguous
    run, as are its weights, summed as one vectorized dot product."""
    in_h = x.shape[1]
    in_c = x.shape[2] // in_w
    c, top, left, ky_lo, ky_hi, kx_lo, kx_hi = _receptive_field(flat, plane, out_w, kernel, stride, pad, in_h, in_w)
    width = (kx_hi - kx_lo) * in_c
    for j in range(parts.shape[0]):
        weights = parts[j, c]
        total = 0.0
        for ky in range(ky_lo, ky_hi):
            run = x[b, top + ky, (left + kx_lo) * in_c : (left + kx_lo) * in_c + width]
            row = weights[(ky * kernel + kx_lo) * in_c : (ky * kernel + kx_lo) * in_c + width]
            for t in range(width):
                total += row[t] * np.float64(run[t])
        out[j, i] = total


@njit(inline="always", fastmath=EXACT_SUMS, cache=True)
def _near_sum_either(x, parts, b, flat, plane, out_w, kernel, stride, pad, in_w, channel_last, out, i):
    """:func:`_near_sum_last` or :func:`_near_sum`, as the inputs' layout is."""
    if channel_last:
        _near_sum_last(x, parts, b, flat, plane, out_w, kernel, stride, pad, in_w, out, i)
    else:
        _near_sum(x, parts, b, flat, plane, out_w, kernel, stride, pad, in_w, out, i)


@njit(fastmath=EXACT_SUMS, cache=True)
def _near_sums(x, parts, image, neuron, plane, out_w, kernel, stride, pad, in_w, channel_last, out):
    """out[j, i] = sum_t parts[j, c, t] x_t over the inputs x_t of neuron i: channel c and
    output position q of the flat index neuron[i] = c * plane + q, in image image[i].
    ``x``: (images, C, H * W), or with ``channel_last`` (images, H, W * C) (a dense
    layer's inputs as (images, 1, features), channel-last, with plane = out_w = kernel =
    stride = in_w = 1, pad = 0); ``parts``: (parts, out channels, C * kernel * kernel) in the
    weights' (channel, row, column) order, or with ``channel_last`` (row, column,
    channel); inputs outside the image (padding) are 0. The caller makes every part's
    every sum of products an integer below 2^53 in float64, so that each is exact,
    whatever the order."""
    for i in range(image.shape[0]):
        _near_sum_either(x, parts, image[i], neuron[i], plane, out_w, kernel, stride, pad, in_w, channel_last, out, i)


@njit(parallel=True, fastmath=EXACT_SUMS, cache=True)
def _near_sums_parallel(x, parts, image, neuron, plane, out_w, kernel, stride, pad, in_w, channel_last, out):
    """:func:`_near_sums` with the neurons shared among the threads."""
    for i in prange(image.shape[0]):
        _near_sum_either(x, parts, image[i], neuron[i], plane, out_w, kernel, stride, pad, in_w, channel_last, out, i)


# multiply-adds below which a kernel runs on one thread: starting the threads costs more, and
# far more on a loaded machine, where a parallel region waits for its slowest thread's turn
SERIAL_WORK = 1 << 22
# near sums, as a multiple of the inputs' size, from which the inputs are copied channel-last
CHANNEL_LAST_WORK = 1.0


def float32_is_ieee() -> bool:
    """Whether float32 convolutions and matrix products on the CPU round as IEEE float32
    (no bfloat16 or TF32 shortcuts switched on by the user)."""

    conv = getattr(getattr(torch.backends.mkldnn, "conv", None), "fp32_precision", "none")
    matmul = getattr(getattr(torch.backends.mkldnn, "matmul", None), "fp32_precision", "none")
    return conv in ("none", "ieee") and matmul in ("none", "ieee") and torch.get_float32_matmul_precision() == "highest"


@dataclass
class _Block:
    """One block of the exact ANN: the layer, its integer weights W = W_int 2^-s, its
    channels' rules, and float64 copies of what the first pass needs."""

    block: object
    scaled: np.ndarray  # W_int
    exponent: int  # s
    rules: list[ChannelRule]
    levels: int | None
    weight32: object  # the float32 weights the model computes with (tensor)
    window32: object  # conv: ones (1, 1, k, k), to sum the inputs in each receptive field (tensor)
    largest_weight32: np.ndarray  # float32 [C]: max |w| per output channel
    largest_scaled: float  # max |W_int|
    row_sum: float  # max over output neurons of sum |W|
    slope: object  # float64 [C]: 2^k gamma / sigma
    mean: object  # float64 [C]
    shift: object  # float64 [C]: 2^k beta + 1/2


class ExactANN:
    """The quantized ANN of a trained :class:`qsnn.net.models.QuantizedNet`, evaluated exactly
    from its own parameters (ALGORITHMS.md §1), independently of any conversion.

    For each block, a first pass computes z = W x in float32 (the model's own weights; x
    the integer pixels or counts, so the only rounding is the summation's, at most
    gamma_n sum |W x| for n terms in any order) and u = 2^k y + 1/2 in float64 from it.
    Neurons whose u may lie within that error (plus a 2^-36 relative margin for the
    float64 steps) of an integer are recomputed: their exact membrane in the model's
    integer weight grid (integer weights split into parts narrow enough that every sum
    of products is a float64 integer below 2^53), then, if still near, the count in
    exact rational arithmetic (:meth:`ChannelRule.count`). The logits are exact integers
    in the classifier's grid and the prediction their argmax (the first among ties).
    Inputs: raw integer pixel values 0..255 (x = p / 255). An instance keeps working
    buffers from call to call (:meth:`_buffers`): one thread at a time per instance.
    """

    def __init__(self, model) -> None:

        if not model.quantized:
            raise ValueError("a full-precision network has no exact quantized ANN")
        self.model = model
        self.blocks: list[_Block] = []
        for block in model.blocks:
            weight = block.effective_weight().detach().cpu()
            scaled, exponent = _integer_grid(weight.to(torch.float64).numpy())
            norm = block.norm
            levels = None if block.bound is None else (1 << block.k) * block.bound
            columns = [t.detach().cpu().to(torch.float64).tolist()
                       for t in (norm.weight, norm.bias, norm.running_mean, norm.running_var)]
            rules = [ChannelRule.from_floats(*values, norm.eps, block.k, levels) for values in zip(*columns, strict=True)]
            gamma, beta, mean, var = (torch.tensor(c, dtype=torch.float64) for c in columns)
            scale = float(1 << block.k)
            weight32 = weight.to(torch.float32).contiguous()
            self.blocks.append(_Block(
                block, scaled, exponent, rules, levels, weight32, torch.ones((1, 1, *weight32.shape[2:])),
                weight32.abs().flatten(1).max(dim=1).values.numpy(),
                float(np.abs(scaled).max()) if scaled.size else 0.0,
                float(weight.to(torch.float64).abs().reshape(weight.shape[0], -1).sum(dim=1).max()),
                scale * gamma / torch.sqrt(var + float(norm.eps)), mean, scale * beta + 0.5,
            ))
        self.output = _integer_grid(model.classifier.detach().cpu().to(torch.float64).numpy())
        self._parts: dict = {}
        self._held: dict = {}  # see _buffers

    def _parts_for(self, key, scaled: np.ndarray, largest_input: float):
        """``scaled`` split into parts whose every sum of products with inputs up to
        ``largest_input`` is a float64 integer below 2^53: (parts as float64 tensors, bits)."""

        fan_in = int(np.prod(scaled.shape[1:]))
        bits = max(1, min(40, 52 - math.ceil(math.log2(largest_input * fan_in + 1))))
        if (key, bits) not in self._parts:
            self._parts[key, bits] = [torch.from_numpy(p) for p in _split(scaled, bits)]
        return self._parts[key, bits], bits

    def _stacked_parts(self, index: int, scaled: np.ndarray, largest_input: float, channel_last: bool = False):
        """:meth:`_parts_for` as one float64 array (parts, out channels, fan-in), the fan-in
        in the weights' (channel, row, column) order, or with ``channel_last`` in (row,
        column, channel) order, for :func:`_near_sums`: (that array, bits)."""

        parts, bits = self._parts_for(index, scaled, largest_input)
        key = ("stacked", index, bits, channel_last)
        if key not in self._parts:
            stacked = np.stack([p.numpy() for p in parts])
            if channel_last:  # (parts, out c, in c, K, K) -> (parts, out c, K, K, in c)
                stacked = stacked.transpose(0, 1, 3, 4, 2)
            self._parts[key] = np.ascontiguousarray(stacked.reshape(len(parts), scaled.shape[0], -1))
        return self._parts[key], bits

    def __call__(self, pixels, recycle: ANNResult | None = None) -> ANNResult:
        """The exact ANN of raw pixels; ``recycle``: an earlier result no longer needed,
        whose count tensors of the same shapes receive this call's counts (the caller of a
        batch after batch avoids a fresh allocation, and its page faults, each time)."""

        x, inputs_per_unit = self._first_inputs(pixels.cpu())  # x = inputs / inputs_per_unit
        integral = inputs_per_unit != 1
        counts, decided = [], 0
        largest = None  # the largest input of the next block, where known
        for index, layer in enumerate(self.blocks):
            into = recycle.counts[index] if recycle is not None and index < len(recycle.counts) else None
            n, x, recomputed, largest = self._block(index, layer, x, inputs_per_unit, integral, largest, into)
            integral = True
            counts.append(n)
            decided += recomputed
            if largest >= 2**24:  # (float32 would round such counts: pass them exactly)
                x = n.to(torch.float64)
            inputs_per_unit = Fraction(1 << layer.block.k)
        return self._logits(counts, inputs_per_unit, decided, largest)

    def _first_inputs(self, pixels):
        """The first block's inputs and their scale: raw integer pixels 0..255 (x = p / 255),
        or, for a standardizing network, its float32 x itself, from raw uint8 pixels or from
        what the spiking network reads (255 x in float64, exactly)."""


        if self.model.spec.input_stage == "standardize":
            if pixels.dtype == torch.uint8:
                return model_input(pixels, "standardize"), Fraction(1)
            x = (pixels.to(torch.float64) / PIXEL_SCALE).to(torch.float32)
            if not torch.equal(x.to(torch.float64) * PIXEL_SCALE, pixels.to(torch.float64)):
                raise ValueError("the exact ANN of a standardizing network takes raw uint8 pixels or 255 x exactly")
            return x, Fraction(1)
        if pixels.is_floating_point() and not torch.equal(pixels, pixels.round()):
            raise ValueError("the exact ANN takes raw integer pixels 0..255, not noisy (fractional) ones")
        if pixels.numel() and (float(pixels.min()) < 0 or float(pixels.max()) > PIXEL_SCALE):
            raise ValueError("the exact ANN takes raw integer pixels 0..255")
        return pixels.to(torch.float32), Fraction(PIXEL_SCALE)  # (pixels: exact)

    def _block(self, index: int, layer: _Block, x, inputs_per_unit: Fraction, integral: bool = True,
               largest: float | None = None, into: torch.Tensor | None = None):
        """(counts, the same as float32, neurons decided beyond the first pass, the largest
        count) of one block for inputs x: integers >= 0 (pixels or counts), as float32
        where they are below 2^24, else as float64; or, not ``integral``, any float32
        values (a standardized image), whose near neurons are decided in rational
        arithmetic. ``largest``: the largest |x|, where the caller knows it; ``into``: a
        tensor the counts may be written to (used where it is int64 of their shape)."""

        block = layer.block
        if largest is None:
            largest = float(x.abs().max()) if x.numel() else 0.0
        first, box, unit_roundoff, exact_first = self._first_pass(index, layer, x, largest, integral)
        terms = int(np.prod(layer.scaled.shape[1:]))
        channels = layer.scaled.shape[0]
        images = first.shape[0]
        shape = (images, *block.layer.out_shape)
        fits = into is not None and into.dtype == torch.int64 and tuple(into.shape) == shape and into.is_contiguous()
        counts = into if fits else torch.empty(shape, dtype=torch.int64)
        inputs, near = self._buffers(index, shape)
        found = np.empty((images, NEAR_ROOM), np.int64)
        found_count = np.empty(images, np.int64)
        top = np.zeros(images, np.int64)
        gamma_n = terms * unit_roundoff / (1 - terms * unit_roundoff)
        flat_first = first.reshape(images, channels, -1).numpy()
        _decide_kernel(
            flat_first, box.numpy(), layer.largest_weight32, gamma_n,
            layer.slope.numpy(), layer.mean.numpy(), layer.shift.numpy(), 1.0 / float(inputs_per_unit),
            -1 if layer.levels is None else layer.levels,
            counts.reshape(images, channels, -1).numpy(), inputs.reshape(images, channels, -1).numpy(),
            near.reshape(images, channels, -1).numpy(), found, found_count, top,
        )
        largest_count = int(top.max()) if images else 0
        total = int(found_count.sum())
        if total == 0:
            return counts, inputs, 0, largest_count
        if int(found_count.max()) <= NEAR_ROOM:  # the near neurons as (image, flat index in the image)
            image = np.repeat(np.arange(images), found_count)
            neuron = found[np.arange(NEAR_ROOM)[None, :] < found_count[:, None]]
        else:
            image, neuron = np.divmod(np.flatnonzero(near.numpy()), int(np.prod(block.layer.out_shape)))
        flat_counts = counts.reshape(images, -1).numpy()
        flat_inputs = inputs.reshape(images, -1).numpy()
        if not integral:  # each near neuron's z = sum w x, in fractions, and its count
            where = torch.from_numpy(np.stack([image, *np.unravel_index(neuron, block.layer.out_shape)], axis=1))
            for i, z in enumerate(self._rational_membranes(layer, x, where)):
                flat_counts[image[i], neuron[i]] = layer.rules[int(where[i, 1])].count(z)
        else:
            plane = int(np.prod(block.layer.out_shape[1:]))
            channel = torch.from_numpy(neuron // plane)
            if exact_first:  # the first pass's membranes are exact: W_int x = first 2^s
                exact = (torch.from_numpy(flat_first.reshape(images, -1)[image, neuron]).to(torch.float64)
                         * 2.0**layer.exponent).to(torch.int64)
            else:
                exact = self._exact_membranes(index, layer, x, largest, image, neuron)
            per_unit = inputs_per_unit * Fraction(2) ** layer.exponent  # z = V / per_unit
            if isinstance(exact, torch.Tensor):  # int64 -> float64 rounds by 2^-53 at most: within the margin
                zf = exact.to(torch.float64) / float(per_unit)
                exact = exact.tolist()
            else:  # Python ints: int / int is correctly rounded, the same float as float(Fraction(v) / per_unit)
                numerator, denominator = per_unit.numerator, per_unit.denominator
                zf = torch.tensor([v * denominator / numerator for v in exact], dtype=torch.float64)
            sub, still = self._decide_at(layer, zf, channel)
            flat_counts[image, neuron] = sub.numpy()
            for i in still.nonzero()[:, 0].tolist():
                flat_counts[image[i], neuron[i]] = layer.rules[int(channel[i])].count(Fraction(exact[i]) / per_unit)
        flat_inputs[image, neuron] = flat_counts[image, neuron]
        return counts, inputs, total, max(largest_count, int(flat_counts[image, neuron].max()))

    def _buffers(self, index: int, shape: tuple) -> tuple[torch.Tensor, torch.Tensor]:
        """Block ``index``'s float32 counts (the next block's inputs) and near flags for a
        batch of ``shape``: kept from call to call, since fresh ones of this size cost a
        page fault every 4 KiB each time (the allocator returns freed memory this large
        to the system)."""
        held = self._held.get(index)
        if held is None or tuple(held[0].shape) != shape:
            held = self._held[index] = (torch.empty(shape, dtype=torch.float32), torch.empty(shape, dtype=torch.bool))
        return held

    def _first_pass(self, index: int, layer: _Block, x, largest: float, integral: bool):
        """The float first pass W x of a block: (its result, the per-neuron sum of |x| that
        bounds its rounding (empty where it is exact), the unit roundoff of that bound,
        whether it is exact)."""
        block = layer.block
        kind, stride, padding = block.layer.kind, block.layer.stride, block.layer.padding

        def linear(inputs, weight):
            if kind == "conv":
                return F.conv2d(inputs, weight, stride=stride, padding=padding)
            return F.linear(inputs.flatten(1), weight)

        terms = int(np.prod(layer.scaled.shape[1:]))
        ieee = float32_is_ieee() and x.dtype == torch.float32 and largest < 2.0**24
        # every partial sum of W_int x an integer below 2^24: float32 sums exactly in any order
        exact_first = integral and ieee and layer.largest_scaled * largest * terms < 2.0**24
        box = torch.empty((0, 1, 1), dtype=torch.float32)
        unit_roundoff = UNIT_ROUNDOFF32

        def input_sums(inputs):  # sum |x| over each receptive field (one channel)
            magnitude = (inputs if integral else inputs.abs()).sum(dim=1, keepdim=True)  # (integral: x >= 0)
            if kind == "conv":
                sums = F.conv2d(magnitude, layer.window32.to(inputs.dtype), stride=stride, padding=padding)
            else:
                sums = magnitude.flatten(1).sum(dim=1)
            return sums.reshape(len(inputs), 1, -1)

        with torch.backends.nnpack.flags(enabled=False):  # (Winograd and FFT convolutions round otherwise)
            if exact_first:
                first = linear(x, layer.weight32)
            elif ieee and terms * UNIT_ROUNDOFF32 < 0.5:
                # W x with the products' and sums' rounding only, at most gamma_n sum |w x|
                first = linear(x, layer.weight32)
                box = input_sums(x)
            elif not integral:  # float64, the same bound with float64's unit roundoff
                x64 = x.to(torch.float64)
                first = linear(x64, layer.weight32.to(torch.float64))
                box = input_sums(x64)
                unit_roundoff = 2.0**-53
            else:  # parts whose every sum is an exact float64 integer; their weighted total is
                # within 2^-50 relative of W x (inside the kernel's FLOAT_SLACK margin), and exact
                # only when there is one part
                parts, bits = self._parts_for(index, layer.scaled, largest)
                x64 = x.to(torch.float64)
                first = sum(linear(x64, p) * 2.0 ** (bits * j - layer.exponent) for j, p in enumerate(parts))
                exact_first = len(parts) == 1
        return first, box, unit_roundoff, exact_first

    def _decide_at(self, layer: _Block, z, channel):
        slope, mean, shift = layer.slope[channel], layer.mean[channel], layer.shift[channel]
        u = slope * (z - mean) + shift
        margin = FLOAT_SLACK * (slope.abs() * (z.abs() + mean.abs()) + shift.abs() + 1.0)
        return self._counts_of(layer, u, margin)

    @staticmethod
    def _counts_of(layer: _Block, u, margin):

        n = torch.floor(u)
        near = ((u - n) <= margin) | ((n + 1 - u) <= margin)
        n = n.clamp(min=0)
        if layer.levels is not None:
            n = n.clamp(max=layer.levels)
            near &= (u > -margin) & (u < layer.levels + 1 + margin)  # (beyond the ends: clamped anyway)
        else:
            near &= u > -margin
        return n.to(torch.int64), near

    @staticmethod
    def _receptive_fields(layer: _Block, x, where, step: int):
        """The inputs of the neurons ``where`` (rows of (image, channel, ...)), ``step``
        neurons at a time: (those rows, their inputs as float64 (neurons, fan-in))."""

        block = layer.block
        if block.layer.kind == "conv":
            kernel, stride, pad = block.layer.kernel, block.layer.stride, block.layer.padding
            padded = F.pad(x, (pad, pad, pad, pad)) if pad else x
            offsets = torch.arange(kernel)
            in_channels = torch.arange(x.shape[1])[None, :, None, None]
        for start in range(0, len(where), step):
            chunk = where[start : start + step]
            if block.layer.kind == "conv":  # each neuron's receptive field, (neurons, C, k, k)
                top = (chunk[:, 2] * stride)[:, None] + offsets
                left = (chunk[:, 3] * stride)[:, None] + offsets
                patches = padded[chunk[:, 0, None, None, None], in_channels, top[:, None, :, None], left[:, None, None, :]]
                yield chunk, patches.reshape(len(chunk), -1).to(torch.float64)
            else:
                yield chunk, x.flatten(1)[chunk[:, 0]].to(torch.float64)

    def _exact_membranes(self, index: int, layer: _Block, x, largest: float, image: np.ndarray, neuron: np.ndarray):
        """W_int x at the neurons ``neuron`` (flat indices within their image) of the images
        ``image``, for integer inputs x up to ``largest``: an int64 tensor where every value
        fits, else a list of Python ints. Each part of W_int (see :meth:`_parts_for`) is
        summed exactly in float64 by :func:`_near_sums` (on a channel-last copy of the
        inputs where that pays), and the parts are combined in integers."""

        block = layer.block
        terms = int(np.prod(layer.scaled.shape[1:]))
        # a convolution's inputs copied channel-last when the sums outweigh the copy: each
        # kernel row's inputs are then one contiguous run (wide layers; a few neurons keep
        # the gather). A dense layer's inputs are one run as they are: (images, 1, features).
        copied = block.layer.kind == "conv" and len(image) * terms >= CHANNEL_LAST_WORK * x.numel()
        channel_last = copied or block.layer.kind != "conv"  # (a dense layer's one kernel position: either order)
        parts, bits = self._stacked_parts(index, layer.scaled, largest, copied)
        if block.layer.kind == "conv":  # (images, C, H * W), or the copy (images, H, W * C)
            inputs = x.permute(0, 2, 3, 1).reshape(len(x), x.shape[2], -1) if copied else x.flatten(2)
            plane, out_w = int(np.prod(block.layer.out_shape[1:])), block.layer.out_shape[2]
            kernel, stride, pad, in_w = block.layer.kernel, block.layer.stride, block.layer.padding, x.shape[3]
        else:
            inputs = x.reshape(len(x), 1, -1)
            plane = out_w = kernel = stride = in_w = 1
            pad = 0
        kernel_for = _near_sums if len(image) * parts.shape[0] * parts.shape[2] < SERIAL_WORK else _near_sums_parallel
        if copied:  # channel by channel (of all the images): each channel's weight rows, far
            # larger than an image's inputs, come from memory once, then from the caches
            order = np.argsort(neuron // plane, kind="stable")
            image, neuron = image[order], neuron[order]
        found = np.empty((len(parts), len(image)))
        kernel_for(np.ascontiguousarray(inputs.numpy()), parts, np.ascontiguousarray(image, dtype=np.int64),
                   np.ascontiguousarray(neuron, dtype=np.int64), plane, out_w, kernel, stride, pad, in_w,
                   channel_last, found)
        out = found
        if copied:
            out = np.empty_like(found)
            out[:, order] = found
        sums = [torch.from_numpy(row) for row in out]
        return _combine(sums, bits)

    @staticmethod
    def _rational_membranes(layer: _Block, x, where) -> list[Fraction]:
        """z = sum w x at the neurons ``where`` for any float inputs x, as exact fractions
        (W = W_int 2^-s; every float is an integer times a power of two)."""
        rows = layer.scaled.reshape(layer.scaled.shape[0], -1)
        found = []
        for chunk, columns in ExactANN._receptive_fields(layer, x, where, 1024):
            for channel, values in zip(chunk[:, 1].tolist(), columns.tolist(), strict=True):
                ratios = [value.as_integer_ratio() for value in values]  # (numerator, 2^e)
                denominator = max(q for _, q in ratios)
                total = sum(int(w) * p * (denominator // q) for w, (p, q) in zip(rows[channel].tolist(), ratios, strict=True))
                found.append(Fraction(total, denominator << layer.exponent))
        return found

    def _logits(self, counts, inputs_per_unit: Fraction, decided: int, largest: int) -> ANNResult:
        """The exact logits of the last block's ``counts`` (the largest of them: ``largest``)."""

        x = counts[-1].to(torch.float64)
        scaled, s = self.output
        parts, bits = self._parts_for("output", scaled, float(largest))
        sums = [F.linear(x.flatten(1), part) for part in parts]
        logits = _combine(sums, bits)
        denominator = Fraction(2) ** s * inputs_per_unit
        power_of_two = denominator.denominator == 1 and denominator.numerator.bit_count() == 1
        if isinstance(logits, torch.Tensor):
            predictions = logits.argmax(dim=1)  # (the first index among ties)
            if power_of_two and denominator < 2**1000 and (not logits.numel() or int(logits.abs().max()) < 2**53):
                # exact in float64, and so is the division by a power of two
                return ANNResult(counts, logits.to(torch.float64) / float(denominator), predictions, decided_exactly=decided)
            rows = logits.tolist()
        else:
            classes = sums[0].shape[1]
            rows = [logits[b * classes : (b + 1) * classes] for b in range(sums[0].shape[0])]
            predictions = torch.tensor([max(range(classes), key=lambda c, r=r: (r[c], -c)) for r in rows], dtype=torch.int64)
        values = torch.tensor([[float(Fraction(v) / denominator) for v in row] for row in rows], dtype=torch.float64)
        return ANNResult(counts, values, predictions, decided_exactly=decided)


@dataclass
class ExactEvaluation:
    """A trained quantized network on a test set: the exact ANN against the float32 model."""

    images: int
    correct: int  # the exact quantized ANN's correct predictions
    float32_correct: int  # the float32 model's (the network as PyTorch evaluates it)
    differing_counts: int  # neuron counts on which the float32 model departs from the exact ANN
    differing_images: int  # images with at least one such count
    decided_exactly: int  # neurons near a level boundary, decided in rational arithmetic

    @property
    def accuracy(self) -> float:
        return 100.0 * self.correct / self.images

    @property
    def float32_accuracy(self) -> float:
        return 100.0 * self.float32_correct / self.images


def evaluate_exact(model, pixels, labels, *, batch_size: int = 500, progress: bool = False) -> ExactEvaluation:
    """Evaluate ``model`` exactly (:class:`ExactANN`) and as float32 on raw uint8 ``pixels``
    (already cropped to its input) with ``labels``."""


    ann = ExactANN(model)
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    correct = float_correct = differing = differing_images = decided = 0
    bar = tqdm(total=len(pixels), desc="exact ANN", unit="img", disable=not progress, leave=False)
    with torch.no_grad():
        for start in range(0, len(pixels), batch_size):
            x = pixels[start : start + batch_size]
            y = labels[start : start + batch_size]
            exact = ann(x)
            floats = model.counts(model_input(x, model.spec.input_stage).to(device))
            # the model's forward pass ends with the last block's n / 2^k times the classifier
            last = floats[-1].flatten(1).float() * (1.0 / (1 << model.blocks[-1].k))
            logits = torch.nn.functional.linear(last, model.classifier)
            correct += int((exact.predictions == y).sum())
            float_correct += int((logits.argmax(1).cpu() == y).sum())
            per_image = sum((a.cpu() != b).reshape(len(x), -1).sum(1) for a, b in zip(floats, exact.counts, strict=True))
            differing += int(per_image.sum())
            differing_images += int((per_image > 0).sum())
            decided += exact.decided_exactly
            bar.update(len(x))
    bar.close()
    model.train(was_training)
    return ExactEvaluation(len(pixels), correct, float_correct, differing, differing_images, decided)
