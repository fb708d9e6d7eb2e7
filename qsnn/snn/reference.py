"""The tables' ANN: the converted network evaluated as a quantized ANN, exactly.

Each layer's integer membrane is computed exactly (float64 holds integers below 2^53;
float32 where every partial sum stays below 2^24, certified by
:func:`qsnn.snn.counting.certify` elsewhere) and counted against the layer's threshold
tables. :func:`reference_counts` gives every layer's counts and the output logits for a
batch of pixels; the simulators compare their spike counts with it. It shares the
converter's tables, so the independent check of a simulation is the exact ANN of the
trained model (:mod:`qsnn.snn.exact`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from qsnn.errors import QsnnError
from qsnn.snn import counting
from qsnn.snn.exact import ANNResult, float32_is_ieee
from qsnn.snn.model import PIXEL_LEVELS, OutputLayer, SpikingLayer, SpikingNet
from qsnn.snn.neurons import target_count

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
    exactly (:func:`qsnn.snn.counting.certify`) each neuron that has a threshold within the
    bound. Non-integer inputs, GPUs and non-IEEE float32 settings take the exact path.
    """
    rowabs = layer.largest_row_sum
    exact_in_float32 = rowabs * largest < FLOAT32_EXACT
    if not cpu_kernels(inputs) or inputs.is_floating_point() or exact_in_float32 or not float32_is_ieee():
        return exact_membrane(layer, inputs, largest)
    terms = layer.weight[0].size
    gamma = terms * UNIT_ROUNDOFF32 / (1 - terms * UNIT_ROUNDOFF32)
    bound = gamma * rowabs * largest * (1 + 1e-9) + 2.0  # + the rounding of v -/+ bound
    with torch.backends.nnpack.flags(enabled=False):  # (Winograd and FFT convolutions round otherwise)
        estimate = apply_layer(layer, inputs.to(torch.float32), layer_weight(layer, inputs.device, torch.float32))
    estimate = estimate.to(torch.float64).contiguous()
    tables = [layer.thresholds()] if layer.ann_thresholds is None else [layer.thresholds(), layer.thresholds(ann=True)]
    counting.certify(tables, layer, inputs.numpy(), estimate.numpy(), bound)
    return estimate


def layer_counts(layer: SpikingLayer, membrane: torch.Tensor, ann: bool = False) -> torch.Tensor:
    """m(V) for every neuron (with ``ann``: by the quantized ANN's exact tables): the numba
    kernel on the CPU, the torch definition elsewhere."""
    thresholds = layer.thresholds(ann)
    if cpu_kernels(membrane):
        return torch.from_numpy(counting.counts(thresholds, membrane.numpy()))
    return target_count(membrane, thresholds.to(membrane.device))


@torch.no_grad()
def reference_counts(net: SpikingNet, pixels: torch.Tensor, *, keep_membranes: bool = False,
                     check_spiking: bool = False) -> ANNResult:
    """The quantized ANN evaluated exactly by the converted tables: integer counts of every
    block and the logits (an :class:`~qsnn.snn.exact.ANNResult`).

    ``pixels`` are raw 0..255 values (uint8 or float for noisy inputs), shape (B, C, H, W).
    ``keep_membranes``: also every layer's membrane (float32 or float64): exact, or good
    for counting by the layer's tables (:func:`counting_membrane`). ``check_spiking``: also
    each layer's number of neurons whose binary neurons (the spiking side's own counting
    algorithm, on the same membrane and the spiking tables) count otherwise than the ANN,
    or None where that was not checked (the layer has ANN tables of its own, or the
    membrane is not on the CPU).
    """
    x = pixels
    counts, membranes, differences = [], [], []
    for index, layer in enumerate(net.layers):
        largest = input_bound(net, index, x)
        check_input_limit(layer, largest, index)
        membrane = counting_membrane(layer, x, largest)
        if keep_membranes:
            membranes.append(membrane)
        if check_spiking and layer.ann_thresholds is None and cpu_kernels(membrane):
            found, differing = counting.checked_counts(layer.thresholds(), membrane.numpy())
            n = torch.from_numpy(found)
            differences.append(differing)
        else:
            n = layer_counts(layer, membrane, ann=True)
            differences.append(None)
        counts.append(n)
        x = n
    check_input_limit(net.output, input_bound(net, len(net.layers), x), len(net.layers))
    logits = F.linear(x.flatten(1).to(torch.float64), layer_weight(net.output, x.device))
    return ANNResult(
        counts, logits, membranes=membranes if keep_membranes else None,
        spiking_differences=differences if check_spiking else None,
    )
