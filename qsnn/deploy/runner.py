"""Reference runner of a ``qsnn-int`` deployment package, in plain NumPy (docs/EXPORT.md).

This module is the executable form of the package specification: it reads
``manifest.json`` and ``weights.npz`` (written by :func:`qsnn.deploy.export.export_package`) and
runs the integer spiking network exactly as a neuromorphic chip would: all state is
int64, and the weight products are exact integer products (computed in float32/float64
BLAS only where no partial sum can reach 2^24/2^53, see :class:`ExactMatrix`). It imports
no PyTorch, and of qsnn only the exception type, so it runs wherever NumPy does.

It reproduces :func:`qsnn.sim.stepwise.simulate_batch` bit for bit: predictions per step,
positive and negative spikes per layer and step, and final counts. It is event-driven
where that is free: an image none of whose neurons spiked in a step can never spike
again (its currents are zero from then on and no threshold comes closer), so it drops
out of the computation, and a layer's input current is computed only for images whose
previous layer spiked in that step.

:func:`load` trusts nothing: it verifies the package's sha256 seal
(:func:`package_digest`), then checks every field (types, ranges, shapes that chain,
integer arrays, tables) before anything runs, and refuses a damaged package with one
line, ``DIR is damaged: <what>; re-export it with `qsnn export ...```.
"""

from __future__ import annotations

import json
import math
import zipfile
import zlib
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from qsnn.errors import QsnnError, integer_in
from qsnn.io import SEAL, content_digest
from qsnn.options import AUTO_MAX_STEPS  # (also what --steps accepts)
from qsnn.snn.schemes import SCHEMES

FORMAT = "qsnn-int"
SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
WEIGHTS = "weights.npz"
PLUS_INFINITY = int(np.iinfo(np.int64).max)  # T(i) for levels out of reach
MINUS_INFINITY = int(np.iinfo(np.int64).min)  # T(i) for levels below 0
MAX_STEPS = AUTO_MAX_STEPS  # the most time steps a package or a run may ask for
PIXEL_MAX = 255
# Sanity bounds a package is checked against before anything is allocated:
MANIFEST_BYTES = 16 * 2**20  # manifest.json size
MAX_DEPTH = 32  # nesting of lists and objects in manifest.json (an export needs 5)
MAX_LAYERS = 1000
MAX_SIDE = 2**16  # any dimension of a shape, kernel or stride
MAX_NEURONS = 2**26  # values in any input or layer shape


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
    table: np.ndarray  # int64 [C, levels]: T(0 .. levels - 1), sentinels where out of reach
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
        level = np.asarray(level, dtype=np.int64)  # the table, padded with the two sentinels
        return self.padded_table[channel, np.clip(level, -1, self.table.shape[1]) + 1]

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


def package_digest(manifest: dict, arrays: dict[str, np.ndarray]) -> str:
    """The package's seal (:func:`qsnn.io.content_digest`, as converted networks have)."""
    return content_digest(manifest, arrays)


def export_hint(folder: str | Path) -> str:
    return f"re-export it with `qsnn export NET.npz --format qsnn-int -o {folder}`"


class _Damage(Exception):
    """What is wrong with a package: the middle of its "PATH is damaged: ..." message."""


def load(package_dir: str | Path) -> Package:
    """Read a package folder (``manifest.json`` + ``weights.npz``), verify its seal and
    check every field, so that a package that loads runs.

    Raises a one-line :class:`QsnnError` ("DIR is damaged: <what>; re-export it with
    `qsnn export ...`") for anything else: unreadable files, a missing or wrong seal,
    fields of the wrong type or out of range, shapes that do not chain.
    """
    folder = Path(package_dir)
    manifest_path, weights_path = folder / MANIFEST, folder / WEIGHTS
    hint = export_hint(folder)
    if not manifest_path.is_file() or not weights_path.is_file():
        raise QsnnError(f"{folder} is not a qsnn-int package (needs {MANIFEST} and {WEIGHTS}); {hint}")
    try:
        manifest = _read_manifest(manifest_path)
        if not isinstance(manifest, dict):
            raise QsnnError(f"{manifest_path} is not a qsnn-int manifest (not a JSON object); {hint}")
        if manifest.get("format") != FORMAT:
            raise QsnnError(f"{manifest_path} is not a qsnn-int manifest (format {manifest.get('format')!r}); {hint}")
        if manifest.get("schema_version") != SCHEMA_VERSION:
            raise QsnnError(
                f"{manifest_path} has schema version {manifest.get('schema_version')!r}, this runner "
                f"reads version {SCHEMA_VERSION}; {hint}"
            )
        arrays = _read_arrays(weights_path)
        seal = manifest.get(SEAL)
        if seal is None:
            raise QsnnError(
                f"{folder} is not sealed: {MANIFEST} has no {SEAL!r} seal over the package's contents "
                f"(it was edited, or written before packages were sealed); {hint}"
            )
        if seal != package_digest(manifest, arrays):
            raise _Damage(f"its contents do not match the {SEAL} seal in {MANIFEST} (a weight or a field was changed)")
        return _package(folder, manifest, arrays)
    except _Damage as damage:
        raise QsnnError(f"{folder} is damaged: {damage}; {hint}") from None
    except (KeyError, TypeError, ValueError, IndexError, AttributeError, OverflowError, MemoryError) as error:
        what = " ".join(str(error).split())[:200]  # (one line, whatever the exception says)
        raise QsnnError(f"{folder} is damaged: it is inconsistent ({type(error).__name__}: {what}); {hint}") from None


def _read_manifest(path: Path):
    try:
        size = path.stat().st_size
        if size > MANIFEST_BYTES:
            raise _Damage(f"{MANIFEST} is {size:,} bytes, more than any package manifest ({MANIFEST_BYTES:,})")
        text = path.read_bytes().decode("utf-8")
        manifest = json.loads(text, parse_constant=_no_constant, parse_float=_finite_float)
    except RecursionError:
        raise _Damage(f"{MANIFEST} is nested too deeply to be a package manifest") from None
    except UnicodeDecodeError:
        raise _Damage(f"{MANIFEST} is not UTF-8 text") from None
    except json.JSONDecodeError as error:
        raise _Damage(f"{MANIFEST} is not valid JSON ({error.msg}, line {error.lineno})") from None
    except ValueError as error:  # a non-finite number, or an integer of thousands of digits
        raise _Damage(f"{MANIFEST} holds {' '.join(str(error).split())[:120]}") from None
    except OSError as error:
        raise _Damage(f"{MANIFEST} cannot be read ({error.strerror or type(error).__name__})") from None
    if _too_deep(manifest):
        raise _Damage(f"{MANIFEST} is nested more than {MAX_DEPTH} levels deep, deeper than a package manifest")
    return manifest


def _no_constant(name: str):
    raise ValueError(f"the number {name}, which a package never holds")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"the number {text[:40]}, beyond float64")
    return value


def _too_deep(value) -> bool:
    """Whether lists and objects nest more than MAX_DEPTH deep in a parsed JSON value
    (checked without recursion; json.dumps, which the seal uses, recurses)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            if depth > MAX_DEPTH:
                return True
            stack.extend((child, depth + 1) for child in (item.values() if isinstance(item, dict) else item))
    return False


def _read_arrays(path: Path) -> dict[str, np.ndarray]:
    try:
        data = np.load(path, allow_pickle=False)
        if not isinstance(data, np.lib.npyio.NpzFile):
            raise _Damage(f"{WEIGHTS} is not an .npz archive of arrays")
        with data:
            return {key: data[key] for key in data.files}
    except _Damage:
        raise
    except MemoryError:
        raise _Damage(f"{WEIGHTS} holds arrays too large for memory") from None
    except (OSError, ValueError, EOFError, KeyError, TypeError, zipfile.BadZipFile, zlib.error) as error:
        detail = " ".join(str(error).split())[:120]
        raise _Damage(f"{WEIGHTS} cannot be read ({type(error).__name__}{': ' + detail if detail else ''})") from None


# --- checking every field (after the seal, so also a re-sealed, hand-made package) ---


def _at(where: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{where}[{key}]"
    return f"{where}.{key}" if where else key


def _get(obj: dict, key: str, where: str):
    if key not in obj:
        raise _Damage(f"{_at(where, key)} is missing")
    return obj[key]


def _object(obj: dict, key: str, where: str) -> dict:
    value = _get(obj, key, where)
    if not isinstance(value, dict):
        raise _Damage(f"{_at(where, key)} is {_show(value)} (must be a JSON object)")
    return value


def _show(value) -> str:
    """A field's value for a message: short JSON, or what kind of container it is."""
    if isinstance(value, dict):
        return "an object"
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _int(obj: dict, key: str, where: str, low: int, high: int, *, null: bool = False) -> int | None:
    value = _get(obj, key, where)
    if (value is None and null) or integer_in(value, low, high):
        return value
    also = " or null" if null else ""
    raise _Damage(f"{_at(where, key)} is {_show(value)} (must be an integer from {low} to {high}{also})")


def _text(obj: dict, key: str, where: str, choices: tuple[str, ...] | None = None, *, null: bool = False) -> str | None:
    value = _get(obj, key, where)
    if value is None and null:
        return value
    if not isinstance(value, str) or (choices is not None and value not in choices):
        wanted = "a string" if choices is None else " or ".join(json.dumps(choice) for choice in choices)
        raise _Damage(f"{_at(where, key)} is {_show(value)} (must be {wanted})")
    return value


def _limit(obj: dict, key: str, where: str) -> float:
    value = _get(obj, key, where)
    if value is None:
        return float("inf")
    if isinstance(value, int | float) and not isinstance(value, bool) and 0 <= value < math.inf:
        return float(value)
    raise _Damage(f"{_at(where, key)} is {_show(value)} (must be a number >= 0 or null)")


def _shape(obj: dict, key: str, where: str, dims: tuple[int, ...]) -> tuple[int, ...]:
    value = _get(obj, key, where)
    if not (
        isinstance(value, list) and len(value) in dims and all(integer_in(n, 1, MAX_SIDE) for n in value)
        and math.prod(value) <= MAX_NEURONS
    ):
        rank = " or ".join(str(d) for d in dims)
        raise _Damage(
            f"{_at(where, key)} is {_show(value)} (must be a list of {rank} integers from 1 to {MAX_SIDE}, "
            f"{MAX_NEURONS:,} values at most)"
        )
    return tuple(value)


def _array(arrays: dict[str, np.ndarray], obj: dict, key: str, where: str, shape: tuple | None = None) -> np.ndarray:
    """The integer array ``obj[key]`` names, as int64 (checked against ``shape``: None for
    any, -1 for any length along that axis)."""
    name = _text(obj, key, where)
    if name not in arrays:
        raise _Damage(f"{_at(where, key)} names the array {name!r}, which {WEIGHTS} lacks")
    values = arrays[name]
    if values.dtype.kind != "i":
        raise _Damage(f"the array {name!r} is {values.dtype}, not a signed integer type")
    if shape is not None and (
        values.ndim != len(shape) or any(want not in (-1, got) for want, got in zip(shape, values.shape, strict=True))
    ):
        expected = "(" + ", ".join("any" if n == -1 else str(n) for n in shape) + ("," if len(shape) == 1 else "") + ")"
        raise _Damage(f"the array {name!r} has shape {values.shape}, expected {expected}")
    return values.astype(np.int64)


def _weight(arrays: dict[str, np.ndarray], obj: dict, where: str, expected: tuple[int, ...]) -> np.ndarray:
    meta = _object(obj, "weight", where)
    where = _at(where, "weight")
    weight = _array(arrays, meta, "key", where)
    name = meta["key"]
    dtype = _text(meta, "dtype", where, ("int8", "int16", "int32", "int64"))
    if arrays[name].dtype.name != dtype:
        raise _Damage(f"{where}.dtype is {dtype!r} but the array {name!r} is {arrays[name].dtype}")
    listed = _get(meta, "shape", where)
    if listed != list(weight.shape):
        raise _Damage(f"{where}.shape is {_show(listed)} but the array {name!r} has shape {weight.shape}")
    _int(meta, "exponent", where, -(2**31), 2**31)
    if weight.shape != expected:
        raise _Damage(f"the array {name!r} has shape {weight.shape}, expected {expected}")
    return weight


def _check_range(weight: np.ndarray, largest: int, where: str) -> None:
    """Refuse weights whose membranes could leave int64: the largest sum of |W| over one
    output times the largest input (255 for pixels, else the sender's table length, which
    no count exceeds) must stay below 2^62. (Exported packages stay below 2^53 or so.)"""
    if not weight.size:
        return
    rows = np.abs(weight.reshape(weight.shape[0], -1).astype(np.float64)).sum(axis=1)
    reach = float(rows.max()) * largest
    if not reach < 2.0**62:
        raise _Damage(
            f"{where} times its largest input ({largest}) reaches {reach:.3g}, beyond 2^62 "
            "(int64 membranes could overflow)"
        )


def _package(folder: Path, manifest: dict, arrays: dict[str, np.ndarray]) -> Package:
    """Check every field of a (sealed) manifest against the arrays; the loaded package."""
    scheme = _text(manifest, "scheme", "", tuple(SCHEMES))
    time_steps = _int(manifest, "time_steps", "", 1, MAX_STEPS, null=True)
    if SCHEMES[scheme].single_step and time_steps != 1:
        raise _Damage(f"time_steps is {_show(time_steps)} ({SCHEMES[scheme].title} takes exactly 1 step)")
    _text(manifest, "time_steps_note", "")
    sentinels = _object(manifest, "sentinels", "")
    if sentinels != {"plus_infinity": PLUS_INFINITY, "minus_infinity": MINUS_INFINITY}:
        raise _Damage("sentinels are not int64 max and int64 min")
    _object(manifest, "neuron_model", "")
    _int(manifest, "threshold_scale", "", 1, PLUS_INFINITY, null=True)
    _object(manifest, "net", "")
    _object(manifest, "source", "")
    _text(manifest, "qsnn_version", "")
    _text(manifest, "spec", "")
    pixels = _object(manifest, "input", "")
    input_shape = _shape(pixels, "shape", "input", (3,))
    _text(pixels, "layout", "input", ("CHW",))
    _text(pixels, "dtype", "input", ("uint8",))
    if _get(pixels, "range", "input") != [0, PIXEL_MAX]:
        raise _Damage(f"input.range is {_show(pixels['range'])} (must be [0, {PIXEL_MAX}])")
    _text(pixels, "dataset", "input", null=True)
    _text(pixels, "preprocessing", "input")
    entries = _get(manifest, "layers", "")
    if not isinstance(entries, list) or not entries:
        raise _Damage(f"layers is {_show(entries)} (must be a non-empty list of layers)")
    if len(entries) > MAX_LAYERS:
        raise _Damage(f"layers holds {len(entries)} layers (at most {MAX_LAYERS})")
    layers, previous, source, largest = [], input_shape, "input.shape", PIXEL_MAX
    for index, meta in enumerate(entries):
        where = _at("layers", index)
        if not isinstance(meta, dict):
            raise _Damage(f"{where} is {_show(meta)} (must be a JSON object)")
        layers.append(_layer(meta, where, index, arrays, previous, source))
        _check_range(layers[-1].weight, largest, f"{where}.weight")
        previous, source = layers[-1].out_shape, f"{where}.out_shape"
        largest = layers[-1].table.shape[1]  # no count passes the last table level
    output = _object(manifest, "output", "")
    _text(output, "kind", "output", ("dense",))
    features = math.prod(previous)
    if _get(output, "in_features", "output") != features:
        raise _Damage(f"output.in_features is {_show(output['in_features'])}, but the last layer gives {features}")
    classes = _int(output, "classes", "output", 1, MAX_SIDE)
    output_weight = _weight(arrays, output, "output", (classes, features))
    _check_range(output_weight, largest, "output.weight")
    _text(output, "rule", "output")
    return Package(
        path=folder,
        manifest=manifest,
        scheme=scheme,
        time_steps=time_steps,
        input_shape=input_shape,
        layers=tuple(layers),
        output_weight=output_weight,
        output_input_limit=_limit(output, "input_limit", "output"),
    )


def _layer(
    meta: dict, where: str, index: int, arrays: dict[str, np.ndarray], previous: tuple[int, ...], source: str
) -> PackageLayer:
    _text(meta, "name", where)
    kind = _text(meta, "kind", where, ("conv", "dense"))
    _text(meta, "role", where, ("encoding",) if index == 0 else ("hidden",))
    in_shape = _shape(meta, "in_shape", where, (3,) if kind == "conv" else (1, 3))
    if in_shape != previous:
        raise _Damage(f"{where}.in_shape {list(in_shape)} does not match {source} {list(previous)}")
    out_shape = _shape(meta, "out_shape", where, (3,) if kind == "conv" else (1,))
    kernel = _int(meta, "kernel", where, 1, MAX_SIDE)
    stride = _int(meta, "stride", where, 1, MAX_SIDE)
    padding = _int(meta, "padding", where, 0, kernel - 1)
    if kind == "conv":
        channels, height, width = in_shape
        if min(height, width) + 2 * padding < kernel:
            raise _Damage(f"{where}.kernel {kernel} is larger than its input {height} x {width} padded by {padding}")
        sides = tuple((n + 2 * padding - kernel) // stride + 1 for n in (height, width))
        expected_weight = (out_shape[0], channels, kernel, kernel)
        if out_shape[1:] != sides:
            raise _Damage(
                f"{where}.out_shape {list(out_shape)} does not match its geometry (kernel {kernel}, stride "
                f"{stride}, padding {padding} on {list(in_shape)} gives {out_shape[0]} x {sides[0]} x {sides[1]})"
            )
    else:
        if (kernel, stride, padding) != (1, 1, 0):
            raise _Damage(f"{where} is dense but has kernel {kernel}, stride {stride}, padding {padding} (must be 1, 1, 0)")
        expected_weight = (out_shape[0], math.prod(in_shape))
    k = _int(meta, "k", where, 0, 62)
    bound = _int(meta, "B", where, 1, 2**31, null=True)
    levels = _int(meta, "levels", where, 1, 2**31, null=True)
    if (levels is None) != (bound is None) or (bound is not None and levels != 2**k * bound):
        raise _Damage(f"{where}.levels is {_show(levels)}, but 2^k * B = {'null' if bound is None else 2**k * bound}")
    count_limit = _int(meta, "count_limit", where, 0, 2**31)
    weight = _weight(arrays, meta, where, expected_weight)
    channels = out_shape[0]
    th = _object(meta, "thresholds", where)
    th_where = _at(where, "thresholds")
    _text(th, "formula", th_where)
    _int(th, "threshold_scale", th_where, 1, PLUS_INFINITY, null=True)
    divisor = _int(th, "divisor", th_where, 1, PLUS_INFINITY)
    if int(_array(arrays, th, "divisor_key", th_where, ())) != divisor:
        raise _Damage(f"{th_where}.divisor {divisor} differs from the array {th['divisor_key']!r}")
    offset, step, size, constant = (_array(arrays, th, key, th_where, (channels,)) for key in ("offset", "step", "size", "constant"))
    width = levels if levels is not None else count_limit + 1
    table = _array(arrays, th, "table", th_where, (channels, width))
    if bool((table[:, 1:] < table[:, :-1]).any()):
        raise _Damage(f"the threshold table {th['table']!r} is not non-decreasing along its levels")
    if bool(((size < 0) | (size > width)).any()) or bool(((constant < -1) | (constant > width)).any()):
        raise _Damage(f"the arrays {th['size']!r} / {th['constant']!r} hold levels outside 0 .. {width}")
    _text(meta, "neuron", where)
    return PackageLayer(
        name=meta["name"],
        kind=kind,
        role=meta["role"],
        in_shape=in_shape,
        out_shape=out_shape,
        kernel=kernel,
        stride=stride,
        padding=padding,
        levels=levels,
        weight=weight,
        offset=offset,
        step=step,
        divisor=divisor,
        size=size,
        constant=constant,
        table=table,
        input_limit=_limit(meta, "input_limit", where),
    )


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
    if steps is not None and not integer_in(steps, 1, MAX_STEPS):
        raise QsnnError(f"steps must be an integer from 1 to {MAX_STEPS} or None, got {steps!r}")
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
    if SCHEMES[package.scheme].single_step:
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


def _layer_step(
    layer: PackageLayer,
    state: _State,
    index: int,
    t: int,
    spikes: np.ndarray | None,
    sending: np.ndarray | None,
    engine: str,
    rising_channels: np.ndarray | None,
) -> np.ndarray:
    """Layer ``index``'s spikes at step ``t`` (int64). The encoding layer (index 0) with a
    rising threshold (``rising_channels``: each neuron's channel, else None) fires iff
    V >= T(t); otherwise it is a signed neuron (:func:`_signed_step`). A hidden layer first
    integrates the previous layer's ``spikes``, event-driven: only the images that sent any
    (``sending``)."""
    if index == 0 and rising_channels is not None:
        spikes = (state.membrane >= layer.thresholds(t, rising_channels)).astype(np.int64)
        state.count += spikes
        return spikes
    if index > 0:
        rows = np.nonzero(sending)[0]
        if rows.size:
            state.membrane[rows] += layer.membrane(spikes[rows], 1, engine)
    return _signed_step(layer, state)


def _propagate(
    package: Package,
    states: list[_State],
    t: int,
    engine: str,
    rising_channels: np.ndarray | None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[int], list[int]]:
    """Step ``t`` through every layer of the active images, same-step propagation. Returns
    the last layer's spikes, which images it sent any from, which images spiked in any layer,
    and the +1 and the -1 spikes of each layer."""
    count = len(states[0].membrane)
    spiked = np.zeros(count, bool)
    step_positive, step_negative = [], []
    spikes = sending = None  # the previous layer's spikes, and which images sent any
    for index, layer in enumerate(package.layers):
        state = states[index]
        spikes = _layer_step(layer, state, index, t, spikes, sending, engine, rising_channels)
        flat = spikes.reshape(count, -1)
        sending = (flat != 0).any(axis=1)
        spiked |= sending
        step_positive.append(int((flat > 0).sum()))
        step_negative.append(int((flat < 0).sum()))
        if layer.levels is None:  # bounded counts never exceed the receiver's limit
            _check_limit(state.count, *_receiver(package, index))
    return spikes, sending, spiked, step_positive, step_negative


def _retire(
    active: np.ndarray,
    accumulator: np.ndarray,
    spiked: np.ndarray,
    states: list[_State],
    logits: np.ndarray,
    final_counts: list[np.ndarray],
) -> tuple[np.ndarray, np.ndarray]:
    """Record the final logits and counts of the active images that did not spike (they never
    will again) and drop them from ``states``; return the indices and accumulator of the rest."""
    silent = ~spiked
    done = active[silent]
    logits[done] = accumulator[silent]
    for i, state in enumerate(states):
        final_counts[i][done] = state.count[silent]
    keep = np.nonzero(spiked)[0]
    for state in states:
        state.keep(keep)
    return active[keep], accumulator[keep]


def _close_series(
    predictions: list[np.ndarray],
    positive: list[list[int]],
    negative: list[list[int]],
    prediction: np.ndarray,
    steps: int | None,
    t: int,
    layers: int,
) -> None:
    """The per-step series once no image spikes any more, after step ``t``: with ``steps``
    None, without the silent step when it only confirms the output is final (t > 0); with
    ``steps`` given, filled up to ``steps`` with the final prediction and no spikes."""
    if steps is None and t > 0:
        predictions.pop()
        positive.pop()
        negative.pop()
    if steps is not None:
        rest = steps - len(predictions)
        predictions.extend([prediction.copy()] * rest)
        positive.extend([[0] * layers] * rest)
        negative.extend([[0] * layers] * rest)


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
    rising_channels = layers[0].channel_index() if SCHEMES[package.scheme].rising_encoding else None
    states[0].membrane += encoding_current  # the input arrives once, at t = 0
    for t in range(limit):
        spikes, sending, spiked, step_positive, step_negative = _propagate(
            package, states, t, engine, rising_channels
        )
        rows = np.nonzero(sending)[0]
        if rows.size:
            accumulator[rows] += package.output_matrix.multiply(spikes[rows].reshape(rows.size, -1), output_dtype)
        prediction[active] = np.argmax(accumulator, axis=1)
        predictions.append(prediction.copy())
        positive.append(step_positive)
        negative.append(step_negative)
        if not spiked.all():
            active, accumulator = _retire(active, accumulator, spiked, states, logits, final_counts)
        if not active.size:
            _close_series(predictions, positive, negative, prediction, steps, t, len(layers))
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
