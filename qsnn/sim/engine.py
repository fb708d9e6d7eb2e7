"""The fast simulator: event-driven integer kernels, compiled with numba (CPU).

A spiking network only does work when spikes happen. This engine simulates one image at
a time the way a neuromorphic core would: each spike adds its weights to the membranes of
exactly the neurons it reaches (its fan-out, borders included), each neuron compares its
integer membrane with its two adapting integer thresholds, and a layer that received no
spike and emitted none last step is skipped. It runs layer by layer over windows of steps
(one layer's state and weights stay in the caches), adds the spikes that reach the same
membranes together (up to four weight rows per pass), finds crossings with a vectorized
pass, and pads channels to a multiple of 8 so that every weight row starts on a cache
line (docs/DESIGN.md). Images run in parallel (numba ``prange``). The work is
proportional to the synaptic operations, not to T x the dense MACs.

Every number is an integer (int32 when the layer bounds allow it, else int64, or float64
holding integers below 2^53 when the weights fit float32, which is exact and lighter on
the caches), with the same exact tables T(i) as :mod:`qsnn.snn.neurons`, so the results equal the
reference step-by-step simulator (:func:`qsnn.sim.stepwise.simulate_batch`) count for
count; the tests check it. The encoding layer's membrane (pixels times weights) is
computed once per image (:func:`encode`: every non-zero pixel adds its weights, exactly,
in float64); its spike train is the thermometer code of its count under both NSD and
INT, so layer 1's input of every step is added up per window from each firing neuron's
weights once (:func:`_encoding_window`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import numba
import numpy as np
from numba import njit, prange

from qsnn.snn.counting import (
    TABLED_LEVELS,
    fill_table,
    reached,
    table_counts,
    threshold_at,
    walk_up,
)
from qsnn.snn.model import SpikingNet

INT32_LIMIT = 2**30  # int32 kernels keep every membrane and threshold below this
WINDOW = 16  # steps each layer runs before the next layer takes over
ALIGN = 8  # channels padded to, and weight rows aligned on, multiples of this many elements


@dataclass(frozen=True)
class Program:
    """A converted network laid out for the kernels (channel-last, flat arrays)."""

    geometry: np.ndarray  # int64 [L, 13]: kind, in c/h/w, out c/h/w, K, stride, pad, w offset, t offset, padded out c
    weights: np.ndarray  # every hidden layer's weights, kernel layout, in the narrowest type; then all negated
    offset: np.ndarray  # int64 [sum C]: A per channel, layer after layer
    step: np.ndarray  # int64 [sum C]: D
    divisor: np.ndarray  # int64 [L]: S per layer
    exact: np.ndarray  # int64 [sum C, width]: the exact table T(i) of every channel, layer after layer
    size: np.ndarray  # int64 [sum C]
    constant: np.ndarray  # int64 [sum C]
    output: np.ndarray  # int64 [features, classes] (the accumulator is always int64)
    big: int  # +/- sentinel for out-of-reach thresholds, fits the dtype
    neurons: np.ndarray  # int64 [L + 1]: offsets of the layers in the state (channels padded)
    outputs: np.ndarray  # int64 [L + 1]: offsets of the layers in the outputs (no padding)
    initial_upper: np.ndarray  # T(0) of every neuron (channel-last), the first upper threshold
    origin: np.ndarray  # int64 [sum neurons, 3]: (channel, row, column) of every neuron
    reach: np.ndarray  # int64 [sum neurons, 2]: membrane offset and weight row a spike reaches in a pooling layer
    channel_of: np.ndarray  # int64 [sum neurons]: the channel of every neuron, in channel-last order
    encoding_order: np.ndarray  # int64: the encoding neurons (channel-first) in the order layer 1 takes them
    first_index: np.ndarray  # int64 [sum neurons]: channel-last order to channel-first flat index
    levels: np.ndarray  # [sum C, TABLED_LEVELS + 1]: T(i - 1) of the first levels of every channel
    encoding_weights: np.ndarray  # float64 (in c, K, K rotated, out c) or (in features, out): the encoding layer's
    encoding_levels: np.ndarray  # float64 [encoding C, TABLED_LEVELS]: its T(i) in a table of its own (see encode)

    @property
    def dtype(self) -> np.dtype:
        """The membranes' and thresholds' type: int32, int64, or float64 holding integers
        (the weights may be narrower)."""
        return self.initial_upper.dtype


def _fits_int32(net: SpikingNet) -> bool:
    """True when every hidden membrane, weight and threshold stays below 2^30 in magnitude
    (the output accumulator is int64 anyway)."""
    for index, layer in enumerate(net.layers[1:], start=1):
        limit = min(layer.input_limit, net.layers[index - 1].count_limit)
        if layer.largest_row_sum * limit >= INT32_LIMIT:
            return False
    return True


# The columns of Program.geometry (one row per layer): conv (0) or dense (1), input and
# output shapes, kernel, stride and padding, where the layer's weights and thresholds start
# in the flat arrays, and its channels padded to a multiple of ALIGN.
KIND, IN_C, IN_H, IN_W, OUT_C, OUT_H, OUT_W, KERNEL, STRIDE, PAD, WEIGHT_AT, THRESHOLD_AT, PADDED_C = range(13)
GEOMETRY_COLUMNS = 13


def compile_program(net: SpikingNet) -> Program:
    """Lay out a converted network for the kernels."""
    dtype = np.int32 if _fits_int32(net) else np.int64
    big = INT32_LIMIT if dtype == np.int32 else 2**54
    geometry, parts, divisor, neurons, outputs = _layout(net.layers, dtype)
    offset, step, size, constant = (
        np.concatenate([getattr(layer, name) for layer in net.layers]).astype(np.int64)
        for name in ("offset", "step", "size", "constant")
    )
    exact = _exact_tables([layer.table for layer in net.layers])
    state, weights = _storage(np.concatenate(parts), dtype)
    weights = _aligned(np.concatenate([weights, -weights]))  # the negated copy for negative spikes (see _list_row)
    levels = np.zeros((len(offset), TABLED_LEVELS + 1), state)
    levels[:, 0] = -big  # T(-1): a neuron at count 0 sends no negative spike
    for index in range(len(net.layers)):
        channels = slice(int(geometry[index, THRESHOLD_AT]), int(geometry[index, THRESHOLD_AT] + geometry[index, OUT_C]))
        fill_table(
            levels[channels, 1:], offset[channels], step[channels], int(divisor[index]),
            exact[channels], size[channels], constant[channels], big,
        )
    maps = _neuron_maps(net.layers, geometry, neurons, levels, big, state)
    # the encoding layer's own table, built with room to spare (its membrane is not bound
    # by the hidden layers' int32 limits), as float64: exact below 2^53, and beyond it
    # still above any membrane
    encoding_levels = np.zeros((int(geometry[0, OUT_C]), TABLED_LEVELS), np.int64)
    fill_table(encoding_levels, *_encoding_tables(offset, step, divisor, exact, size, constant, geometry))
    first = net.layers[0]
    if first.kind == "conv":  # (in c, K, K, out c), the columns rotated (see _encode)
        encoding_weights = np.ascontiguousarray(first.weight[:, :, :, ::-1].transpose(1, 2, 3, 0), dtype=np.float64)
    else:
        encoding_weights = np.ascontiguousarray(first.weight.T, dtype=np.float64)
    return Program(
        geometry=geometry, weights=weights, offset=offset, step=step, divisor=divisor, exact=exact,
        size=size, constant=constant, output=np.ascontiguousarray(net.output.weight.T).astype(np.int64),
        big=big, neurons=neurons, outputs=outputs, **maps, levels=levels,
        encoding_weights=encoding_weights.reshape(-1), encoding_levels=encoding_levels.astype(np.float64),
    )


def _layout(layers, dtype) -> tuple:
    """Each layer's geometry row, its weights flattened in the order spikes read them
    (channels padded to ALIGN), its divisor S, and where each layer's state and outputs start."""
    count = len(layers)
    geometry = np.zeros((count, GEOMETRY_COLUMNS), np.int64)
    parts = []
    divisor = np.zeros(count, np.int64)
    neurons = np.zeros(count + 1, np.int64)
    outputs = np.zeros(count + 1, np.int64)
    weight_at = threshold_at = 0
    for index, layer in enumerate(layers):
        out_c = layer.out_shape[0]
        if layer.kind == "conv":
            _, out_h, out_w = layer.out_shape
            in_c, in_h, in_w = layer.in_shape
            # (in c, K, K, out c), rotated by 180 degrees: the outputs one input spike reaches
            # along a row are then contiguous in both the membrane and the weights
            kernel = layer.weight[:, :, ::-1, ::-1].transpose(1, 2, 3, 0)
            kind = 0
        else:
            out_h = out_w = 1
            in_c, in_h, in_w = math.prod(layer.in_shape), 1, 1
            kernel = layer.weight.T  # (in features, out features)
            kind = 1
        # hidden layers' channels padded to a multiple of ALIGN (zero weights, out-of-reach
        # thresholds): every row a spike adds then starts on a cache-line boundary
        padded = -(-out_c // ALIGN) * ALIGN if index else out_c
        geometry[index] = [
            kind, in_c, in_h, in_w, out_c, out_h, out_w,
            layer.kernel, layer.stride, layer.padding, weight_at, threshold_at, padded,
        ]
        flat = np.zeros(0, dtype)
        if index:
            wide = np.zeros((*kernel.shape[:-1], padded), dtype)
            wide[..., :out_c] = kernel
            flat = np.concatenate([wide.reshape(-1), np.zeros(-wide.size % ALIGN, dtype)])
        parts.append(flat)
        weight_at += flat.size
        divisor[index] = layer.divisor
        threshold_at += out_c
        state_size = layer.neurons // out_c * padded
        neurons[index + 1] = neurons[index] + state_size + (-state_size % ALIGN)
        outputs[index + 1] = outputs[index] + layer.neurons
    return geometry, parts, divisor, neurons, outputs


def _exact_tables(tables: list[np.ndarray]) -> np.ndarray:
    """Every channel's exact table T(i), one row per channel, padded with 2^54 (out of reach)."""
    exact = np.full((sum(len(t) for t in tables), max(table.shape[1] for table in tables)), 2**54, np.int64)
    for at, table in zip(np.cumsum([0] + [len(t) for t in tables[:-1]]), tables, strict=True):
        exact[at : at + len(table), : table.shape[1]] = table
    return exact


def _neuron_maps(layers, geometry, neurons, levels, big, state) -> dict[str, np.ndarray]:
    """Per neuron: its first upper threshold, its source position, what it reaches in a
    pooling layer, its channel, its channel-first index, and the order in which layer 1
    takes the encoding neurons' spikes."""
    count = len(layers)
    total = int(neurons[-1])
    initial_upper = np.zeros(total, state)
    origin = np.zeros((total, 3), np.int64)
    reach = np.full((total, 2), -1, np.int64)
    channel_of = np.zeros(total, np.int64)
    encoding_order = np.zeros(0, np.int64)
    first_index = np.zeros(total, np.int64)
    for index, layer in enumerate(layers):
        at, size, out_c, padded = int(neurons[index]), layer.neurons, int(geometry[index, OUT_C]), int(geometry[index, PADDED_C])
        # indexed by a spike's channel-first index: its source position, looked up, not
        # divided out, and, into a pooling layer, what it reaches
        channels, height, width = np.indices(layer.out_shape if layer.kind == "conv" else (layer.neurons, 1, 1))
        origin[at : at + size] = np.stack([channels, height, width], -1).reshape(-1, 3)
        if index + 1 < count and _pools(geometry[index + 1]):
            reach[at : at + size] = _pool_reach(geometry[index + 1], layer.out_shape)
        # indexed by the state's (padded, channel-last) order
        plane = size // out_c
        slots = np.arange(plane * padded).reshape(plane, padded)
        real = slots[:, :out_c].reshape(-1) + at
        channel_of[real] = np.tile(np.arange(out_c), plane)
        if index == 0:  # the order in which layer 1 takes the encoding neurons' spikes
            receiver = geometry[1] if count > 1 else None
            if receiver is not None and _pools(receiver):  # any order: their own (see _encoding_window)
                encoding_order = np.arange(size, dtype=np.int64)
            else:  # stable: each group keeps the channel-first order
                group = _groups(receiver, layer.out_shape if layer.kind == "conv" else (layer.neurons, 1, 1))
                encoding_order = np.argsort(group, kind="stable").astype(np.int64)
        first_index[real] = np.arange(size).reshape(out_c, plane).T.reshape(-1)
        if index:
            channel_at = int(geometry[index, THRESHOLD_AT])
            initial_upper[at : at + plane * padded] = big  # padding: never reached
            initial_upper[real] = np.tile(levels[channel_at : channel_at + out_c, 1], plane)
    return {
        "initial_upper": initial_upper, "origin": origin, "reach": reach, "channel_of": channel_of,
        "encoding_order": encoding_order, "first_index": first_index,
    }


def _encoding_tables(offset, step, divisor, exact, size, constant, geometry) -> tuple:
    """The encoding layer's threshold arguments for the kernels, with big = 2^54."""
    channels = slice(0, int(geometry[0, OUT_C]))
    return offset[channels], step[channels], int(divisor[0]), exact[channels], size[channels], constant[channels], 2**54


def _aligned(values: np.ndarray) -> np.ndarray:
    """A copy of ``values`` that starts on a 64-byte boundary (a cache line)."""
    raw = np.empty(values.size * values.itemsize + 64, np.uint8)
    skip = -raw.ctypes.data % 64
    out = raw[skip : skip + values.size * values.itemsize].view(values.dtype)
    out[:] = values
    return out


@njit(inline="always", cache=True)
def _pools(geometry: np.ndarray) -> bool:
    """Whether a layer is a convolution over non-overlapping windows (stride = kernel, no
    padding), where each input reaches exactly one output position."""
    kind, kernel, stride, pad = geometry[KIND], geometry[KERNEL], geometry[STRIDE], geometry[PAD]
    return kind == 0 and stride == kernel and pad == 0


def _pool_reach(geometry: np.ndarray, in_shape) -> np.ndarray:
    """For every input (channel-first order) of a pooling layer: the membrane offset of the
    output position it reaches (channel-last, from the layer's base) and the start of its
    weight row, or -1 for inputs beyond the last whole window."""
    out_h, out_w, kernel, start, out_c = (
        int(v) for v in geometry[[OUT_H, OUT_W, KERNEL, WEIGHT_AT, PADDED_C]]
    )  # (padded channels)
    c, y, x = (a.reshape(-1) for a in np.indices(in_shape))
    oy, ox = y // kernel, x // kernel
    inside = (oy < out_h) & (ox < out_w)
    ky, kx = kernel - 1 - (y - oy * kernel), kernel - 1 - (x - ox * kernel)  # the rotated kernel
    offset = (oy * out_w + ox) * out_c
    row = start + ((c * kernel + ky) * kernel + kx) * out_c
    return np.stack([np.where(inside, offset, -1), np.where(inside, row, -1)], axis=1)


def _groups(receiver, shape) -> np.ndarray:
    """How a layer's spikes of one step are ordered for the layer that receives them:
    every neuron's group (channel-first order). The spikes of one
    group reach the same membranes, so that the receiver adds several weight rows to them
    in one pass (each membrane is loaded and stored once per four rows): into a
    convolution (a pooling layer too), their position; into a dense layer or the output,
    their channel (any two of them reach the same membranes; by channel keeps the weight
    rows in order). Both orders are the state's own (see compile_program), so spikes go
    out without a sort. (Into a pooling layer, the spikes of one window at one position
    are added together; sorting them by window as well measured slower than the passes
    it saves.)"""
    width = shape[2]
    c, y, x = (a.reshape(-1) for a in np.indices(shape))
    if receiver is not None and receiver[0] == 0:
        return y * width + x
    return c


def _storage(weights: np.ndarray, dtype) -> tuple[type, np.ndarray]:
    """The membranes' type and the weights in the narrowest type that holds them exactly,
    so that more weights stay in the CPU caches.

    Small integer weights (ternary: int8, int16) keep integer membranes of ``dtype``. Wide
    ones that came from float32 weights on a 2^-s grid have at most 24 significant bits:
    float32 holds them exactly, and a float64 membrane adds them exactly, since every
    membrane is an integer below 2^53 (the layer bounds make sure of that). Thresholds at
    or beyond 2^53 may round in float64, but no membrane reaches them either way.
    """
    largest = int(np.abs(weights).max(initial=0))
    width = np.dtype(dtype).itemsize
    for narrow in (np.int8, np.int16):
        if largest <= np.iinfo(narrow).max and np.dtype(narrow).itemsize < width:
            return dtype, weights.astype(narrow)
    if dtype == np.int64 and np.array_equal(weights.astype(np.float32).astype(np.int64), weights):
        return np.float64, weights.astype(np.float32)
    if dtype == np.int64 and largest <= np.iinfo(np.int32).max:
        return dtype, weights.astype(np.int32)
    return dtype, weights


@njit(inline="always", cache=True)
def _add_row(membrane, start, weights, row, width, sign):
    """membrane[start:start+width] +/-= weights[row:row+width] (views let LLVM vectorize)."""
    target = membrane[start : start + width]
    source = weights[row : row + width]
    if sign > 0:
        for o in range(width):
            target[o] += source[o]
    else:
        for o in range(width):
            target[o] -= source[o]


@njit(inline="always", cache=True)
def _add_two(membrane, start, weights, first, second, width):
    """Two rows at once: each membrane is loaded and stored once. The sum is taken in the
    membrane's type, one row after the other, so it stays exact."""
    target = membrane[start : start + width]
    a = weights[first : first + width]
    b = weights[second : second + width]
    for o in range(width):
        value = target[o]
        value += a[o]
        value += b[o]
        target[o] = value


@njit(inline="always", cache=True)
def _add_four(membrane, start, weights, r0, r1, r2, r3, width):
    """Four rows at once (see :func:`_add_two`)."""
    target = membrane[start : start + width]
    a = weights[r0 : r0 + width]
    b = weights[r1 : r1 + width]
    c = weights[r2 : r2 + width]
    d = weights[r3 : r3 + width]
    for o in range(width):
        value = target[o]
        value += a[o]
        value += b[o]
        value += c[o]
        value += d[o]
        target[o] = value


@njit(inline="always", cache=True)
def _add_group(membrane, start, weights, rows, shift, count, width):
    """membrane[start:start+width] += the rows weights[r + shift : r + shift + width] for
    r in rows[:count], four at a time (negative spikes' rows are in the negated copy of
    the weights, see :func:`_list_row`). Any order gives the same exact integers, and
    every partial sum is a membrane some order of the same spikes would pass through, so
    within the layer's bounds."""
    i = 0
    while i + 4 <= count:
        _add_four(membrane, start, weights, rows[i] + shift, rows[i + 1] + shift, rows[i + 2] + shift,
                  rows[i + 3] + shift, width)
        i += 4
    if i + 2 <= count:
        _add_two(membrane, start, weights, rows[i] + shift, rows[i + 1] + shift, width)
        i += 2
    if i < count:
        _add_row(membrane, start, weights, rows[i] + shift, width, 1)


@njit(inline="always", cache=True)
def _list_row(rows, listed, row, sign, weights):
    """rows[listed] = the weight row of a spike: ``row`` for a positive one, its negated
    copy (the second half of ``weights``) for a negative one, so that the rows of both
    signs are added in the same pass. Returns listed + 1."""
    rows[listed] = row + np.int64(sign < 0) * (weights.shape[0] // 2)
    return listed + 1


@njit(cache=True)
def _deliver(geometry, layer, weights, membrane, base, events, signs, count, origin, reach, rows):
    """Add the weights of ``count`` input spikes to layer ``layer``'s membranes.

    ``events`` hold the spiking inputs' flat (channel, row, column) indices, sorted by
    group (see :func:`_groups`), ``origin`` those indices' (channel, row, column) in the
    sending layer, ``reach`` the membrane offset and weight row each of them reaches in a
    non-overlapping pooling layer (or -1). The spikes of a group reach the same
    membranes: their weight rows are collected in ``rows`` (a negative spike's from the
    negated copy of the weights) and added together. Returns the number of synaptic
    operations (additions) performed.
    """
    kind = geometry[layer, KIND]
    out_c, out_h, out_w = geometry[layer, OUT_C], geometry[layer, OUT_H], geometry[layer, OUT_W]
    kernel, stride, pad = geometry[layer, KERNEL], geometry[layer, STRIDE], geometry[layer, PAD]
    start = geometry[layer, WEIGHT_AT]
    padded = geometry[layer, PADDED_C]  # the membrane's and the weights' channel stride
    if kind == 1:  # dense: every spike reaches every membrane, one group
        listed = 0
        for e in range(count):
            listed = _list_row(rows, listed, start + events[e] * padded, signs[e], weights)
        _add_group(membrane, base, weights, rows, 0, listed, padded)
        return count * out_c
    adds = 0  # synapses reached (padding excluded)
    if stride == kernel and pad == 0:  # non-overlapping windows (the P blocks): looked up
        e = 0
        while e < count:
            target = reach[events[e], 0]
            listed = 0
            g = e
            while g < count and reach[events[g], 0] == target:
                listed = _list_row(rows, listed, reach[events[g], 1], signs[g], weights)
                g += 1
            if target >= 0:
                _add_group(membrane, base + target, weights, rows, 0, listed, padded)
                adds += (g - e) * out_c
            e = g
        return adds
    if stride == 1:  # the reached outputs form a rectangle; each of its rows is one add
        e = 0
        while e < count:
            y = origin[events[e], 1]
            x = origin[events[e], 2]
            g = e
            first_y = y + pad - kernel + 1  # output row reached by the rotated kernel row 0
            first_x = x + pad - kernel + 1
            ky_lo, ky_hi = max(0, -first_y), min(kernel - 1, out_h - 1 - first_y)
            kx_lo, kx_hi = max(0, -first_x), min(kernel - 1, out_w - 1 - first_x)
            listed = 0
            while g < count and origin[events[g], 1] == y and origin[events[g], 2] == x:
                row = start + (origin[events[g], 0] * kernel * kernel + kx_lo) * padded
                listed = _list_row(rows, listed, row, signs[g], weights)
                g += 1
            if ky_hi >= ky_lo and kx_hi >= kx_lo:
                width = (kx_hi - kx_lo + 1) * padded
                for ky in range(ky_lo, ky_hi + 1):
                    at = base + ((first_y + ky) * out_w + first_x + kx_lo) * padded
                    _add_group(membrane, at, weights, rows, ky * kernel * padded, listed, width)
                adds += (g - e) * (ky_hi - ky_lo + 1) * (kx_hi - kx_lo + 1) * out_c
            e = g
        return adds
    for e in range(count):
        j = events[e]
        c = origin[j, 0]
        y = origin[j, 1]
        x = origin[j, 2]
        sign = signs[e]
        for ky in range(kernel):
            ny = y + pad - ky
            if ny < 0:
                break
            if ny % stride != 0:
                continue
            oy = ny // stride
            if oy >= out_h:
                continue
            for kx in range(kernel):
                nx = x + pad - kx
                if nx < 0:
                    break
                if nx % stride != 0:
                    continue
                ox = nx // stride
                if ox >= out_w:
                    continue
                row = start + ((c * kernel + kernel - 1 - ky) * kernel + kernel - 1 - kx) * padded
                _add_row(membrane, base + (oy * out_w + ox) * padded, weights, row, padded, sign)
                adds += out_c
    return adds


@njit(cache=True)
def _scan(
    layer, geometry, membrane, upper, lower, count, fired, base, at_event, events, signs, flag, crossing_at,
    far, channel_of, first_index, levels, offset, step, divisor, exact, size, constant, big,
):
    """One step of layer ``layer``'s neurons after their input arrived: every neuron whose
    membrane crossed a threshold moves its count by one and its thresholds to the new
    T(c), T(c - 1); its spike goes to events[at_event:] (signs alike), in the state's
    order, which keeps the spikes that reach the same membranes side by side (see
    _groups). Returns (spikes, positive spikes, neurons that spiked for the first time)."""
    plane = geometry[layer, OUT_H] * geometry[layer, OUT_W]
    at = geometry[layer, THRESHOLD_AT]
    scale = divisor[layer]
    tabled = levels.shape[1] - 1
    # a branch-free, vectorized pass flags the neurons that cross a threshold, a second
    # one lists them
    here = plane * geometry[layer, PADDED_C]  # padded channels: never crossing
    v = membrane[base : base + here]
    up = upper[base : base + here]
    down = lower[base : base + here]
    changing = 0
    for n in range(here):
        crossing = np.int8(v[n] >= up[n]) - np.int8(v[n] < down[n])
        flag[n] = crossing
        changing += crossing != 0
    if changing == 0:
        return 0, 0, 0
    listed = 0
    if 16 * changing < here:  # few: skip the words of 8 flags that are all zero
        words = flag[:here].view(np.int64)  # (here is a multiple of 8: padded channels)
        for w in range(here // 8):
            if words[w] != 0:
                for n in range(8 * w, 8 * w + 8):
                    crossing_at[listed] = n
                    listed += flag[n] != 0
    else:
        for n in range(here):
            crossing_at[listed] = n
            listed += flag[n] != 0
    up_spikes = 0
    first_spikes = 0  # neurons spiking for the first time
    beyond = 0  # neurons whose new threshold lies beyond the table
    for i in range(changing):  # branch-free; the rare thresholds beyond the table are listed in far
        k = crossing_at[i]
        n = base + k
        sign = flag[k]
        rising = sign > 0
        first_spikes += 1 - fired[n]
        fired[n] = 1
        c = count[n] + sign
        count[n] = c
        # rising: T(c - 1) was the upper threshold and T(c) (table column c + 1) comes in;
        # falling: T(c) was the lower threshold and T(c - 1) (column c) comes in
        column = c + np.int64(rising)
        old_upper = upper[n]
        old_lower = lower[n]
        new = levels[at + channel_of[n], min(column, tabled)]
        upper[n] = new if rising else old_lower
        lower[n] = old_upper if rising else new
        far[beyond] = n
        beyond += column > tabled
        up_spikes += rising
        events[at_event + i] = first_index[n]
        signs[at_event + i] = sign
    for i in range(beyond):  # rare, and out of the loop above: it divides
        n = far[i]
        ch = channel_of[n]
        upper[n] = threshold_at(count[n], at + ch, offset, step, scale, exact, size, constant, big)
        lower[n] = threshold_at(count[n] - 1, at + ch, offset, step, scale, exact, size, constant, big)
    return changing, up_spikes, first_spikes


@njit(cache=True)
def _encoding_spikes(b, encoding_counts, first, span, pending, waiting, positive, events, signs, starts):
    """The encoding layer's spikes of the window ``first`` .. ``first + span - 1``, one
    event each, step after step (``pending[:waiting]``: the neurons still firing, by
    group). Returns how many still fire after the window."""
    emitted = 0
    for s in range(span):
        starts[0, s] = emitted
        kept = 0
        for e in range(waiting):
            j = pending[e]
            events[emitted + e] = j
            signs[emitted + e] = 1
            if encoding_counts[b, j] > first + s + 1:
                pending[kept] = j
                kept += 1
        emitted += waiting
        positive[b, 0, first + s] = waiting
        waiting = kept
    starts[0, span] = emitted
    return waiting


@njit(cache=True)
def _encoding_window(
    b, encoding_counts, geometry, weights, neuron_at, origin, reach, first, span, pending, waiting, current,
    positive, sops, by_level, ones, per_level, rows,
):
    """Layer 1's input from the encoding layer over the window ``first`` .. ``first + span
    - 1``, added up before the window runs. Encoding neuron j fires at steps 0 .. m_j - 1
    (a thermometer code), so the current at step t is I(t) = sum of the weight rows of
    the neurons with m_j > t. With D_l the rows of the neurons whose train ends in the
    window's step l - 1 (l = span for those firing through it), I(first + s) = D_{s+1} +
    ... + D_span: each neuron's rows are added once per window, not once per spike.
    ``current[s]`` (one stretch of layer 1's size per step) receives I(first + s); the
    spikes and synaptic operations of every step go to ``positive`` and ``sops``.
    ``pending[:waiting]``: the neurons still firing, by group (in any order into a
    pooling layer); returns how many fire after the window."""
    size = neuron_at[2] - neuron_at[1]
    current[: span * size] = 0
    ending = per_level[span + 2 : 2 * span + 3]  # per level l: neurons whose train ends in step l - 1
    added = per_level[2 * span + 3 : 3 * span + 4]  # ... and the synaptic operations of one spike of each
    ending[:] = 0
    added[:] = 0
    kept = 0  # the neurons that fire beyond the window, still by group, go back to pending
    if _pools(geometry[1]):  # one row per neuron, into one position: added into D_l as it comes, in any order
        padded = geometry[1, PADDED_C]
        for e in range(waiting):
            j = pending[e]
            left = encoding_counts[b, j] - first
            level = min(left, span)
            ending[level] += 1
            target = reach[j, 0]
            if target >= 0:
                added[level] += geometry[1, OUT_C]
                _add_row(current, (level - 1) * size + target, weights, reach[j, 1], padded, 1)
            pending[kept] = j
            kept += left > span
    else:  # sorted by level (counting sort, stable: each level keeps the group order), then delivered
        per_level[: span + 2] = 0
        for e in range(waiting):
            per_level[min(encoding_counts[b, pending[e]] - first, span) + 1] += 1
        for level in range(1, span + 2):
            per_level[level] += per_level[level - 1]
        for e in range(waiting):
            j = pending[e]
            left = encoding_counts[b, j] - first
            level = min(left, span)
            by_level[per_level[level]] = j
            per_level[level] += 1
            pending[kept] = j
            kept += left > span
        ones[:waiting] = 1
        for level in range(1, span + 1):  # the neurons of level l are by_level[per_level[l - 1] : per_level[l]]
            start = per_level[level - 1]
            ending[level] = per_level[level] - start
            if ending[level] > 0:
                added[level] = _deliver(geometry, 1, weights, current, (level - 1) * size, by_level[start:], ones,
                                        ending[level], origin, reach, rows)
    spikes = 0
    adds = 0
    for level in range(span, 0, -1):
        spikes += ending[level]
        adds += added[level]
        if level < span:  # I(first + level - 1) = D_level + I(first + level)
            into = current[(level - 1) * size : level * size]
            above = current[level * size : (level + 1) * size]
            for n in range(size):
                into[n] += above[n]
        positive[b, 0, first + level - 1] = spikes
        sops[b, 0, first + level - 1] = adds
    return kept


@njit(cache=True)
def _simulate_image(
    b, encoding_counts, geometry, weights, offset, step, divisor, exact, size, constant, output, big,
    neuron_at, output_at, initial_upper, origin, reach, channel_of, encoding_order, first_index, levels, steps,
    auto, positive, negative, sops, spiking, predictions, counts, used, membranes, final_logits, unsettled, buffers,
    every_membrane,
):
    """Simulate image ``b`` (see :func:`_simulate`); ``buffers`` are reused.

    Layer by layer over a window of steps: layer 1 runs every step of the window, then
    layer 2 on layer 1's spikes of all those steps, and so on, so that one layer's state
    and weights stay in the caches while it runs; the results are those of running step
    by step, since a layer's step t only depends on its own past and on the layer below
    up to step t. Each layer's spikes of the window wait in its own stretch of ``events``.
    """
    layers = geometry.shape[0]
    classes = output.shape[1]
    encoding = encoding_counts.shape[1]  # the encoding layer's neurons (state slots 0 ..)
    (membrane, upper, lower, count, fired, events, signs, starts, quiet, spiked, logits, pending, flag, crossing_at,
     per_level, far, grouped, current) = buffers
    window = starts.shape[1] - 1
    hidden = neuron_at[1]  # the encoding layer has no membrane, thresholds or count here
    membrane[hidden:] = 0
    upper[hidden:] = initial_upper[hidden:]  # T(0) of every neuron
    lower[hidden:] = -big
    count[hidden:] = 0
    fired[hidden:] = 0
    quiet[:] = 0
    spiked[:] = 0
    logits[:] = 0
    # the encoding neurons that fire go to pending[:waiting], in the order layer 1 takes
    # them (see Program.encoding_order); branch-free: about one neuron in three fires
    firing = 0
    for i in range(encoding):
        j = encoding_order[i]
        on = encoding_counts[b, j] > 0
        pending[firing] = j
        firing += on
        fired[j] = on
    waiting = firing  # encoding neurons still to fire
    simulated = steps  # steps until the first silent one (auto), else all
    first = 0  # the window's first step
    span = min(window, steps)  # (the last window's, after the loop)
    while first < simulated:
        span = min(window, steps - first)
        if layers > 1:
            waiting = _encoding_window(
                b, encoding_counts, geometry, weights, neuron_at, origin, reach, first, span, pending, waiting,
                current, positive, sops, events, signs, per_level, grouped,
            )
        else:  # the encoding layer drives the output: its spikes one by one
            waiting = _encoding_spikes(b, encoding_counts, first, span, pending, waiting, positive, events, signs, starts)
        for layer in range(1, layers):
            sender = neuron_at[layer - 1]
            base = neuron_at[layer]
            arrived = events[window * sender :]  # the sender's spikes of this window
            arrived_signs = signs[window * sender :]
            own = window * base  # where this layer's spikes of the window go
            emitted = 0
            for s in range(span):
                starts[layer, s] = emitted
                t = first + s
                if layer == 1:  # the encoding layer's current of this step, added up beforehand
                    arriving = positive[b, 0, t]
                    if arriving > 0:
                        into = membrane[base : neuron_at[2]]
                        source = current[s * into.shape[0] : (s + 1) * into.shape[0]]
                        for n in range(into.shape[0]):
                            into[n] += source[n]
                else:
                    e0 = starts[layer - 1, s]
                    arriving = starts[layer - 1, s + 1] - e0
                    if arriving > 0:
                        sops[b, layer - 1, t] = _deliver(
                            geometry, layer, weights, membrane, base, arrived[e0:], arrived_signs[e0:], arriving,
                            origin[sender:], reach[sender:], grouped,
                        )
                if arriving == 0 and quiet[layer] == 1:
                    continue
                made, up_spikes, first_spikes = _scan(
                    layer, geometry, membrane, upper, lower, count, fired, base, own + emitted, events, signs, flag,
                    crossing_at, far, channel_of, first_index, levels, offset, step, divisor,
                    exact, size, constant, big,
                )
                emitted += made
                positive[b, layer, t] = up_spikes
                spiked[layer] += first_spikes
                negative[b, layer, t] = made - up_spikes
                quiet[layer] = 1 if made == 0 else 0
            starts[layer, span] = emitted
        # the output accumulator, step by step
        last = window * neuron_at[layers - 1]
        for s in range(span):
            t = first + s
            for e in range(last + starts[layers - 1, s], last + starts[layers - 1, s + 1]):
                source = output[events[e]]
                if signs[e] > 0:
                    for o in range(classes):
                        logits[o] += source[o]
                else:
                    for o in range(classes):
                        logits[o] -= source[o]
            sops[b, layers - 1, t] = (starts[layers - 1, s + 1] - starts[layers - 1, s]) * classes
            best = 0
            for o in range(1, classes):
                if logits[o] > logits[best]:
                    best = o
            predictions[b, t] = best
            silent = positive[b, 0, t] == 0  # the encoding layer fires first, then stops for good
            for layer in range(1, layers):
                silent = silent and starts[layer, s + 1] == starts[layer, s]
            if auto and silent and t > 0 and simulated == steps:
                simulated = t  # quiescent: nothing moves again (the window's later steps are silent too)
        first += span
    used[b] = simulated
    firing = 0
    cut = 0  # encoding neurons whose spike train the last step cut short
    for n in range(encoding):  # the thermometer has emitted min(count, steps) spikes
        counts[b, n] = min(encoding_counts[b, n], simulated)
        firing += fired[n]
        cut += encoding_counts[b, n] > simulated
    spiking[b, 0] = firing
    unsettled[b, 0] = cut
    keep = every_membrane or cut > 0
    for layer in range(1, layers):
        out_c = geometry[layer, OUT_C]
        padded = geometry[layer, PADDED_C]
        plane = geometry[layer, OUT_H] * geometry[layer, OUT_W]
        base = neuron_at[layer]
        at = output_at[layer]  # outputs: channel-first, no padding
        for ch in range(out_c):  # channel-first
            into = counts[b, at + ch * plane : at + (ch + 1) * plane]
            for p in range(plane):
                into[p] = count[base + p * padded + ch]
        # unsettled: a membrane beyond one of its thresholds. A neuron that did not cross
        # in the last step was between its thresholds then, with no input to come, so only
        # the neurons that crossed in it (the layer's last events) need looking at
        moving = 0
        own = window * base
        for e in range(own + starts[layer, span - 1], own + starts[layer, span]):
            ch = events[e] // plane  # (events hold channel-first indices)
            n = base + (events[e] - ch * plane) * padded + ch
            moving += (membrane[n] >= upper[n]) | (membrane[n] < lower[n])
        spiking[b, layer] = spiked[layer]
        unsettled[b, layer] = moving
        keep = keep or moving > 0
    if keep and membranes.shape[1] > 0:  # read only where something is unsettled (or every time), if at all
        for layer in range(1, layers):
            out_c = geometry[layer, OUT_C]
            padded = geometry[layer, PADDED_C]
            plane = geometry[layer, OUT_H] * geometry[layer, OUT_W]
            base = neuron_at[layer]
            at = output_at[layer] - encoding
            for p in range(plane):
                for ch in range(out_c):
                    membranes[b, at + ch * plane + p] = membrane[base + p * padded + ch]
    for o in range(classes):
        final_logits[b, o] = logits[o]


@njit(parallel=True, cache=True)
def _simulate(
    encoding_counts, geometry, weights, offset, step, divisor, exact, size, constant, output, big,
    neuron_at, output_at, initial_upper, origin, reach, channel_of, encoding_order, first_index, levels, steps,
    auto, positive, negative, sops, spiking, predictions, counts, used, membranes, final_logits, unsettled, chunks, window,
    every_membrane,
):
    """Simulate every image for ``steps`` steps, or until quiescent if ``auto``; chunks of
    images run in parallel, each chunk reusing one set of state buffers.

    Outputs (per image): positive/negative spikes and SOPs per layer and step, neurons that
    spiked, the prediction per step, final counts (channel-first order), steps used, the
    final membranes of the hidden layers (channel-first; see :func:`run`) and the output
    accumulator, and per hidden layer the neurons left unsettled (a membrane beyond one of
    its thresholds, so that the count would still move; for the encoding layer, a count
    beyond the steps simulated).
    """
    images = encoding_counts.shape[0]
    layers = geometry.shape[0]
    total = neuron_at[layers]
    for chunk in prange(chunks):
        buffers = (
            np.empty(total, initial_upper.dtype),  # membrane
            np.empty(total, initial_upper.dtype),  # upper threshold T(c)
            np.empty(total, initial_upper.dtype),  # lower threshold T(c - 1)
            np.empty(total, np.int32),  # count
            np.empty(total, np.uint8),  # fired at least once
            np.empty(window * total, np.int64),  # each layer's spikes of the window (flat indices)
            np.empty(window * total, np.int8),  # their signs
            np.empty((layers, window + 1), np.int64),  # where each step's spikes start, per layer
            np.empty(layers, np.uint8),  # layer silent last step
            np.empty(layers, np.int64),  # neurons of each layer that have spiked
            np.empty(output.shape[1], np.int64),  # the output accumulator
            np.empty(neuron_at[1], np.int64),  # encoding neurons still to fire
            np.empty(total, np.int8),  # +1 / -1 / 0: the neurons of a layer that cross a threshold
            np.empty(total, np.int64),  # the crossing neurons (channel-last index in the layer)
            np.empty(3 * window + 4, np.int64),  # per level of the encoding window (see _encoding_window)
            np.empty(total, np.int64),  # neurons whose thresholds lie beyond the table
            np.empty(total, np.int64),  # the weight rows of a group of spikes with one target
            np.empty(window * (neuron_at[2] - neuron_at[1] if layers > 1 else 0), initial_upper.dtype),  # layer 1's input per step
        )
        for b in range(chunk * images // chunks, (chunk + 1) * images // chunks):
            _simulate_image(
                b, encoding_counts, geometry, weights, offset, step, divisor, exact, size, constant,
                output, big, neuron_at, output_at, initial_upper, origin, reach, channel_of, encoding_order,
                first_index, levels, steps, auto, positive, negative, sops, spiking, predictions, counts, used, membranes, final_logits, unsettled,
                buffers, every_membrane,
            )


@njit(parallel=True, cache=True)
def _statistics(counts, fanout, out):
    for b in prange(counts.shape[0]):
        spikes = synaptic = spiking = 0
        for j in range(counts.shape[1]):
            value = counts[b, j]
            spikes += value
            synaptic += value * fanout[j]
            spiking += value != 0
        out[b, 0] = spikes
        out[b, 1] = synaptic
        out[b, 2] = spiking


@njit(inline="always", cache=True)
def _row_difference(first, second, out, b):
    found = 0
    for j in range(first.shape[1]):
        found += first[b, j] != second[b, j]
    out[b] = found


@njit(parallel=True, cache=True)
def _differences(first, second, out):
    for b in prange(first.shape[0]):
        _row_difference(first, second, out, b)


@njit(cache=True)
def _differences_serial(first, second, out):
    for b in range(first.shape[0]):
        _row_difference(first, second, out, b)


# entries below which a comparison runs on one thread: starting the threads costs more, and
# far more on a loaded machine, where a parallel region waits for its slowest thread's turn
# (on 2 cores, a layer of 200 images x 2,880 neurons already compares in half the time on both)
SERIAL_ENTRIES = 1 << 16


def row_differences(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """For two arrays of the same shape (any integer dtypes): how many entries differ,
    per row (first dimension)."""
    out = np.empty(first.shape[0], np.int64)
    kernel = _differences_serial if first.size < SERIAL_ENTRIES else _differences
    kernel(first.reshape(first.shape[0], -1), second.reshape(second.shape[0], -1), out)
    return out


def differences(first: np.ndarray, second: np.ndarray) -> int:
    """How many entries of two arrays of the same shape differ (any integer dtypes)."""
    return int(row_differences(first, second).sum())


def layer_statistics(counts: np.ndarray, fanout: np.ndarray) -> tuple[int, int, int]:
    """For counts (images, neurons) and each neuron's fan-out: the spikes, the synaptic
    operations they cause, and the (image, neuron) pairs that spiked, in one pass."""
    out = np.empty((counts.shape[0], 3), np.int64)
    _statistics(np.ascontiguousarray(counts), np.ascontiguousarray(fanout, dtype=np.int64), out)
    spikes, synaptic, spiking = out.sum(axis=0)
    return int(spikes), int(synaptic), int(spiking)


@njit(parallel=True, cache=True)
def _encode(pixels, geometry, weights, levels, offset, step, divisor, exact, size, constant, big, out, chunks):
    """The encoding layer's counts m(V) of every image, V = its weights times the raw
    integer pixels, evaluated exactly in float64 (every partial sum is an integer below
    2^53: the layer's input limit sees to it). Each non-zero pixel adds its weights to the
    membranes it reaches (channel-last; the kernel's columns rotated, so that a kernel row
    reaches side-by-side outputs with side-by-side weights); each count is then the number
    of table entries T(i) <= V (``levels``: T(i) of the first levels, (channel, level)
    float64), channel by channel, by a walk up the exact thresholds beyond the table.
    ``pixels`` (images, C * H * W) uint8; ``out`` (images, neurons) channel-first. Chunks
    of images run in parallel, each reusing its buffers."""
    kind, _, in_h, in_w, out_c, out_h, out_w, kernel, stride, pad = geometry[0, KIND : PAD + 1]
    images = pixels.shape[0]
    for chunk in prange(chunks):
        last = np.empty(out_h * out_w * out_c)  # channel-last: each pixel adds whole rows of weights
        membrane = np.empty(out_c * out_h * out_w)  # channel-first, for counting
        for b in range(chunk * images // chunks, (chunk + 1) * images // chunks):
            _encode_image(pixels[b], kind, in_h, in_w, out_c, out_h, out_w, kernel, stride, pad, weights, levels, offset,
                          step, divisor, exact, size, constant, big, out[b], last, membrane)


@njit(inline="always", cache=True)
def _encode_image(image, kind, in_h, in_w, out_c, out_h, out_w, kernel, stride, pad, weights, levels, offset, step,
                  divisor, exact, size, constant, big, out, last, membrane):
    """One image of :func:`_encode` into ``out`` (``last`` and ``membrane``: buffers)."""
    plane = out_h * out_w
    tabled = levels.shape[1]
    last[:] = 0
    for i in range(image.shape[0]):
        if image[i] == 0:
            continue
        value = float(image[i])
        if kind == 1:  # dense: every pixel reaches every neuron
            _add_scaled(last, 0, weights, i * out_c, out_c, value)
            continue
        c, iy, ix = i // (in_h * in_w), (i // in_w) % in_h, i % in_w
        for ky in range(kernel):
            y = reached(iy, pad, ky, stride, out_h)
            if y < 0:
                continue
            if stride == 1:  # the reached outputs of a kernel row are side by side: one add
                first_x = ix + pad - kernel + 1  # reached by the rotated kernel column 0
                lo, hi = max(0, -first_x), min(kernel - 1, out_w - 1 - first_x)
                if hi >= lo:
                    at = (y * out_w + first_x + lo) * out_c
                    row = ((c * kernel + ky) * kernel + lo) * out_c
                    _add_scaled(last, at, weights, row, (hi - lo + 1) * out_c, value)
                continue
            for kx in range(kernel):
                x = reached(ix, pad, kx, stride, out_w)
                if x < 0:
                    continue
                at = (y * out_w + x) * out_c
                row = ((c * kernel + ky) * kernel + kernel - 1 - kx) * out_c
                _add_scaled(last, at, weights, row, out_c, value)
    for p in range(plane):
        for o in range(out_c):
            membrane[o * plane + p] = last[p * out_c + o]
    out[:] = 0
    for o in range(out_c):
        v = membrane[o * plane : (o + 1) * plane]
        counts = out[o * plane : (o + 1) * plane]
        table_counts(v, counts, levels[o])  # (levels beyond the channel's size: out of reach)
        for p in range(plane):
            if counts[p] == tabled:  # beyond the table
                counts[p] = walk_up(tabled, v[p], o, offset, step, divisor, exact, size, constant, big)


@njit(inline="always", cache=True)
def _add_scaled(membrane, start, weights, row, width, value):
    """membrane[start:start+width] += value * weights[row:row+width] (exact: integers)."""
    target = membrane[start : start + width]
    source = weights[row : row + width]
    for o in range(width):
        target[o] += value * source[o]


def encode(program: Program, pixels: np.ndarray) -> np.ndarray:
    """The encoding layer's counts (images, neurons) int64, channel-first, from raw integer
    pixels (images, C, H, W): its exact membrane and count in one pass, on the CPU."""
    flat = np.ascontiguousarray(pixels.reshape(pixels.shape[0], int(np.prod(pixels.shape[1:]))), dtype=np.uint8)
    out = np.empty((flat.shape[0], int(program.outputs[1])), np.int64)  # every entry is written
    tables = _encoding_tables(program.offset, program.step, program.divisor, program.exact, program.size, program.constant,
                              program.geometry)
    _encode(flat, program.geometry, program.encoding_weights, program.encoding_levels, *tables, out, _chunks(len(flat)))
    return out


class EngineRun(NamedTuple):
    """What :func:`run` returns, per image (see :func:`_simulate`)."""

    positive: np.ndarray  # (images, layers, steps) +1 spikes
    negative: np.ndarray  # (images, layers, steps) -1 spikes
    sops: np.ndarray  # (images, layers, steps) synaptic operations of each layer's spikes
    spiking: np.ndarray  # (images, layers) neurons that spiked at least once
    predictions: np.ndarray  # (images, steps) the class after each step
    counts: np.ndarray  # (images, neurons) int32 final counts, layer after layer
    used: np.ndarray  # (images,) steps the image took
    membranes: np.ndarray  # (images, hidden neurons) final membranes (see ``every_membrane``)
    logits: np.ndarray  # (images, classes) the output accumulator at the end
    unsettled: np.ndarray  # (images, layers) neurons whose count is not between its two thresholds


def allocate(program: Program, images: int, steps: int, membranes: bool = True) -> EngineRun:
    """The arrays :func:`run` writes for ``images`` images over ``steps`` steps (the
    records zeroed; counts, membranes and logits left for the kernel to write; no
    membranes at all unless ``membranes``)."""
    layers = program.geometry.shape[0]
    positive = np.zeros((images, layers, steps), np.int64)
    hidden = int(program.outputs[-1] - program.outputs[1])
    return EngineRun(
        positive=positive,
        negative=np.zeros_like(positive),
        sops=np.zeros_like(positive),
        spiking=np.zeros((images, layers), np.int64),
        predictions=np.zeros((images, steps), np.int64),
        counts=np.empty((images, int(program.outputs[-1])), np.int32),  # every entry is written
        used=np.zeros(images, np.int64),
        membranes=np.empty((images, hidden if membranes else 0), program.dtype),  # see every_membrane
        logits=np.empty((images, program.output.shape[1]), np.int64),
        unsettled=np.zeros((images, layers), np.int64),
    )


def run(program: Program, encoding_counts: np.ndarray, steps: int, auto: bool, every_membrane: bool = True,
        out: EngineRun | None = None, membranes: bool = True) -> EngineRun:
    """Run the kernel (an :class:`EngineRun` of per-image arrays, written into ``out``
    when given: rows of :func:`allocate`'s arrays, for as many images). The final
    membranes are written for every image if ``every_membrane``, else only for the images
    with some unsettled neuron (``unsettled[b].any()``; column 0 counts the encoding
    neurons whose spike train was cut short); the other rows are left as they were. Without
    ``membranes`` (a caller that reads none) they are not written at all: the array has
    no columns."""
    images = encoding_counts.shape[0]
    out = allocate(program, images, steps, membranes) if out is None else out
    _simulate(
        np.ascontiguousarray(encoding_counts, dtype=np.int64), program.geometry, program.weights,
        program.offset, program.step, program.divisor, program.exact, program.size, program.constant,
        program.output, program.big, program.neurons, program.outputs, program.initial_upper, program.origin, program.reach,
        program.channel_of, program.encoding_order, program.first_index,
        program.levels, steps, auto, *out,
        _chunks(images), min(steps, WINDOW), every_membrane,
    )
    return out


def _chunks(images: int) -> int:
    """Chunks of images for the parallel kernels: one per thread. numba hands each thread
    an equal run of consecutive iterations, so more chunks would not balance the threads;
    they would only allocate more sets of state buffers."""
    return max(1, min(images, numba.get_num_threads()))


def threads() -> int:
    return numba.get_num_threads()


def compiled_on_disk() -> bool:
    """Whether numba's on-disk cache already holds the simulation kernel for this source
    (else the first run compiles the kernels, which takes about a minute)."""
    try:
        return bool(_simulate._cache._cache_file._load_index())
    except (AttributeError, OSError, EOFError, ValueError):  # (numba internals moved: do not guess)
        return True
