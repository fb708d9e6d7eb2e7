"""How many crossbar cores a spiking network needs (docs/EXPORT.md, "Core mapping").

A core is a crossbar of ``axons`` inputs x ``neurons`` outputs: each neuron on it may
have a synapse from each axon. The rule, per layer (the output accumulator included):

* Neurons to place: the layer's neurons times its copies (SG: every ANN neuron is 2^k*B
  binary neurons sharing one input; NSD/INT: 1). Axons: one per input neuron the core's
  neurons read, times the sender's copies (SG: the gather is folded into the weights, so
  every binary copy of a sender arrives on its own axon). The encoding layer's axons are
  the pixels (one per pixel, carrying its 8-bit value).
* Dense layer: its F inputs split into ceil(F / axons) groups and its M neurons into
  ceil(M / neurons) chunks; cores = groups x chunks.
* Convolution: a core holds a tile of th x tw output positions and, at every position,
  the same n of the (channels x copies) output neurons (n * th * tw <= neurons). Its axons
  are the input channels (x copies) over the tile's union window, whose rows number
  min((th - 1) * stride + kernel, H) (columns alike): channels x rows x cols <= axons.
  Only when a single output position's fan-in (channels x copies x kernel window)
  exceeds the axons are the input channels split into groups across cores whose partial
  sums are merged at the neuron (each group is a core, counted). Cores = tiles x neuron
  chunks x input groups; every tile size is tried and the fewest cores win.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass

from qsnn.errors import QsnnError, integer_in
from qsnn.snn import schemes
from qsnn.snn.model import SpikingLayer, SpikingNet


@dataclass(frozen=True)
class LayerMapping:
    """The cores of one layer and how its neurons and axons were cut."""

    name: str
    kind: str  # "conv" or "dense"
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    copies_in: int  # binary copies of each sender neuron (axons per sender neuron)
    copies_out: int  # binary copies of each of this layer's neurons
    fan_in: int  # axons one output neuron reads
    neurons: int  # neurons to place (out neurons x copies_out)
    tile: tuple[int, int]  # output rows x cols per core (1 x 1 for dense)
    neurons_per_position: int  # neurons per output position on one core
    input_groups: int  # fan-in split into this many partial-sum groups
    axons_used: int  # axons used on the fullest core
    cores: int

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class MappingReport:
    """Cores per layer for one core size, and the total."""

    scheme: str
    axons: int
    neurons: int
    layers: tuple[LayerMapping, ...]

    @property
    def total_cores(self) -> int:
        return sum(layer.cores for layer in self.layers)

    @property
    def total_neurons(self) -> int:
        return sum(layer.neurons for layer in self.layers)

    @property
    def utilization(self) -> float:
        """Neurons placed over neuron slots of all cores used."""
        return self.total_neurons / (self.total_cores * self.neurons) if self.total_cores else 0.0

    def to_dict(self) -> dict:
        return {
            "scheme": self.scheme,
            "core": {"axons": self.axons, "neurons": self.neurons},
            "layers": [layer.to_dict() for layer in self.layers],
            "total_cores": self.total_cores,
            "total_neurons": self.total_neurons,
            "neuron_utilization": self.utilization,
        }


def parse_core(text: str) -> tuple[int, int]:
    """``"256x256"`` -> (axons, neurons)."""
    match = re.fullmatch(r"\s*([1-9]\d*)\s*[xX]\s*([1-9]\d*)\s*", str(text))
    if not match:
        raise QsnnError(f"core size must be AXONSxNEURONS with positive integers, like 256x256; got {text!r}")
    return int(match.group(1)), int(match.group(2))


def _check_size(value, what: str) -> int:
    if not integer_in(value, 1):
        raise QsnnError(f"a core's {what} must be a positive integer, got {value!r}; use e.g. --core 256x256")
    return value


def map_dense(name: str, features: int, outputs: int, copies_in: int, copies_out: int,
              axons: int, neurons: int, in_shape=None, out_shape=None) -> LayerMapping:
    """A fully connected layer: input groups x neuron chunks."""
    fan_in = features * copies_in
    placed = outputs * copies_out
    groups = math.ceil(fan_in / axons)
    chunks = math.ceil(placed / neurons)
    return LayerMapping(
        name=name, kind="dense",
        in_shape=tuple(in_shape or (features,)), out_shape=tuple(out_shape or (outputs,)),
        copies_in=copies_in, copies_out=copies_out, fan_in=fan_in, neurons=placed,
        tile=(1, 1), neurons_per_position=min(placed, neurons), input_groups=groups,
        axons_used=min(fan_in, axons), cores=groups * chunks,
    )


def map_conv(name: str, in_shape: tuple[int, int, int], out_shape: tuple[int, int, int],
             kernel: int, stride: int, copies_in: int, copies_out: int,
             axons: int, neurons: int) -> LayerMapping:
    """A convolution: the tile size with the fewest cores (see the module docstring)."""
    channels, height, width = in_shape
    out_channels, out_h, out_w = out_shape
    units_in, units_out = channels * copies_in, out_channels * copies_out
    rows1, cols1 = min(kernel, height), min(kernel, width)
    if rows1 * cols1 > axons:
        raise QsnnError(
            f"{name}: one input channel's {rows1}x{cols1} window needs {rows1 * cols1} axons, "
            f"more than a core's {axons}; use cores with more axons"
        )
    split = units_in * rows1 * cols1 > axons  # one position's fan-in does not fit
    best = None
    for th in range(1, out_h + 1):
        rows = min((th - 1) * stride + kernel, height)
        for tw in range(1, out_w + 1):
            cols = min((tw - 1) * stride + kernel, width)
            window = rows * cols
            per_position = min(units_out, neurons // (th * tw))
            if per_position == 0 or window > axons:
                break  # wider tiles only get worse
            group = axons // window if split else units_in
            if group * window > axons:
                break
            groups = math.ceil(units_in / group)
            tiles = math.ceil(out_h / th) * math.ceil(out_w / tw)
            cores = tiles * math.ceil(units_out / per_position) * groups
            if best is None or cores < best[0]:
                best = (cores, (th, tw), per_position, groups, min(group, units_in) * window)
    assert best is not None  # a 1x1 tile always fits after the checks above
    cores, tile, per_position, groups, used = best
    return LayerMapping(
        name=name, kind="conv", in_shape=tuple(in_shape), out_shape=tuple(out_shape),
        copies_in=copies_in, copies_out=copies_out, fan_in=units_in * rows1 * cols1,
        neurons=units_out * out_h * out_w, tile=tile, neurons_per_position=per_position,
        input_groups=groups, axons_used=used, cores=cores,
    )


def _copies(net: SpikingNet, layer: SpikingLayer) -> int:
    return int(layer.levels) if schemes.of(net.scheme).binary_copies else 1


def map_cores(net: SpikingNet, axons: int = 256, neurons: int = 256) -> MappingReport:
    """Cores of ``axons`` x ``neurons`` each layer of ``net`` needs under its scheme."""
    axons, neurons = _check_size(axons, "axons"), _check_size(neurons, "neurons")
    mapped = []
    copies_in = 1  # pixels
    for index, layer in enumerate(net.layers):
        name = f"layer{index + 1}"
        copies_out = _copies(net, layer)
        if layer.kind == "conv":
            mapped.append(map_conv(
                name, layer.in_shape, layer.out_shape, layer.kernel, layer.stride,
                copies_in, copies_out, axons, neurons,
            ))
        else:
            mapped.append(map_dense(
                name, math.prod(layer.in_shape), layer.neurons, copies_in, copies_out,
                axons, neurons, layer.in_shape, layer.out_shape,
            ))
        copies_in = copies_out
    features = math.prod(net.layers[-1].out_shape)
    mapped.append(map_dense("output", features, net.classes, copies_in, 1, axons, neurons))
    return MappingReport(net.scheme, axons, neurons, tuple(mapped))


def format_mapping(report: MappingReport) -> str:
    """A plain-text table of the mapping, one line per layer and the total."""
    header = ("layer", "kind", "in -> out", "copies", "fan-in", "neurons", "tile", "per pos", "groups", "cores")
    rows = [header]
    for layer in report.layers:
        shapes = f"{'x'.join(map(str, layer.in_shape))} -> {'x'.join(map(str, layer.out_shape))}"
        rows.append((
            layer.name, layer.kind, shapes, f"{layer.copies_in}/{layer.copies_out}",
            f"{layer.fan_in:,}", f"{layer.neurons:,}", f"{layer.tile[0]}x{layer.tile[1]}",
            str(layer.neurons_per_position), str(layer.input_groups), f"{layer.cores:,}",
        ))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = [f"{report.scheme.upper()} on {report.axons}x{report.neurons} cores (axons x neurons)"]
    for row in rows:
        lines.append("  ".join(cell.ljust(w) if i < 3 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths))))
    lines.append(
        f"total: {report.total_cores:,} cores, {report.total_neurons:,} neurons "
        f"({100 * report.utilization:.1f}% of neuron slots used); copies = in/out per neuron"
    )
    return "\n".join(lines)
