"""The event engine for spiking graphs: exact kernels compiled with numba (CPU).

It runs a :class:`qsnn.snn.graph.SpikingGraph` under a time-stepped scheme (NSD, INT) one
image at a time, images in parallel (numba ``prange``), doing work where spikes are:

- What the pixels and the biases give is the same at every step, so it is computed once,
  densely, in PyTorch (:func:`static_currents`, from the graph evaluated with every
  population silent): every population's constant input, added to its membranes at
  t = 0, and the output's constant part. Every node is linear between populations, so the rest of each
  membrane is what the spikes bring.
- At each step the nodes run in execution order. A weighted node, average pool, addition,
  concatenation or flattening receives the events of its inputs (a population's signed
  spikes, or the non-zero changes of another node) and adds each event's weights to
  exactly the outputs it reaches (a convolution's fan-out, borders, strides, dilation and
  groups included). A node whose inputs did not change is skipped.
- A population adds its input's change to its integer membranes and steps its neurons:
  NSD's and INT's hidden neurons fire +1 when V >= T(c) (c below the levels) and -1 when
  c > 0 and V < T(c - 1), with c the count (INT's adapting thresholds are these very
  T(c) and T(c - 1)); INT's encoding neurons fire at step t when V >= T(t). A population
  that received nothing and fired nothing the step before is skipped.
- An image stops after a step in which none of its neurons fired (t > 0): nothing can
  change after that. With a given number of steps it runs them all.

Every membrane, weight and threshold is an integer held in float64, exact because the
graph's integer grids keep every value, product and sum below 2^53 (and float64 additions
vectorize); T(i) = ceil(d (2 i + 1) / 2^(k+1)) in a table per population cut where it
passes the largest membrane the population can hold, so the engine computes exactly what
:mod:`qsnn.sim.graph`'s step-by-step simulation computes: the same counts, spikes per
population and step, SOPs (every event times the synapses it reaches, from the same synapse
maps) and predictions; the tests check it record for record.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import torch
from numba import njit, prange

from qsnn.snn.graph import LINEAR, SpikingGraph

KINDS = {"input": 0, "conv": 1, "linear": 2, "scale": 3, "avgpool": 4, "add": 5, "cat": 6, "flatten": 7, "quant": 8,
         "output": 9}
INPUT, CONV, LINEAR_KIND, SCALE, AVGPOOL, ADD, CAT, FLATTEN, QUANT, OUTPUT = range(10)
# the neuron models the engine runs, by their names in qsnn.snn.neurons.NEURON_MODELS
ENGINE_MODELS = {"negative-spike": 0, "adaptive": 0, "rising-threshold": 1}
COUNTING, RISING = 0, 1
# geometry columns
(G_KIND, G_SIZE, G_OFFSET, G_C, G_H, G_W, G_IN_C, G_IN_H, G_IN_W, G_SOURCES, G_NSOURCES, G_WEIGHTS, G_KH, G_KW,
 G_SH, G_SW, G_PH, G_PW, G_DH, G_DW, G_GROUPS, G_SYNAPSES, G_POPULATION) = range(23)
GEOMETRY_WIDTH = 23
# population columns: node, model, table offset, table length, state offset, size
P_NODE, P_MODEL, P_TABLE, P_LENGTH, P_STATE, P_SIZE = range(6)


class GraphProgram(NamedTuple):
    """A spiking graph laid out for the kernel (flat arrays, neurons channel-last)."""

    geometry: np.ndarray  # int64 [nodes, GEOMETRY_WIDTH]
    sources: np.ndarray  # int64: every node's input nodes, from geometry's G_SOURCES
    multipliers: np.ndarray  # int64: per input, the factor onto the node's grid
    offsets: np.ndarray  # int64: per input, where it lands in a concatenation (elements)
    weights: np.ndarray  # float64 integers: conv (in/groups, kh, kw reversed, out), linear (in, out), scale (channels)
    synapses: np.ndarray  # int64: per input element of an evented node, the synapses it reaches
    populations: np.ndarray  # int64 [P, 6]
    tables: np.ndarray  # float64 integers: every population's T(0 .. length - 1)
    buffer_size: int  # elements of every non-population node's change
    state_size: int  # neurons of every population
    classes: int


def _shape3(shape: tuple[int, ...]) -> tuple[int, int, int]:
    return (shape[0], shape[1], shape[2]) if len(shape) == 3 else (math.prod(shape), 1, 1)


def _table(d: int, k: int, levels: int, largest: int) -> list[int]:
    """T(0), T(1), ... up to the levels, or to the first beyond the largest membrane
    (unreachable, and so is every one above it)."""
    table = []
    for i in range(levels):
        value = -(-(d * (2 * i + 1)) // (2 << k))
        table.append(value)
        if value > largest:
            break
    return table


def compile_graph(graph: SpikingGraph, synapse_maps: dict[str, torch.Tensor], neuron_models: dict[str, str]) -> GraphProgram:
    """The program of ``graph``: ``synapse_maps`` per evented node (qsnn.sim.graph's),
    ``neuron_models`` the neuron model's name per population."""
    index = {node.name: i for i, node in enumerate(graph.nodes)}
    geometry = np.zeros((len(graph.nodes), GEOMETRY_WIDTH), np.int64)
    sources, multipliers, offsets, weights, synapses, tables, populations = [], [], [], [], [], [], []
    buffer, state, weight_at, synapse_at = 0, 0, 0, 0
    for i, node in enumerate(graph.nodes):
        row = geometry[i]
        c, h, w = _shape3(node.shape)
        size = c * h * w
        row[[G_KIND, G_SIZE, G_C, G_H, G_W]] = KINDS[node.kind], size, c, h, w
        row[G_SYNAPSES] = row[G_POPULATION] = -1
        if node.inputs:
            row[[G_IN_C, G_IN_H, G_IN_W]] = _shape3(graph.by_name[node.inputs[0]].shape)
        row[G_SOURCES], row[G_NSOURCES] = len(sources), len(node.inputs)
        factors = node.multipliers if node.kind in ("add", "cat") else (node.multipliers[:1] or (1,))
        at = 0
        for number, name in enumerate(node.inputs):
            sources.append(index[name])
            multipliers.append(int(factors[number]) if number < len(factors) else 1)
            offsets.append(at)
            if node.kind == "cat":  # (channel-last: where its channels start)
                at += graph.by_name[name].shape[0]
        if node.kind == "quant":
            source = graph.by_name[node.inputs[0]]
            table = _table(source.denominator, node.attrs["k"], node.levels, math.ceil(source.bound))
            row[G_POPULATION] = len(populations)
            populations.append((i, ENGINE_MODELS[neuron_models[node.name]], len(tables), len(table), state, size))
            tables.extend(table)
            row[G_OFFSET] = state
            state += size
            continue
        row[G_OFFSET] = buffer
        buffer += size
        if node.kind in LINEAR:
            row[G_WEIGHTS] = weight_at
            flat = _kernel_layout(node)
            weights.append(flat)
            weight_at += flat.size
        if node.kind in ("conv", "avgpool"):
            a = node.attrs
            kernel = node.weight.shape[2:] if node.kind == "conv" else a["kernel"]
            row[[G_KH, G_KW]] = kernel
            row[[G_SH, G_SW]] = a["stride"]
            row[[G_PH, G_PW]] = a["padding"]
            row[[G_DH, G_DW]] = a.get("dilation", (1, 1))
            row[G_GROUPS] = a.get("groups", 1)
        if node.name in synapse_maps:
            row[G_SYNAPSES] = synapse_at
            counts = channel_last(synapse_maps[node.name][None]).reshape(-1).cpu().numpy().astype(np.int64)
            synapses.append(counts)
            synapse_at += counts.size
    return GraphProgram(
        geometry, np.array(sources, np.int64), np.array(multipliers, np.int64), np.array(offsets, np.int64),
        np.concatenate(weights) if weights else np.zeros(0), np.concatenate(synapses) if synapses else np.zeros(0, np.int64),
        np.array(populations, np.int64).reshape(-1, 6), np.array(tables, np.float64), buffer, state, graph.classes,
    )


def _kernel_layout(node) -> np.ndarray:
    """A weighted node's integer weights in the order its events read them."""
    if node.kind == "conv":
        return np.ascontiguousarray(node.weight[:, :, :, ::-1].transpose(1, 2, 3, 0)).reshape(-1).astype(np.float64)
    if node.kind == "linear":
        return np.ascontiguousarray(node.weight.T).reshape(-1).astype(np.float64)
    return node.weight.reshape(-1).astype(np.float64)


def static_currents(graph: SpikingGraph, silent: dict[str, torch.Tensor], program: GraphProgram) -> tuple[np.ndarray, np.ndarray]:
    """What the pixels and biases give every population's input and the output (``silent``:
    :func:`qsnn.snn.graph.silent_values`): float64 integers (images, neurons of every
    population, channel-last), (images, classes)."""
    images = len(silent[graph.nodes[0].name])
    currents = np.zeros((images, program.state_size), np.float64)
    for p, node in enumerate(graph.populations):
        start, size = program.populations[p, P_STATE], program.populations[p, P_SIZE]
        currents[:, start:start + size] = channel_last(silent[node.inputs[0]]).reshape(images, -1).cpu().numpy()
    return currents, silent[graph.nodes[-1].name].cpu().numpy().astype(np.float64)


def channel_last(values: torch.Tensor) -> torch.Tensor:
    """(images, C, H, W) as (images, H, W, C), the engine's order; vectors as they are."""
    return values.permute(0, 2, 3, 1) if values.dim() == 4 else values


def channel_first(values: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """The engine's (images, neurons) of a population of ``shape`` as (images, *shape)."""
    if len(shape) == 3:
        c, h, w = shape
        return values.reshape(len(values), h, w, c).transpose(0, 3, 1, 2)
    return values.reshape(len(values), *shape)


class EngineRecord(NamedTuple):
    """Per image: spikes per population and step, SOPs and predictions per step, the steps
    it ran (0: not done within the steps allowed), and its final counts."""

    positive: np.ndarray  # int64 [images, populations, cap]
    negative: np.ndarray
    sops: np.ndarray  # int64 [images, cap]
    predictions: np.ndarray  # int64 [images, cap]
    steps: np.ndarray  # int64 [images]
    counts: np.ndarray  # int64 [images, neurons of every population]


def run(program: GraphProgram, currents: np.ndarray, output: np.ndarray, cap: int, fixed: bool) -> EngineRecord:
    """Simulate every image for up to ``cap`` steps (``fixed``: exactly ``cap``)."""
    images, populations = len(currents), len(program.populations)
    record = EngineRecord(
        np.zeros((images, populations, cap), np.int64), np.zeros((images, populations, cap), np.int64),
        np.zeros((images, cap), np.int64), np.zeros((images, cap), np.int64), np.zeros(images, np.int64),
        np.zeros((images, program.state_size), np.int64),
    )
    _simulate(program.geometry, program.sources, program.multipliers, program.offsets, program.weights,
              program.synapses, program.populations, program.tables, program.buffer_size, currents, output, cap, fixed,
              *record)
    return record


@njit(parallel=True, cache=True)
def _simulate(geometry, sources, multipliers, offsets, weights, synapses, populations, tables, buffer_size, currents,
              output, cap, fixed, positive, negative, sops, predictions, steps, counts):
    for b in prange(len(currents)):
        _simulate_image(geometry, sources, multipliers, offsets, weights, synapses, populations, tables, buffer_size,
                        currents[b], output[b], cap, fixed, positive[b], negative[b], sops[b], predictions[b], steps[b:b + 1],
                        counts[b])


@njit(cache=True)
def _simulate_image(geometry, sources, multipliers, offsets, weights, synapses, populations, tables, buffer_size, current,
                    output, cap, fixed, positive, negative, sops, predictions, steps, counts):
    nodes = len(geometry)
    values = np.zeros(buffer_size, np.float64)  # every non-population node's change in this step
    membranes = current.copy()  # t = 0: what the pixels and biases give
    spikes = np.zeros(len(current), np.int64)  # every population's fired neurons of this step...
    signs = np.zeros(len(current), np.int64)  # ...and their signs
    fired = np.zeros(len(populations), np.int64)
    changed = np.zeros(nodes, np.bool_)
    largest = 1
    for n in range(nodes):
        largest = max(largest, geometry[n, G_SIZE])
    events = np.zeros(largest, np.int64)  # one source's events: element and amount
    amounts = np.zeros(largest, np.float64)
    logits = output.copy()
    for t in range(cap):
        for n in range(nodes):  # (the last step's changes are spent)
            if changed[n] and geometry[n, G_KIND] != QUANT:
                start = geometry[n, G_OFFSET]
                values[start:start + geometry[n, G_SIZE]] = 0
            changed[n] = False
        silent = True
        for n in range(nodes):
            kind = geometry[n, G_KIND]
            if kind == INPUT:
                continue
            if kind == QUANT:
                p = geometry[n, G_POPULATION]
                count = _population_step(geometry, sources, populations, tables, values, membranes, counts, spikes, signs,
                                         fired, changed, n, p, t)
                changed[n] = count > 0
                silent = silent and count == 0
                continue
            for j in range(geometry[n, G_SOURCES], geometry[n, G_SOURCES] + geometry[n, G_NSOURCES]):
                s = sources[j]
                if changed[s]:
                    sops[t] += _deliver(geometry, populations, weights, synapses, values, spikes, signs, fired, events,
                                        amounts, n, s, multipliers[j], offsets[j])
                    changed[n] = True
            if kind == OUTPUT and changed[n]:
                start = geometry[n, G_OFFSET]
                for i in range(geometry[n, G_SIZE]):
                    logits[i] += values[start + i]
        best = 0
        for i in range(1, len(logits)):
            if logits[i] > logits[best]:
                best = i
        predictions[t] = best
        p_index = 0
        for n in range(nodes):
            if geometry[n, G_KIND] == QUANT:
                p = geometry[n, G_POPULATION]
                for e in range(fired[p]):
                    if signs[populations[p, P_STATE] + e] > 0:
                        positive[p_index, t] += 1
                    else:
                        negative[p_index, t] += 1
                p_index += 1
        if silent and t > 0 and not fixed:  # (the silent step only confirms the output)
            steps[0] = t
            return
    steps[0] = cap if fixed else 0


@njit(cache=True)
def _population_step(geometry, sources, populations, tables, values, membranes, counts, spikes, signs, fired, changed, n,
                     p, t):
    """Integrate the input's change and step the neurons; returns how many fired."""
    state, size = populations[p, P_STATE], populations[p, P_SIZE]
    table, length, model = populations[p, P_TABLE], populations[p, P_LENGTH], populations[p, P_MODEL]
    s = sources[geometry[n, G_SOURCES]]
    received = changed[s]
    if received:
        if geometry[s, G_KIND] == QUANT:  # (a population straight after another: its spikes)
            q = geometry[s, G_POPULATION]
            for e in range(fired[q]):
                membranes[state + spikes[populations[q, P_STATE] + e]] += signs[populations[q, P_STATE] + e]
        else:
            start = geometry[s, G_OFFSET]
            for i in range(size):
                membranes[state + i] += values[start + i]
    if not (received or t == 0 or fired[p] > 0 or (model == RISING and t < length)):
        fired[p] = 0
        return 0
    count = 0
    for i in range(size):
        v, c = membranes[state + i], counts[state + i]
        sign = 0
        if model == RISING:
            if t < length and v >= tables[table + t]:
                sign = 1
        elif c < length and v >= tables[table + c]:
            sign = 1
        elif c > 0 and v < tables[table + c - 1]:
            sign = -1
        if sign != 0:
            counts[state + i] = c + sign
            spikes[state + count] = i
            signs[state + count] = sign
            count += 1
    fired[p] = count
    return count


@njit(cache=True)
def _deliver(geometry, populations, weights, synapses, values, spikes, signs, fired, events, amounts, n, s, factor,
             offset):
    """Add the events of source ``s`` (a population's signed spikes, or another node's
    non-zero changes) into node ``n``'s change; returns the SOPs (each event times the
    synapses it reaches)."""
    count = 0
    if geometry[s, G_KIND] == QUANT:
        p = geometry[s, G_POPULATION]
        start = populations[p, P_STATE]
        count = fired[p]
        for e in range(count):
            events[e] = spikes[start + e]
            amounts[e] = signs[start + e] * factor
    else:
        start = geometry[s, G_OFFSET]
        for i in range(geometry[s, G_SIZE]):
            if values[start + i] != 0:
                events[count] = i
                amounts[count] = values[start + i] * factor
                count += 1
    kind = geometry[n, G_KIND]
    out = geometry[n, G_OFFSET]
    if kind == CONV:
        _conv_events(geometry, weights, values, events, amounts, count, n, out)
    elif kind == LINEAR_KIND:
        outputs = geometry[n, G_SIZE]
        for e in range(count):
            _add_row(values, out, weights, geometry[n, G_WEIGHTS] + events[e] * outputs, outputs, amounts[e])
    elif kind == SCALE:
        channels = geometry[n, G_C]
        for e in range(count):
            values[out + events[e]] += amounts[e] * weights[geometry[n, G_WEIGHTS] + events[e] % channels]
    elif kind == AVGPOOL:
        _pool_events(geometry, values, events, amounts, count, n, out)
    elif kind == FLATTEN and geometry[n, G_IN_H] * geometry[n, G_IN_W] > 1:  # channel-last in, channel-first out
        in_c, plane = geometry[n, G_IN_C], geometry[n, G_IN_H] * geometry[n, G_IN_W]
        for e in range(count):
            values[out + (events[e] % in_c) * plane + events[e] // in_c] += amounts[e]
    elif kind == CAT:  # channel-last: each position holds every input's channels in turn
        in_c, out_c = geometry[s, G_C], geometry[n, G_C]
        for e in range(count):
            values[out + (events[e] // in_c) * out_c + offset + events[e] % in_c] += amounts[e]
    else:  # add, flatten of a vector, output
        for e in range(count):
            values[out + events[e]] += amounts[e]
    total = 0
    if geometry[n, G_SYNAPSES] >= 0:
        first = geometry[n, G_SYNAPSES]
        for e in range(count):
            total += synapses[first + events[e]]
    return total


@njit(inline="always", cache=True)
def _conv_events(geometry, weights, values, events, amounts, count, n, out):
    """Channel-last: an input (y, x, c) adds, at every output position its kernel reaches,
    its weights to the output channels of its group. The weights' columns are stored
    right to left, so that with stride 1 and one group the outputs of a kernel row and
    the weights they take are two contiguous runs: one vectorized row per kernel row."""
    in_c, in_w = geometry[n, G_IN_C], geometry[n, G_IN_W]
    out_c, out_h, out_w = geometry[n, G_C], geometry[n, G_H], geometry[n, G_W]
    groups = geometry[n, G_GROUPS]
    per_group_in, per_group_out = in_c // groups, out_c // groups
    kh, kw, sh, sw = geometry[n, G_KH], geometry[n, G_KW], geometry[n, G_SH], geometry[n, G_SW]
    ph, pw, dh, dw = geometry[n, G_PH], geometry[n, G_PW], geometry[n, G_DH], geometry[n, G_DW]
    base = geometry[n, G_WEIGHTS]
    unit = sh == 1 and sw == 1 and dh == 1 and dw == 1
    for e in range(count):
        i, v = events[e], amounts[e]
        c = i % in_c
        y, x = i // (in_c * in_w), (i // in_c) % in_w
        group, ci = c // per_group_in, c % per_group_in
        first = group * per_group_out
        if unit:  # (stride and dilation 1: the outputs reached are a window, no divisions)
            left, right = max(0, x + pw - kw + 1), min(out_w, x + pw + 1)
            if left >= right:
                continue
            flipped = kw - 1 - (x + pw - left)  # (the weights' kx is stored reversed: left to right here)
            for oy in range(max(0, y + ph - kh + 1), min(out_h, y + ph + 1)):
                ky = y + ph - oy
                if groups == 1:  # one row: every output channel at every position of the row
                    _add_row(values, out + (oy * out_w + left) * out_c, weights,
                             base + ((ci * kh + ky) * kw + flipped) * out_c, (right - left) * out_c, v)
                else:
                    for ox in range(left, right):
                        _add_row(values, out + (oy * out_w + ox) * out_c + first, weights,
                                 base + ((ci * kh + ky) * kw + flipped + ox - left) * out_c + first, per_group_out, v)
            continue
        for ky in range(kh):
            num_y = y + ph - ky * dh
            if num_y < 0 or num_y % sh != 0 or num_y // sh >= out_h:
                continue
            oy = num_y // sh
            for kx in range(kw):
                num_x = x + pw - kx * dw
                if num_x < 0 or num_x % sw != 0 or num_x // sw >= out_w:
                    continue
                _add_row(values, out + (oy * out_w + num_x // sw) * out_c + first, weights,
                         base + ((ci * kh + ky) * kw + kw - 1 - kx) * out_c + first, per_group_out, v)


@njit(inline="always", cache=True)
def _pool_events(geometry, values, events, amounts, count, n, out):
    channels, in_w = geometry[n, G_IN_C], geometry[n, G_IN_W]
    out_h, out_w = geometry[n, G_H], geometry[n, G_W]
    kh, kw, sh, sw = geometry[n, G_KH], geometry[n, G_KW], geometry[n, G_SH], geometry[n, G_SW]
    ph, pw = geometry[n, G_PH], geometry[n, G_PW]
    for e in range(count):
        i, v = events[e], amounts[e]
        c = i % channels
        y, x = i // (channels * in_w), (i // channels) % in_w
        for ky in range(kh):
            num_y = y + ph - ky
            if num_y < 0 or num_y % sh != 0 or num_y // sh >= out_h:
                continue
            for kx in range(kw):
                num_x = x + pw - kx
                if num_x < 0 or num_x % sw != 0 or num_x // sw >= out_w:
                    continue
                values[out + ((num_y // sh) * out_w + num_x // sw) * channels + c] += v


@njit(inline="always", cache=True)
def _add_row(values, start, weights, row, width, v):
    """values[start:start+width] += v weights[row:row+width] (views let LLVM vectorize;
    a spike's +-1 needs no product)."""
    target = values[start : start + width]
    source = weights[row : row + width]
    if v == 1.0:
        for o in range(width):
            target[o] += source[o]
    elif v == -1.0:
        for o in range(width):
            target[o] -= source[o]
    else:
        for o in range(width):
            target[o] += v * source[o]
