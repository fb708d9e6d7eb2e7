"""Exact counting kernels: from integer membranes to counts, with the threshold tables.

The count of a neuron is the number of levels i of its channel's table T(i) that its
integer membrane reaches (:mod:`qsnn.snn.neurons`). These numba kernels compute it for
whole layers: a first guess from the linear estimate (A + i D) / S, settled against the
exact table (:func:`counts`, :func:`checked_counts`, :func:`gathered_counts`), and
:func:`certify`, which finds the neurons whose float estimate of a membrane is too near a
threshold to be trusted and recomputes those exactly. The tables' ANN
(:mod:`qsnn.snn.reference`), the converter and the event engine (:mod:`qsnn.sim.engine`)
all count with them.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

TABLED_LEVELS = 16  # T(i) kept in a table for the first levels of each channel


@njit(inline="always", cache=True)
def threshold_at(level, channel, offset, step, divisor, exact, size, constant, big):
    """T(level) of one neuron from the exact table, -big below 0, +big out of reach
    (``offset``, ``step``, ``divisor``: the linear estimate, not used here)."""
    if level < 0:
        return -big
    fixed = constant[channel]
    if fixed >= 0:
        return -big if level < fixed else big
    if level >= size[channel]:
        return big
    value = exact[channel, level]
    if value > big:
        return big
    if value < -big:
        return -big
    return value


@njit(inline="always", cache=True)
def _estimate(v, divisor, a, inverse, limit, special, margin):
    """The closed-form count floor((S floor(V) - A) / D) + 1, clamped to 0..limit, or -1
    where float64 cannot be sure of it (or the channel is constant or has D = 0), or
    where a threshold lies within ``margin`` (in units of D / S) of V. The linear
    estimate (A + i D) / S is within (1 + i) / 2S of the exact threshold theta_i, that is
    within (1 + i) / 2D levels: (1 + limit) / D more tolerance covers it, so a sure
    count is the exact table's."""
    scaled = np.floor(v) * divisor  # float64: an int64 floor times S could overflow
    q = (scaled - a) * inverse
    whole = np.floor(q)
    fraction = q - whole
    tolerance = 1e-13 * (abs(scaled) + abs(a)) * inverse + 1e-9 + margin + (1.0 + limit) * inverse
    level = min(max(whole + 1.0, 0.0), limit)
    sure = (fraction > tolerance) & (fraction < 1.0 - tolerance) & (special == 0)
    return np.int64(level) if sure else np.int64(-1)


@njit(inline="always", cache=True)
def _settle(v, channel, offset, step, divisor, exact, size, constant, big):
    """The count of one neuron where :func:`_estimate` was not sure: from the estimate,
    walk the exact integer table T(i) up and down."""
    fixed = constant[channel]
    if fixed >= 0:
        return fixed
    limit = size[channel]
    floor_v = np.floor(v)
    d = float(step[channel])
    if d > 0:
        scaled = floor_v * float(divisor)
        whole = math.floor((scaled - float(offset[channel])) / d)
        level = int(min(max(whole + 1.0, 0.0), float(limit)))
    else:
        level = limit if float(offset[channel]) <= floor_v * float(divisor) else 0
    while level < limit and threshold_at(level, channel, offset, step, divisor, exact, size, constant, big) <= floor_v:
        level += 1
    while level > 0 and threshold_at(level - 1, channel, offset, step, divisor, exact, size, constant, big) > floor_v:
        level -= 1
    return level


@njit(parallel=True, cache=True)
def _counts(membrane, channels, plane, offset, step, divisor, exact, size, constant, big, out, table, differing):
    """m(V) = #{i : V >= T(i)} for every neuron; ``membrane`` is (images, neurons) float32
    or float64 in channel-first order (integers, or any reals for the encoding layer under
    noise).

    T(i) is an integer, so T(i) <= V  <=>  (A + iD) / S <= floor(V), and the count is
    floor((S floor(V) - A) / D) + 1. A first, branch-free pass evaluates that in float64
    for every neuron; where its fractional part is too close to an integer for float64 to
    be sure, a second pass lets the exact integer table decide.

    With a ``table`` (T(i) of the first levels of every channel; empty for none), each
    image's counts are also taken by the other algorithm, the binary neurons' own
    (:func:`_gathered`: the number of thresholds V reaches), channel by channel while the
    channel is in cache, and the entries where the two differ go to ``differing``.
    """
    images = membrane.shape[0]
    a = offset.astype(np.float64)
    inverse = np.zeros(channels)
    limit = size.astype(np.float64)
    special = np.zeros(channels, np.int64)
    for channel in range(channels):
        if step[channel] > 0:
            inverse[channel] = 1.0 / float(step[channel])
        special[channel] = 1 if constant[channel] >= 0 or step[channel] <= 0 else 0
    scale = float(divisor)
    checking = table.shape[0] > 0
    across = np.ascontiguousarray(table.T)  # (level, channel)
    for b in prange(images):
        values = membrane[b]
        row = out[b]
        if plane == 1:  # one neuron per channel: vectorize across channels
            for n in range(channels):
                row[n] = _estimate(values[n], scale, a[n], inverse[n], limit[n], special[n], 0.0)
        else:  # (1-D slices per channel let LLVM vectorize the loop)
            for channel in range(channels):
                segment = membrane[b, channel * plane : (channel + 1) * plane]
                target = out[b, channel * plane : (channel + 1) * plane]
                ac, ic, lc, sc = a[channel], inverse[channel], limit[channel], special[channel]
                for p in range(plane):
                    target[p] = _estimate(segment[p], scale, ac, ic, lc, sc, 0.0)
        for n in range(channels * plane):
            if row[n] < 0:  # rare: the division is paid only here
                row[n] = _settle(values[n], n // plane, offset, step, divisor, exact, size, constant, big)
        if checking:
            found = np.zeros(channels * plane, np.int64)
            _binary_row(values, found, channels, plane, table, across, offset, step, divisor, exact, size, constant, big)
            different = 0
            for n in range(channels * plane):
                different += found[n] != row[n]
            differing[b] = different


@njit(inline="always", cache=True)
def _binary_row(values, row, channels, plane, table, across, offset, step, divisor, exact, size, constant, big):
    """row (zeros) = the number of binary neurons of every neuron of one image (channel-
    first ``values``) that fire: the thresholds T(i) it reaches, from ``table`` (the first
    levels of every channel; ``across``: the same, (level, channel)) and, beyond it, one
    exact threshold after the other."""
    tabled = table.shape[1]
    if plane == 1:  # one neuron per channel: across the channels, level by level
        for level in range(min(tabled, size.max()) if channels > 0 else 0):
            thresholds = across[level]
            firing = 0
            for n in range(channels):
                fires = np.int64((values[n] >= thresholds[n]) & (level < size[n]))
                row[n] += fires
                firing += fires
            if firing == 0:  # nobody reached this level, so nobody reaches the next
                break
        for n in range(channels):
            if row[n] == tabled:  # beyond the table
                row[n] = walk_up(tabled, values[n], n, offset, step, divisor, exact, size, constant, big)
        return
    for channel in range(channels):
        segment = values[channel * plane : (channel + 1) * plane]
        counts = row[channel * plane : (channel + 1) * plane]
        table_counts(segment, counts, table[channel, : min(size[channel], tabled)])
        if size[channel] > tabled:
            for p in range(plane):
                if counts[p] == tabled:
                    counts[p] = walk_up(tabled, segment[p], channel, offset, step, divisor, exact, size, constant, big)


@njit(inline="always", cache=True)
def reached(position, pad, offset, stride, size):
    """The output that the input at ``position`` reaches through kernel offset ``offset``
    (stride and padding as given), or -1 if none does."""
    n = position + pad - offset
    if n < 0 or n % stride != 0 or n // stride >= size:
        return -1
    return n // stride


@njit(inline="always", cache=True)
def table_counts(values, out, table):
    """out[p] += the number of the levels ``table`` (T(0), T(1), ... of one channel) that
    values[p] reaches; T is non-decreasing, so the first level nobody reaches ends it.
    (1-D slices let LLVM vectorize the loop.)"""
    for level in range(table.shape[0]):
        threshold = table[level]
        firing = 0
        for p in range(values.shape[0]):
            fires = np.int64(values[p] >= threshold)
            out[p] += fires
            firing += fires
        if firing == 0:  # nobody reached this level, so nobody reaches the next
            break


@njit(inline="always", cache=True)
def walk_up(level, v, channel, offset, step, divisor, exact, size, constant, big):
    """The count of membrane ``v`` from ``level`` (where a table of T(i) ended): one exact
    threshold after the other."""
    while level < size[channel] and threshold_at(level, channel, offset, step, divisor, exact, size, constant, big) <= v:
        level += 1
    return level


@njit(parallel=True, cache=True)
def _gathered(membrane, channels, plane, table, offset, step, divisor, exact, size, constant, big, out, reference, differing):
    """The binary neurons' own count: binary neuron i fires when V >= T(i), and the count
    is the number that fire, read from ``table`` (T(i) of the first levels of every
    channel, no division) and, beyond it, by scanning upwards; a different algorithm from
    :func:`_counts`, so that the spiking side and the reference ANN never share their
    counting code. (T is non-decreasing in i, so the neurons that fire are levels 0..m-1.)
    With a ``reference`` (the ANN's counts, same shape as ``out``; empty for none), each
    image's number of differing counts goes to ``differing``, while its row is in cache."""
    images = membrane.shape[0]
    across = np.ascontiguousarray(table.T)  # (level, channel), for one neuron per channel
    for b in prange(images):
        values = membrane[b]
        row = out[b]
        row[:] = 0
        _binary_row(values, row, channels, plane, table, across, offset, step, divisor, exact, size, constant, big)
        if reference.shape[0] > 0:
            expected = reference[b]
            found = 0
            for n in range(channels * plane):
                found += row[n] != expected[n]
            differing[b] = found


@njit(parallel=True, cache=True)
def _uncertain(membrane, bound, channels, plane, offset, step, divisor, exact, size, constant, big, doubt, found):
    """doubt[b, n] |= 1 where a threshold may lie within ``bound`` of v = membrane[b, n], so
    that the count m(V) of some V in [v - bound, v + bound] may differ from m(v); m is
    monotone, so elsewhere every such V has the count of v. One branch-free pass of
    :func:`_estimate` with the bound as its margin (+ 1 for the floor); channels with
    D = 0 are decided by the exact table. found[b]: doubtful neurons of image b."""
    images = membrane.shape[0]
    for b in prange(images):
        total = 0
        for channel in range(channels):
            segment = membrane[b, channel * plane : (channel + 1) * plane]
            target = doubt[b, channel * plane : (channel + 1) * plane]
            if constant[channel] >= 0:  # a constant count: nothing to decide
                continue
            if step[channel] <= 0:  # every threshold the same: ask the table
                for p in range(plane):
                    low = _settle(segment[p] - bound, channel, offset, step, divisor, exact, size, constant, big)
                    high = _settle(segment[p] + bound, channel, offset, step, divisor, exact, size, constant, big)
                    total += (low != high) & (target[p] == 0)  # each neuron counted once
                    target[p] |= low != high
                continue
            scale = float(divisor)
            a = float(offset[channel])
            inverse = 1.0 / float(step[channel])
            margin = (bound + 1.0) * scale * inverse
            for p in range(plane):
                near = _estimate(segment[p], scale, a, inverse, float(size[channel]), 0, margin) < 0
                total += near & (target[p] == 0)  # each neuron counted once, whatever the tables
                target[p] |= near
        found[b] += total


@njit(parallel=True, cache=True)
def _flagged(flags, starts, out):
    """The flat indices of the non-zero entries of ``flags`` (images, n), image b's going
    to out[starts[b]:starts[b + 1]] (its count of them known beforehand)."""
    width = flags.shape[1]
    for b in prange(flags.shape[0]):
        at = starts[b]
        if starts[b + 1] == at:
            continue
        for n in range(width):
            if flags[b, n]:
                out[at] = b * width + n
                at += 1


@njit(parallel=True, cache=True)
def _exact_at(inputs, weight, stride, pad, out_h, out_w, where, out):
    """The exact membrane of the neurons ``where`` (flat indices into (images, channels,
    out_h, out_w)): sum of weight x input over each one's receptive field, in float64,
    exact because every partial sum is an integer below 2^53. ``inputs`` (B, C, H, W),
    ``weight`` (O, C, K, K); a dense layer is a 1 x 1 convolution of a 1 x 1 image."""
    channels, kernel = weight.shape[1], weight.shape[2]
    height, width = inputs.shape[2], inputs.shape[3]
    outputs = weight.shape[0]
    for i in prange(where.shape[0]):
        flat = where[i]
        ox = flat % out_w
        oy = (flat // out_w) % out_h
        o = (flat // (out_w * out_h)) % outputs
        b = flat // (out_w * out_h * outputs)
        total = 0.0
        for c in range(channels):
            for ky in range(kernel):
                y = oy * stride + ky - pad
                if y < 0 or y >= height:
                    continue
                for kx in range(kernel):
                    x = ox * stride + kx - pad
                    if 0 <= x < width:
                        total += weight[o, c, ky, kx] * inputs[b, c, y, x]
        out[i] = total


@njit(parallel=True, cache=True)
def _corrected(membrane, weight, in_h, in_w, stride, pad, out_h, out_w, wanted, found):
    """membrane[i] += W (wanted[i] - found[i]) for every image i: the membranes that the
    inputs ``wanted`` give, from those that the inputs ``found`` gave, adding only the
    weights of the inputs that differ. ``membrane`` (images, O * out_h * out_w) float64,
    channel-first; ``weight`` (O, C, K, K) float64; inputs (images, C * in_h * in_w). Exact:
    every partial sum is W times inputs each taken from ``wanted`` or ``found``, all
    within the layer's bounds, so an integer below 2^53."""
    outputs, kernel = weight.shape[0], weight.shape[2]
    plane = out_h * out_w
    for i in prange(membrane.shape[0]):
        target = membrane[i]
        for j in range(wanted.shape[1]):
            delta = float(wanted[i, j] - found[i, j])
            if delta == 0.0:
                continue
            c, y, x = j // (in_h * in_w), (j // in_w) % in_h, j % in_w
            for ky in range(kernel):
                oy = reached(y, pad, ky, stride, out_h)
                for kx in range(kernel if oy >= 0 else 0):
                    ox = reached(x, pad, kx, stride, out_w)
                    if ox < 0:
                        continue
                    at = oy * out_w + ox
                    for o in range(outputs):
                        target[o * plane + at] += delta * weight[o, c, ky, kx]


def corrected_membranes(layer, membrane: np.ndarray, wanted: np.ndarray, found: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """The layer's exact membranes for the inputs ``wanted``, from its exact membranes
    ``membrane`` (images, ...) for the inputs ``found`` (see :func:`_corrected`);
    ``weight``: the layer's weights as float64. Returns a new float64 array."""
    images = membrane.shape[0]
    out = np.ascontiguousarray(membrane.reshape(images, -1), dtype=np.float64).copy()
    if layer.kind == "dense":  # a 1 x 1 convolution of a 1 x 1 image
        weight = weight.reshape(weight.shape[0], -1, 1, 1)
        geometry = (1, 1, 1, 0, 1, 1)
    else:
        geometry = (layer.in_shape[1], layer.in_shape[2], layer.stride, layer.padding, *layer.out_shape[1:])
    _corrected(out, weight, *geometry, wanted.reshape(images, -1), found.reshape(images, -1))
    return out.reshape(membrane.shape)


def certify(thresholds_list, layer, inputs: np.ndarray, estimate: np.ndarray, bound: float) -> int:
    """Make a float32 estimate of a layer's membrane good for counting: wherever a
    threshold of any of ``thresholds_list`` may lie within ``bound`` of the estimate, put
    the exact membrane there. ``estimate`` (images, channels, ...) float64 is changed in
    place; ``inputs`` are the layer's integer inputs as float64 (images, C, H, W) or
    (images, features). Returns how many neurons were recomputed."""
    images, channels = estimate.shape[0], estimate.shape[1]
    flat = estimate.reshape(images, -1)
    plane = flat.shape[1] // channels
    doubt = np.zeros(flat.shape, np.uint8)
    found = np.zeros(images, np.int64)
    for thresholds in thresholds_list:
        _uncertain(flat, float(bound), channels, plane, *_kernel_tables(thresholds), doubt, found)
    if not found.any():
        return 0
    where = np.empty(int(found.sum()), np.int64)
    _flagged(doubt, np.concatenate([[0], np.cumsum(found)]), where)
    weight = layer.weight.astype(np.float64)
    if layer.kind == "dense":
        weight = weight.reshape(weight.shape[0], -1, 1, 1)
        inputs = inputs.reshape(images, -1, 1, 1)
        geometry = (1, 0, 1, 1)
    else:
        geometry = (layer.stride, layer.padding, *layer.out_shape[1:])
    values = np.empty(where.size, np.float64)
    _exact_at(np.ascontiguousarray(inputs, dtype=np.float64), np.ascontiguousarray(weight), *geometry, where, values)
    flat.reshape(-1)[where] = values
    return int(where.size)


@njit(cache=True)
def fill_table(table, offset, step, divisor, exact, size, constant, big):
    """table[channel, i] = T(i) for the first table.shape[1] levels of every channel."""
    for channel in range(table.shape[0]):
        for level in range(table.shape[1]):
            table[channel, level] = threshold_at(level, channel, offset, step, divisor, exact, size, constant, big)


def gathered_counts(thresholds, membrane: np.ndarray, reference: np.ndarray | None = None):
    """Counts of the binary neurons that fire (V >= T(i)), by scanning up the table.

    With ``reference`` (counts of the same shape), returns (counts, number of entries that
    differ from it), compared in the same pass."""
    images = membrane.shape[0]
    differing = np.zeros(images if reference is not None else 0, np.int64)
    against = (
        np.ascontiguousarray(reference.reshape(images, -1), dtype=np.int64)
        if reference is not None else np.zeros((0, 0), np.int64)
    )
    out = _run_counts(_gathered, thresholds, membrane, tabled=TABLED_LEVELS, extra=(against, differing))
    return out if reference is None else (out, int(differing.sum()))


def counts(thresholds, membrane: np.ndarray) -> np.ndarray:
    """Exact counts m(V) for membranes (images, C, ...) float32 or float64, in parallel, by the tables
    of ``thresholds`` (a :class:`qsnn.snn.neurons.Thresholds`)."""
    images = membrane.shape[0]
    return _run_counts(_counts, thresholds, membrane, extra=(np.zeros((0, 0)), np.zeros(images, np.int64)))


def checked_counts(thresholds, membrane: np.ndarray) -> tuple[np.ndarray, int]:
    """:func:`counts`, and the number of neurons whose binary neurons' own count (the
    spiking side's algorithm, :func:`gathered_counts`) differs from it, in the same pass."""
    images = membrane.shape[0]
    differing = np.zeros(images, np.int64)
    table = np.empty((membrane.shape[1], TABLED_LEVELS), np.float64)
    fill_table(table, *_kernel_tables(thresholds))
    return _run_counts(_counts, thresholds, membrane, extra=(table, differing)), int(differing.sum())


def _kernel_tables(thresholds) -> tuple:
    """A :class:`qsnn.snn.neurons.Thresholds` as the kernels take it: (offset, step, divisor,
    exact table, size, constant, big)."""

    def as_int64(values) -> np.ndarray:
        return np.ascontiguousarray(values.numpy(), dtype=np.int64)

    return (as_int64(thresholds.offset), as_int64(thresholds.step), int(thresholds.divisor),
            as_int64(thresholds.table), as_int64(thresholds.size), as_int64(thresholds.constant), 2**54)


def _run_counts(kernel, thresholds, membrane: np.ndarray, tabled: int = 0, extra=()) -> np.ndarray:
    exact = membrane.dtype if membrane.dtype in (np.float32, np.float64) else np.float64
    flat = np.ascontiguousarray(membrane.reshape(membrane.shape[0], -1), dtype=exact)
    out = np.empty(flat.shape, np.int64)
    channels = membrane.shape[1]
    plane = flat.shape[1] // channels

    tables = _kernel_tables(thresholds)
    first = ()
    if tabled:
        first = (np.empty((channels, tabled), np.float64),)
        fill_table(first[0], *tables)
    kernel(flat, channels, plane, *first, *tables, out, *extra)
    return out.reshape(membrane.shape)
