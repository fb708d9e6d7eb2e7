"""The papers' network notation, parsed into a layer plan, and the papers' nets as presets.

Notation (as in the papers' tables), items joined by ``-``:

* ``20C5``  a convolution with 20 filters of 5x5 (stride 1). A suffix picks the padding:
  ``20C5s`` "same", ``20C5v`` "valid"; without one the dataset's default applies
  (valid for 28x28 MNIST-like images, same for 32x32 CIFAR images cropped to 24x24).
* ``P2``    NOT max pooling: a learnable 2x2 convolution with stride 2 and as many
  channels as its input, followed by batch norm and the quantizer like any block.
* ``500``   a hidden fully connected block (over the flattened map, which is what the
  original code's "convolution over the whole remaining map" computes).
* ``*2``    repeats the item before it (``64C3*2`` = ``64C3-64C3``).

The classifier (one output per class) is implied and always last.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

from qsnn.errors import QsnnError

_TOKEN = re.compile(
    r"(?:(?P<filters>[1-9]\d*)C(?P<kernel>[1-9]\d*)(?P<pad>[sv]?)"
    r"|P(?P<pool>[1-9]\d*)"
    r"|(?P<units>[1-9]\d*))"
    r"(?:\*(?P<repeat>[1-9]\d*))?"
)
_EXAMPLES = "expected items like 32C5, 32C5s, P2, 500 or 64C3*2, joined by '-'"

# Limits that keep a typo from allocating the machine away (all far beyond the papers' nets)
MAX_WIDTH = 65536  # filters or units of one item
MAX_KERNEL = 64  # kernel or P size
MAX_REPEAT = 256  # *n
MAX_ITEMS = 512  # items after repetition
MAX_PARAMETERS = 2 * 10**9  # weights of a whole net (8 GB in float32)
MAX_ACTIVATIONS = 10**8  # neurons of a whole net, per image


@dataclass(frozen=True)
class Conv:
    """``{filters}C{kernel}``: convolution, stride 1; ``padding`` None = dataset default."""

    filters: int
    kernel: int
    padding: str | None = None

    def token(self) -> str:
        suffix = {"same": "s", "valid": "v", None: ""}[self.padding]
        return f"{self.filters}C{self.kernel}{suffix}"


@dataclass(frozen=True)
class Pool:
    """``P{size}``: the papers' learnable size x size convolution with stride ``size``."""

    size: int

    def token(self) -> str:
        return f"P{self.size}"


@dataclass(frozen=True)
class Dense:
    """``{units}``: a hidden fully connected block."""

    units: int

    def token(self) -> str:
        return str(self.units)


Item = Conv | Pool | Dense


def parse(notation: str) -> list[Item]:
    """Parse ``20C5-P2-50C5-P2-500`` into items, repetitions expanded.

    Raises :class:`QsnnError` naming the offending token and its position.
    """
    if not isinstance(notation, str) or not notation.strip():
        raise QsnnError(f"empty network notation: {_EXAMPLES}")
    text = notation.strip()
    if len(text) > 4096:
        raise QsnnError(f"bad network notation of {len(text):,} characters: too long ({_EXAMPLES})")
    items: list[Item] = []
    position = 0
    for number, token in enumerate(text.split("-"), start=1):
        match = _TOKEN.fullmatch(token)
        if match is None:
            raise QsnnError(
                f"bad network notation {text[:80]!r}: item {number} {token[:40]!r} at character "
                f"{position + 1} is not understood ({_EXAMPLES})"
            )

        def number_of(group: str, limit: int, what: str, token=token, number=number, match=match) -> int:
            digits = match[group]
            if len(digits) > 9 or int(digits) > limit:
                raise QsnnError(
                    f"bad network notation {text[:80]!r}: item {number} {token[:40]!r} asks for "
                    f"{digits[:12]}{'...' if len(digits) > 12 else ''} {what}; qsnn takes at most {limit:,}"
                )
            return int(digits)

        if match["filters"]:
            padding = {"s": "same", "v": "valid", "": None}[match["pad"]]
            item: Item = Conv(number_of("filters", MAX_WIDTH, "filters"), number_of("kernel", MAX_KERNEL, "as kernel size"), padding)
        elif match["pool"]:
            item = Pool(number_of("pool", MAX_KERNEL, "as P size"))
        else:
            item = Dense(number_of("units", MAX_WIDTH, "units"))
        repeat = number_of("repeat", MAX_REPEAT, "repetitions") if match["repeat"] else 1
        if len(items) + repeat > MAX_ITEMS:
            raise QsnnError(f"bad network notation {text[:80]!r}: more than {MAX_ITEMS} items once repeated; qsnn takes at most {MAX_ITEMS}")
        items.extend([item] * repeat)
        position += len(token) + 1
    return items


def format_items(items: list[Item]) -> str:
    """The inverse of :func:`parse` (repetitions written out, ``*n`` folded back)."""
    tokens: list[str] = []
    counts: list[int] = []
    for item in items:
        token = item.token()
        if tokens and tokens[-1] == token:
            counts[-1] += 1
        else:
            tokens.append(token)
            counts.append(1)
    return "-".join(t if c == 1 else f"{t}*{c}" for t, c in zip(tokens, counts, strict=True))


@dataclass(frozen=True)
class Layer:
    """One resolved layer: what it computes and the shapes around it.

    ``kind`` is "conv" (including the P blocks) or "dense"; the classifier is a "dense"
    layer with ``hidden=False``. Shapes are (channels, height, width) for conv layers and
    (features,) for dense ones; a dense layer after a conv layer reads the flattened map.
    """

    kind: str
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    kernel: int = 1
    stride: int = 1
    padding: int = 0
    hidden: bool = True
    token: str = ""

    @property
    def in_features(self) -> int:
        return math.prod(self.in_shape)

    @property
    def out_features(self) -> int:
        return math.prod(self.out_shape)

    @property
    def out_channels(self) -> int:
        return self.out_shape[0]

    @property
    def weight_shape(self) -> tuple[int, ...]:
        if self.kind == "conv":
            return (self.out_shape[0], self.in_shape[0], self.kernel, self.kernel)
        return (self.out_features, self.in_features)

    @property
    def fan_in(self) -> int:
        """Inputs per output neuron (the border ignored)."""
        if self.kind == "conv":
            return self.in_shape[0] * self.kernel * self.kernel
        return self.in_features

    @property
    def params(self) -> int:
        """Weights plus, for hidden layers, batch norm's gamma and beta."""
        weights = math.prod(self.weight_shape)
        return weights + (2 * self.out_channels if self.hidden else 0)

    @property
    def macs(self) -> int:
        """Multiply-accumulates of one forward pass, exact at the borders."""
        if self.kind == "dense":
            return self.in_features * self.out_features
        channels_in, height, width = self.in_shape
        channels_out, out_h, out_w = self.out_shape
        taps_h = _taps(height, out_h, self.kernel, self.stride, self.padding)
        taps_w = _taps(width, out_w, self.kernel, self.stride, self.padding)
        return channels_out * channels_in * taps_h * taps_w


def _taps(size: int, out_size: int, kernel: int, stride: int, padding: int) -> int:
    """Sum over output positions of kernel taps that land inside the input (1-D)."""
    total = 0
    for o in range(out_size):
        start = o * stride - padding
        total += max(0, min(start + kernel, size) - max(start, 0))
    return total


@dataclass(frozen=True)
class Plan:
    """A network: notation, input shape, and its resolved layers (classifier last)."""

    notation: str
    input_shape: tuple[int, int, int]
    num_classes: int
    layers: tuple[Layer, ...] = field(default_factory=tuple)

    @property
    def hidden(self) -> tuple[Layer, ...]:
        return self.layers[:-1]

    @property
    def classifier(self) -> Layer:
        return self.layers[-1]

    @property
    def params(self) -> int:
        return sum(layer.params for layer in self.layers)

    @property
    def macs(self) -> int:
        return sum(layer.macs for layer in self.layers)

    def describe(self) -> str:
        """A table of layers, output shapes and parameter counts."""
        rows = [("#", "layer", "output", "params", "MACs")]
        for index, layer in enumerate(self.layers, start=1):
            name = layer.token if layer.hidden else f"{layer.out_features} (classifier)"
            if layer.kind == "conv":
                name += f" k{layer.kernel} s{layer.stride} p{layer.padding}"
            shape = "x".join(str(s) for s in layer.out_shape)
            rows.append((str(index), name, shape, f"{layer.params:,}", f"{layer.macs:,}"))
        rows.append(("", "total", "", f"{self.params:,}", f"{self.macs:,}"))
        widths = [max(len(row[i]) for row in rows) for i in range(5)]
        lines = []
        for row in rows:
            cells = [row[0].rjust(widths[0]), row[1].ljust(widths[1]), row[2].ljust(widths[2])]
            cells += [row[3].rjust(widths[3]), row[4].rjust(widths[4])]
            lines.append("  ".join(cells).rstrip())
        return "\n".join(lines)


def build_plan(
    notation: str,
    input_shape: tuple[int, int, int],
    num_classes: int,
    default_padding: str = "valid",
) -> Plan:
    """Resolve notation against an input shape (C, H, W) into concrete layers."""
    if default_padding not in ("same", "valid"):
        raise QsnnError(f"padding must be 'same' or 'valid', got {default_padding!r}")
    if num_classes < 1:
        raise QsnnError(f"a network needs at least one class, got {num_classes}")
    items = parse(notation)
    layers: list[Layer] = []
    shape: tuple[int, ...] = tuple(input_shape)
    for number, item in enumerate(items, start=1):
        where = f"item {number} {item.token()!r} of {notation!r}"
        if isinstance(item, Dense):
            layer = Layer("dense", shape, (item.units,), token=item.token())
        else:
            if len(shape) != 3:
                raise QsnnError(
                    f"{where} is a convolution after a fully connected layer; "
                    "put convolutions and P blocks before the fully connected ones"
                )
            channels, height, width = shape
            if isinstance(item, Pool):
                kernel, stride, padding, out_channels = item.size, item.size, 0, channels
            else:
                kernel, stride, out_channels = item.kernel, 1, item.filters
                same = (item.padding or default_padding) == "same"
                if same and kernel % 2 == 0:
                    raise QsnnError(f"{where}: 'same' padding needs an odd kernel size")
                padding = kernel // 2 if same else 0
            out_h = (height + 2 * padding - kernel) // stride + 1
            out_w = (width + 2 * padding - kernel) // stride + 1
            if out_h < 1 or out_w < 1:
                fix = (
                    f"remove a layer or use 'same' padding (e.g. {item.token().rstrip('sv')}s)"
                    if isinstance(item, Conv) else "remove a layer or give a larger input"
                )
                raise QsnnError(f"{where} needs at least a {kernel}x{kernel} input but gets {height}x{width}; {fix}")
            layer = Layer(
                "conv", shape, (out_channels, out_h, out_w), kernel, stride, padding,
                token=item.token(),
            )
        layers.append(layer)
        shape = layer.out_shape
    layers.append(Layer("dense", shape, (num_classes,), hidden=False, token=str(num_classes)))
    parameters = sum(math.prod(layer.weight_shape) for layer in layers)
    activations = sum(math.prod(layer.out_shape) for layer in layers)
    if parameters > MAX_PARAMETERS or activations > MAX_ACTIVATIONS:
        raise QsnnError(
            f"{notation!r} on {'x'.join(map(str, input_shape))} inputs has {parameters:,} weights and "
            f"{activations:,} neurons per image; qsnn takes at most {MAX_PARAMETERS:,} and {MAX_ACTIVATIONS:,}"
        )
    return Plan(notation, tuple(input_shape), num_classes, tuple(layers))


@dataclass(frozen=True)
class Preset:
    """A net of the papers, as the original code trained it."""

    name: str
    notation: str
    dataset: str
    paper: str
    paper_notation: str
    note: str = ""


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in [
        Preset("nsd-lenet", "20C5-P2-50C5-P2-500", "mnist", "NSD", "20C5-P2-50C5-P2-500"),
        Preset("nsd-fmnist-mlp", "400-400", "fashion-mnist", "NSD", "400-400"),
        Preset(
            "nsd-fmnist-lenet", "32C5-P2-64C5-P2-1024", "fashion-mnist", "NSD",
            "32C5-P2-64C5-P2-1024",
        ),
        Preset(
            "nsd-cifar10-cnn1", "96C3-256C3-P2-384C3-P2-384C3-256C3-P2-1024-1024", "cifar10",
            "NSD", "96C3-256C3-P2-384C3-P2-384C3-256C3-P2-1024-1024",
            "the first 1024 block is a 3x3 unpadded convolution over the last 3x3 map",
        ),
        Preset(
            "nsd-cifar10-cnn2", "128C3-256C3-P2-512C3-P2-1024C3-512C3-P2-1024-512", "cifar10",
            "NSD", "128C3-256C3-P2-512C3-P2-1024C3-512C3-P2-1024-512",
            "the first 1024 block is a 3x3 unpadded convolution over the last 3x3 map",
        ),
        Preset(
            "sg-lenet", "16C5s-16C5-P2-32C5-P2-256", "mnist", "SG", "16C5-P2-16C5-P2-256",
            "the original code adds a same-padded 16C5 first and widens the second conv to 32",
        ),
        Preset(
            "sg-vgg", "64C3*3-P2-128C3*2-P2-256C3*2-P2-512C3-512", "cifar10", "SG",
            "64C3*2-P2-128C3*2-P2-256C3*2-P2-512C3-512",
            "CIFAR-10 and CIFAR-100 (use --dataset cifar100); the original code (vgg_cifar10.py, "
            "Spiking_VGG_CIFAR10.py) has a full-precision 64C3 encoding layer before the paper's two: "
            "12 convolutions",
        ),
        Preset("int-lenet", "32C5-P2-64C5-P2-1000", "mnist", "INT", "32C5-P2-64C5-P2-1000"),
        Preset(
            "int-cifar10-cnn1", "96C3-256C3-P2-384C3-P2-384C3-256C3-P2-1024-1024", "cifar10",
            "INT", "96C3-256C3-P2-384C3-P2-384C3-256C3-P2-1024-1024",
        ),
    ]
}


def resolve_net(net: str) -> tuple[str, Preset | None]:
    """A preset name or notation -> (notation, preset or None)."""
    preset = PRESETS.get(net)
    if preset is not None:
        return preset.notation, preset
    try:
        parse(net)
    except QsnnError:
        if isinstance(net, str) and any(char.islower() and char not in "sv" for char in net):
            names = ", ".join(PRESETS)
            raise QsnnError(
                f"unknown net {net[:80]!r}: give notation like 20C5-P2-50C5-P2-500 or a preset ({names})"
            ) from None
        raise
    return net.strip(), None
