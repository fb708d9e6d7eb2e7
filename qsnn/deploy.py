"""Reference runner of a ``qsnn-int`` deployment package, in plain NumPy (docs/EXPORT.md).

This module is the executable form of the package specification: it reads
``manifest.json`` and ``weights.npz`` (written by :func:`qsnn.export.export_package`) and
runs the integer spiking network exactly as a neuromorphic chip would: all state is
int64, and the weight products are exact integer products (computed in float32/float64
BLAS only where no partial sum can reach 2^24/2^53, see :class:`ExactMatrix`). It imports
no PyTorch, and of qsnn only the exception type, so it runs wherever NumPy does.

It reproduces :func:`qsnn.simulation.simulate_batch` bit for bit: predictions per step,
positive and negative spikes per layer and step, and final counts. It is event-driven
where that is free: an image none of whose neurons spiked in a step can never spike
again (its currents are zero from then on and no threshold comes closer), so it drops
out of the computation, and a layer's input current is computed only for images whose
previous layer spiked in that step.
"""

from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from qsnn.errors import QsnnError, integer_in

FORMAT = "qsnn-int"
SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
WEIGHTS = "weights.npz"
PLUS_INFINITY = int(np.iinfo(np.int64).max)  # T(i) for levels out of reach
MINUS_INFINITY = int(np.iinfo(np.int64).min)  # T(i) for levels below 0
AUTO_MAX_STEPS = 100_000
PIXEL_MAX = 255
SCHEMES = ("nsd", "sg", "int")
EXPORT_HINT = "re-create it with `qsnn export FILE --format qsnn-int -o DIR`"


# --- the package ----------------------------------------------------------------------


@dataclass(frozen=True)
class PackageLayer:
    """One spiking layer of a package: integer weights, geometry and threshold tables."""

    name: str
    kind: str  # "conv" or "dense"
    role: str  # "encoding" or "hidden"
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    kernel: int
    stride: int
    padding: int
    levels: int | None  # 2^k * B, or None when unbounded
    weight: np.ndarray  # int64, conv (O, C, k, k) or dense (O, features)
    offset: np.ndarray  # int64 [C]: A
    step: np.ndarray  # int64 [C]: D
    divisor: int  # S
    size: np.ndarray  # int64 [C]
    constant: np.ndarray  # int64 [C], -1 = input-driven
    table: np.ndarray | None  # int64 [C, levels] with sentinels, bounded layers only
    input_limit: float  # largest input (count) for which the membrane stays below 2^53

    @property
    def channels(self) -> int:
        return self.out_shape[0]

    def channel_index(self) -> np.ndarray:
        """Each neuron's channel, shaped to broadcast against a batch (N, *out_shape)."""
        shape = (1, self.channels) + (1,) * (len(self.out_shape) - 1)
        return np.arange(self.channels).reshape(shape)

    def thresholds(self, level: np.ndarray | int, channel: np.ndarray) -> np.ndarray:
        """T(level) of neurons in ``channel`` (int64; sentinels below 0 and out of reach)."""
        level = np.asarray(level, dtype=np.int64)
        if self.table is not None:  # the explicit table, padded with the two sentinels
            return self.padded_table[channel, np.clip(level, -1, self.table.shape[1]) + 1]
        return formula_thresholds(
            level, self.offset[channel], self.step[channel], self.divisor,
            self.size[channel], self.constant[channel],
        )

    @cached_property
    def padded_table(self) -> np.ndarray:
        """The table with a -inf column before level 0 and a +inf column after the last."""
        channels = self.table.shape[0]
        low = np.full((channels, 1), MINUS_INFINITY, np.int64)
        high = np.full((channels, 1), PLUS_INFINITY, np.int64)
        return np.concatenate([low, self.table, high], axis=1)

    @cached_property
    def matrix(self) -> ExactMatrix:
        return ExactMatrix(self.weight)

    def membrane(self, inputs: np.ndarray, largest_input: int, engine: str = "auto") -> np.ndarray:
        """The layer's linear map V = W (*) inputs on a batch of integer inputs (int64).

        ``largest_input`` bounds |inputs| (255 for pixels, 1 for spikes): it picks the
        narrowest exact arithmetic (see :class:`ExactMatrix`).
        """
        count = inputs.shape[0]
        dtype = self.matrix.dtype_for(largest_input, engine)
        inputs = inputs.astype(dtype, copy=False)
        if self.kind == "dense":
            return self.matrix.multiply(inputs.reshape(count, -1), dtype)
        out_h, out_w = self.out_shape[1:]
        if self.padding:
            pad = self.padding
            inputs = np.pad(inputs, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
        windows = sliding_window_view(inputs, (self.kernel, self.kernel), axis=(2, 3))
        windows = windows[:, :, :: self.stride, :: self.stride][:, :, :out_h, :out_w]
        columns = windows.transpose(0, 2, 3, 1, 4, 5).reshape(count * out_h * out_w, -1)
        out = self.matrix.multiply(columns, dtype)
        return out.reshape(count, out_h, out_w, self.channels).transpose(0, 3, 1, 2)


ENGINES = ("auto", "int64")


class ExactMatrix:
    """An integer weight matrix and the exact ways to multiply by it.

    Every partial sum of a product W @ x is an integer no larger in magnitude than
    ``row_bound * max|x|`` (row_bound: the largest sum of |W| over one output). float32
    holds every integer below 2^24 exactly and float64 every integer below 2^53, so a
    BLAS product in those types rounds nothing, in any summation order. Engine "auto"
    uses the narrowest exact type (float32, float64, else int64); "int64" always
    multiplies in int64. Either way the result is the exact integer product, as int64.
    """

    def __init__(self, weight: np.ndarray) -> None:
        self.matrix = np.ascontiguousarray(weight.reshape(weight.shape[0], -1).T, dtype=np.int64)
        self.row_bound = int(np.abs(self.matrix).sum(axis=0).max()) if self.matrix.size else 0
        self._cast: dict[np.dtype, np.ndarray] = {np.dtype(np.int64): self.matrix}

    def dtype_for(self, largest_input: int, engine: str = "auto") -> np.dtype:
        if engine not in ENGINES:
            raise QsnnError(f"unknown engine {engine!r}: use one of {', '.join(ENGINES)}")
        bound = self.row_bound * int(largest_input)
        if engine == "auto" and bound < 2**24:
            return np.dtype(np.float32)
        if engine == "auto" and bound < 2**53:
            return np.dtype(np.float64)
        return np.dtype(np.int64)

    def multiply(self, rows: np.ndarray, dtype: np.dtype) -> np.ndarray:
        """rows (n, features) of ``dtype`` @ the matrix, as exact int64 (n, outputs)."""
        if dtype not in self._cast:
            self._cast[dtype] = self.matrix.astype(dtype)
        return (rows.astype(dtype, copy=False) @ self._cast[dtype]).astype(np.int64, copy=False)


def formula_thresholds(level, offset, step, divisor: int, size, constant) -> np.ndarray:
    """T(i) = ceil((A + i D) / S) for 0 <= i < size, with the sentinels outside (int64).

    Constant channels (``constant`` >= 0): -inf below their count, +inf from it on.
    All arguments broadcast; ``A + i D`` stays below 2^62 for i <= size by construction.
    """
    level = np.asarray(level, dtype=np.int64)
    inside = np.clip(level, 0, size)
    raw = offset + inside * step
    value = -((-raw) // divisor)  # ceil division, exact in integers
    value = np.where(constant >= 0, np.where(level < constant, MINUS_INFINITY, PLUS_INFINITY), value)
    value = np.where(level < 0, MINUS_INFINITY, value)
    return np.where(level >= size, PLUS_INFINITY, value).astype(np.int64)


def threshold_table(offset, step, divisor: int, size, constant, levels: int) -> np.ndarray:
    """The explicit table T(i), i = 0 .. levels - 1, of every channel: int64 [C, levels]."""
    level = np.arange(levels, dtype=np.int64)[None, :]

    def column(values) -> np.ndarray:
        return np.asarray(values, dtype=np.int64)[:, None]

    return formula_thresholds(
        level, column(offset), column(step), int(divisor), column(size), column(constant)
    )


@dataclass(frozen=True)
class Package:
    """A loaded deployment package: scheme, time steps, layers and the output accumulator."""

    path: Path
    manifest: dict
    scheme: str
    time_steps: int | None  # None: run until no neuron spikes
    input_shape: tuple[int, ...]
    layers: tuple[PackageLayer, ...]
    output_weight: np.ndarray  # int64 (classes, features)
    output_input_limit: float

    @property
    def classes(self) -> int:
        return int(self.output_weight.shape[0])

    @cached_property
    def output_matrix(self) -> ExactMatrix:
        return ExactMatrix(self.output_weight)


def load(package_dir: str | Path) -> Package:
    """Read a package folder (``manifest.json`` + ``weights.npz``) and check it."""
    folder = Path(package_dir)
    manifest_path, weights_path = folder / MANIFEST, folder / WEIGHTS
    if not manifest_path.is_file() or not weights_path.is_file():
        raise QsnnError(f"{folder} is not a qsnn-int package (needs {MANIFEST} and {WEIGHTS}); {EXPORT_HINT}")
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        with np.load(weights_path, allow_pickle=False) as data:
            arrays = {key: data[key] for key in data.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, json.JSONDecodeError) as error:
        raise QsnnError(f"{folder} holds a damaged package ({type(error).__name__}); {EXPORT_HINT}") from None
    if not isinstance(manifest, dict):
        raise QsnnError(f"{manifest_path} is not a qsnn-int manifest (not a JSON object); {EXPORT_HINT}")
    if manifest.get("format") != FORMAT:
        raise QsnnError(f"{manifest_path} is not a qsnn-int manifest (format {manifest.get('format')!r}); {EXPORT_HINT}")
    if manifest.get("schema_version") != SCHEMA_VERSION:
        raise QsnnError(
            f"{manifest_path} has schema version {manifest.get('schema_version')}, this runner "
            f"reads version {SCHEMA_VERSION}; {EXPORT_HINT}"
        )
    try:
        layers = tuple(_layer(meta, arrays) for meta in manifest["layers"])
        output = manifest["output"]
        output_weight = _array(arrays, output["weight"]["key"])
        package = Package(
            path=folder,
            manifest=manifest,
            scheme=manifest["scheme"],
            time_steps=manifest["time_steps"],
            input_shape=tuple(manifest["input"]["shape"]),
            layers=layers,
            output_weight=output_weight,
            output_input_limit=_limit(output.get("input_limit")),
        )
    except (KeyError, TypeError, ValueError) as error:
        raise QsnnError(f"{manifest_path} is incomplete or inconsistent ({error!r}); {EXPORT_HINT}") from None
    if package.scheme not in SCHEMES:
        raise QsnnError(f"{manifest_path} names an unknown scheme {package.scheme!r}; {EXPORT_HINT}")
    if package.scheme == "sg" and any(layer.table is None for layer in layers):
        raise QsnnError(f"{manifest_path}: an SG layer lacks its threshold table; {EXPORT_HINT}")
    return package


def _array(arrays: dict[str, np.ndarray], key: str) -> np.ndarray:
    if key not in arrays:
        raise KeyError(f"{WEIGHTS} has no array {key!r}")
    values = arrays[key]
    if values.dtype.kind != "i":
        raise ValueError(f"array {key!r} is {values.dtype}, not a signed integer type")
    return values.astype(np.int64)


def _limit(value) -> float:
    return float("inf") if value is None else float(value)


def _layer(meta: dict, arrays: dict[str, np.ndarray]) -> PackageLayer:
    th = meta["thresholds"]
    table_key = th.get("table")
    layer = PackageLayer(
        name=meta["name"],
        kind=meta["kind"],
        role=meta["role"],
        in_shape=tuple(meta["in_shape"]),
        out_shape=tuple(meta["out_shape"]),
        kernel=int(meta["kernel"]),
        stride=int(meta["stride"]),
        padding=int(meta["padding"]),
        levels=meta["levels"],
        weight=_array(arrays, meta["weight"]["key"]),
        offset=_array(arrays, th["offset"]),
        step=_array(arrays, th["step"]),
        divisor=int(th["divisor"]),
        size=_array(arrays, th["size"]),
        constant=_array(arrays, th["constant"]),
        table=None if table_key is None else _array(arrays, table_key),
        input_limit=_limit(meta.get("input_limit")),
    )
    if layer.kind not in ("conv", "dense") or layer.divisor < 1:
        raise ValueError(f"layer {layer.name}: kind {layer.kind!r}, divisor {layer.divisor}")
    return layer


# --- running --------------------------------------------------------------------------


@dataclass
class DeployResult:
    """What a run produced (statistics summed over images, per step t = 1..T)."""

    predictions: np.ndarray  # (T, N) int64: the class after each step
    positive: np.ndarray  # (L, T) int64: +1 spikes per layer and step
    negative: np.ndarray  # (L, T) int64: -1 spikes
    logits: np.ndarray  # (N, classes) int64: the output accumulator at the end
    counts: list[np.ndarray] | None = field(default=None)  # per layer (N, *out_shape)

    @property
    def steps(self) -> int:
        return int(self.predictions.shape[0])

    @property
    def final_predictions(self) -> np.ndarray:
        return self.predictions[-1]


def run(
    package: Package | str | Path,
    images: np.ndarray,
    *,
    steps: int | None = None,
    batch_size: int = 1000,
    counts: bool = True,
    engine: str = "auto",
) -> DeployResult:
    """Run the package on uint8 images (N, C, H, W), streaming them in batches.

    ``steps``: time steps (default: the manifest's; None there too means "until no neuron
    spikes", decided per batch, shorter batches padded with their final prediction).
    SG always takes one step. ``counts``: keep every layer's final counts (for 10,000
    images of a big net these take memory; pass False to skip them). ``engine``: "auto"
    multiplies in the narrowest exact arithmetic, "int64" in int64 only (same results;
    see :class:`ExactMatrix`).
    """
    if engine not in ENGINES:
        raise QsnnError(f"unknown engine {engine!r}: use one of {', '.join(ENGINES)}")
    if not isinstance(package, Package):
        package = load(package)
    pixels = np.asarray(images)
    if pixels.dtype != np.uint8:
        raise QsnnError(f"images must be uint8 pixels 0..255, got dtype {pixels.dtype}; convert them first")
    if pixels.ndim != 4 or tuple(pixels.shape[1:]) != package.input_shape:
        raise QsnnError(
            f"the package expects images of shape (N, {', '.join(map(str, package.input_shape))}), "
            f"got {tuple(pixels.shape)}; crop them as the manifest's input section says"
        )
    steps = package.time_steps if steps is None else steps
    if steps is not None and not integer_in(steps, 1):
        raise QsnnError(f"steps must be a positive integer or None, got {steps!r}")
    if not integer_in(batch_size, 1):
        raise QsnnError(f"batch_size must be a positive integer, got {batch_size!r}")
    parts = [
        _run_batch(package, pixels[start : start + batch_size], steps, counts, engine)
        for start in range(0, len(pixels), batch_size)
    ]
    if not parts:
        raise QsnnError("no images to run; pass at least one")
    return _concatenate(parts, len(package.layers))


def _concatenate(parts: list[DeployResult], layers: int) -> DeployResult:
    total = max(part.steps for part in parts)
    predictions, positive, negative = [], np.zeros((layers, total), np.int64), np.zeros((layers, total), np.int64)
    for part in parts:
        pad = total - part.steps
        predictions.append(np.concatenate([part.predictions, np.repeat(part.predictions[-1:], pad, axis=0)]))
        positive[:, : part.steps] += part.positive
        negative[:, : part.steps] += part.negative
    counts = None
    if parts[0].counts is not None:
        counts = [np.concatenate([part.counts[i] for part in parts]) for i in range(layers)]
    logits = np.concatenate([part.logits for part in parts])
    return DeployResult(np.concatenate(predictions, axis=1), positive, negative, logits, counts)


def _check_limit(counts: np.ndarray, limit: float, receiver: str) -> None:
    if counts.size and np.isfinite(limit) and float(np.abs(counts).max()) > limit:
        raise QsnnError(
            f"an input to {receiver} reached {int(np.abs(counts).max())}, beyond {limit:.0f}, the "
            "largest for which its integer membrane is exact; train with an upper bound B"
        )


def _receiver(package: Package, index: int) -> tuple[float, str]:
    if index + 1 < len(package.layers):
        nxt = package.layers[index + 1]
        return nxt.input_limit, nxt.name
    return package.output_input_limit, "the output layer"


def _count_dtype(layer: PackageLayer):
    return np.int8 if layer.levels is not None and layer.levels < 128 else np.int64


def _run_batch(
    package: Package, pixels: np.ndarray, steps: int | None, keep_counts: bool, engine: str
) -> DeployResult:
    if package.scheme == "sg":
        return _run_sg(package, pixels, keep_counts, engine)
    return _run_temporal(package, pixels, steps, keep_counts, engine)


def _run_sg(package: Package, pixels: np.ndarray, keep_counts: bool, engine: str) -> DeployResult:
    """SG: one step. Binary neuron i of a channel fires iff V >= T(i); the next layer
    receives the gathered count n = number of fired copies (docs/EXPORT.md)."""
    x, largest = pixels, PIXEL_MAX
    positive, all_counts = [], []
    for index, layer in enumerate(package.layers):
        membrane = layer.membrane(x, largest, engine)
        table = layer.table.reshape((1, layer.channels) + (1,) * (len(layer.out_shape) - 1) + (-1,))
        n = (membrane[..., None] >= table).sum(axis=-1, dtype=np.int64)
        positive.append([int(n.sum())])
        all_counts.append(n.astype(_count_dtype(layer)))
        _check_limit(n, *_receiver(package, index))
        x, largest = n, layer.levels
    logits = package.output_matrix.multiply(x.reshape(len(x), -1), package.output_matrix.dtype_for(largest, engine))
    predictions = np.argmax(logits, axis=1)[None]
    positive_arr = np.array(positive, np.int64)
    return DeployResult(
        predictions, positive_arr, np.zeros_like(positive_arr), logits, all_counts if keep_counts else None
    )


class _State:
    """Per-layer neuron state of the images still active: membrane, count, thresholds."""

    def __init__(self, layer: PackageLayer, count: int) -> None:
        shape = (count, *layer.out_shape)
        self.membrane = np.zeros(shape, np.int64)
        self.count = np.zeros(shape, np.int64)
        self.channel = np.broadcast_to(layer.channel_index(), shape)
        self.upper = np.broadcast_to(layer.thresholds(0, layer.channel_index()), shape).copy()
        self.lower = np.full(shape, MINUS_INFINITY, np.int64)

    def keep(self, rows: np.ndarray) -> None:
        self.membrane, self.count = self.membrane[rows], self.count[rows]
        self.upper, self.lower = self.upper[rows], self.lower[rows]
        self.channel = np.broadcast_to(self.channel[:1], (len(rows), *self.channel.shape[1:]))


def _signed_step(layer: PackageLayer, state: _State) -> np.ndarray:
    """NSD / INT hidden neuron, after integrating: +1 if V >= upper = T(c), -1 if
    V < lower = T(c - 1), else 0; on a spike c moves by it and both thresholds move one
    level along the table. Returns the spikes (int64)."""
    spikes = (state.membrane >= state.upper).astype(np.int64) - (state.membrane < state.lower)
    moved = np.nonzero(spikes)
    if moved[0].size:
        count = state.count[moved] + spikes[moved]
        channel = state.channel[moved]
        state.count[moved] = count
        state.upper[moved] = layer.thresholds(count, channel)
        state.lower[moved] = layer.thresholds(count - 1, channel)
    return spikes


def _run_temporal(
    package: Package, pixels: np.ndarray, steps: int | None, keep_counts: bool, engine: str
) -> DeployResult:
    """NSD and INT: T steps, same-step propagation, input at t = 0 only (docs/EXPORT.md)."""
    layers = package.layers
    total = len(pixels)
    encoding_current = layers[0].membrane(pixels, PIXEL_MAX, engine)
    output_dtype = package.output_matrix.dtype_for(1, engine)
    states = [_State(layer, total) for layer in layers]
    accumulator = np.zeros((total, package.classes), np.int64)
    logits = np.zeros((total, package.classes), np.int64)
    final_counts = [np.zeros((total, *layer.out_shape), _count_dtype(layer)) for layer in layers]
    active = np.arange(total)  # original indices of the images still spiking
    prediction = np.zeros(total, np.int64)
    predictions, positive, negative = [], [], []
    limit = steps if steps is not None else AUTO_MAX_STEPS
    integer_encoding = package.scheme == "int"
    encoding_channels = layers[0].channel_index()
    states[0].membrane += encoding_current  # the input arrives once, at t = 0
    for t in range(limit):
        spiked = np.zeros(len(active), bool)
        step_positive, step_negative = [], []
        spikes = sending = None  # the previous layer's spikes, and which images sent any
        for index, layer in enumerate(layers):
            state = states[index]
            if index == 0 and integer_encoding:  # rising threshold: fire iff V >= T(t)
                spikes = (state.membrane >= layer.thresholds(t, encoding_channels)).astype(np.int64)
                state.count += spikes
            elif index == 0:
                spikes = _signed_step(layer, state)
            else:
                rows = np.nonzero(sending)[0]  # event-driven: only images whose sender spiked
                if rows.size:
                    state.membrane[rows] += layer.membrane(spikes[rows], 1, engine)
                spikes = _signed_step(layer, state)
            flat = spikes.reshape(len(active), -1)
            sending = (flat != 0).any(axis=1)
            spiked |= sending
            step_positive.append(int((flat > 0).sum()))
            step_negative.append(int((flat < 0).sum()))
            if layer.levels is None:  # bounded counts never exceed the receiver's limit
                _check_limit(state.count, *_receiver(package, index))
        rows = np.nonzero(sending)[0]
        if rows.size:
            accumulator[rows] += package.output_matrix.multiply(spikes[rows].reshape(rows.size, -1), output_dtype)
        prediction[active] = np.argmax(accumulator, axis=1)
        predictions.append(prediction.copy())
        positive.append(step_positive)
        negative.append(step_negative)
        silent = ~spiked  # these images can never spike again: retire them
        if silent.any():
            done = active[silent]
            logits[done] = accumulator[silent]
            for i, state in enumerate(states):
                final_counts[i][done] = state.count[silent]
            keep = np.nonzero(spiked)[0]
            active = active[keep]
            accumulator = accumulator[keep]
            for state in states:
                state.keep(keep)
        if not active.size:
            if steps is None and t > 0:  # the silent step only confirms the output is final
                predictions.pop()
                positive.pop()
                negative.pop()
            if steps is not None:  # nothing moves any more: the remaining steps repeat
                rest = steps - len(predictions)
                predictions.extend([prediction.copy()] * rest)
                positive.extend([[0] * len(layers)] * rest)
                negative.extend([[0] * len(layers)] * rest)
            break
    else:
        if steps is None:
            raise QsnnError(f"the network was still spiking after {AUTO_MAX_STEPS} steps; give steps")
        logits[active] = accumulator
        for i, state in enumerate(states):
            final_counts[i][active] = state.count
    return DeployResult(
        np.stack(predictions),
        np.array(positive, np.int64).T.reshape(len(layers), -1),
        np.array(negative, np.int64).T.reshape(len(layers), -1),
        logits,
        final_counts if keep_counts else None,
    )
