"""A PyTorch model of one's own as a list of operations: traced with torch.fx, batch norm folded.

:func:`trace` runs ``torch.fx`` over an ``nn.Module`` built from ``qsnn.nn`` modules
(:class:`~qsnn.nn.QuantAct` between the layers) and standard layers, records every
node's output shape on an example input, and returns the :class:`Op` list of the graph:

- ``conv`` (``nn.Conv2d``, ``QuantConv2d``: any stride, padding, dilation, groups) and
  ``linear`` (``nn.Linear``, ``QuantLinear``), with their bias; ternary weights as the
  model computes with them;
- ``scale``: a per-channel affine map (a batch norm that does not follow a convolution or
  linear layer of its own; the others are folded into that layer's weights and bias);
- ``avgpool`` (``nn.AvgPool2d``, ``nn.AdaptiveAvgPool2d`` to a divisor of the map):
  a sum over each window divided by its size, linear and exact;
- ``maxpool`` (``nn.MaxPool2d``), ``add`` (``+`` of two tensors), ``cat`` (``torch.cat``
  over channels), ``flatten``;
- ``quant``: a ``QuantAct(k, B)``, which becomes a population of spiking neurons;
- ``input`` and ``output``.

``nn.Dropout`` and ``nn.Identity`` vanish, and a ReLU whose only user is a QuantAct too
(the quantizer holds the ReLU). Anything else is refused in one line naming the node and
what qsnn converts.

Folding a batch norm into the layer before it (w' = w gamma / sigma, b' = (b - mu) gamma /
sigma + beta, in float64) gives the model that is converted: the spiking network is exact
for it. The float32 model the user trained computes the same up to float rounding (a
count can differ where a pre-activation lies within rounding of a level boundary);
``qsnn.sim.graph`` measures how often.
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp

from qsnn.errors import QsnnError
from qsnn.net.models import QuantizedNet
from qsnn.net.quantization import ternary_values
from qsnn.nn import QuantAct, QuantConv2d, QuantLinear

SUPPORTED = (
    "Conv2d, Linear, BatchNorm1d/2d, QuantAct, AvgPool2d, AdaptiveAvgPool2d, MaxPool2d, Flatten, "
    "Dropout, Identity, + and torch.cat"
)
PASS_THROUGH = (nn.Dropout, nn.Identity)
RELU = (nn.ReLU, F.relu, torch.relu, "relu")


@dataclass
class Op:
    """One operation of a traced model. ``shape``: its output, without the batch.
    ``weight``/``bias``: float64 (conv: out, in/groups, kh, kw; linear: out, in; scale: C).
    ``attrs``: stride, padding, dilation, groups (conv); kernel, stride, padding (pools);
    k, B and the module's qualified name (quant); dim (cat)."""

    name: str
    kind: str
    inputs: tuple[str, ...]
    shape: tuple[int, ...]
    weight: np.ndarray | None = None
    bias: np.ndarray | None = None
    attrs: dict = field(default_factory=dict)


class _Tracer(fx.Tracer):
    """torch.fx's tracer, with qsnn's modules kept whole (their quantizers are autograd functions)."""

    def is_leaf_module(self, module: nn.Module, qualified_name: str) -> bool:
        return isinstance(module, QuantAct | QuantConv2d | QuantLinear) or super().is_leaf_module(module, qualified_name)


def _refuse(node: fx.Node, what: str) -> QsnnError:
    return QsnnError(f"node {node.name!r} ({what}) cannot be converted; qsnn converts {SUPPORTED}")


def _pair(value) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else tuple(value)


def trace(model: nn.Module, example_input: torch.Tensor) -> list[Op]:
    """The operations of ``model`` (in eval mode) in execution order, batch norms folded.
    ``example_input``: one batch as the model takes it (its shape fixes every other)."""
    if not isinstance(example_input, torch.Tensor) or example_input.dim() < 2:
        raise QsnnError("example_input must be a batch of inputs as the model takes them, e.g. torch.zeros(1, 1, 28, 28)")
    was_training = model.training
    model.eval()
    try:
        graph = _Tracer().trace(model)
    except Exception as error:  # (data-dependent control flow and the like)
        raise QsnnError(f"torch.fx cannot trace this model: {str(error).splitlines()[0]}; "
                        "write its forward without data-dependent branches") from None
    module = fx.GraphModule(model, graph)
    device = next(model.parameters(), torch.empty(0)).device  # (shapes are found where the model is)
    example = example_input.detach().to(device, torch.float32)[:1]
    try:
        with torch.no_grad():
            ShapeProp(module).propagate(example)
    except Exception as error:
        raise QsnnError(
            f"the model does not run on example_input of shape {tuple(example_input.shape)}: {str(error).splitlines()[0]}"
        ) from None
    finally:
        model.train(was_training)
    modules = dict(module.named_modules())
    ops: list[Op] = []
    alias: dict[str, str] = {}  # node -> the op whose value it is (vanished nodes)
    for node in graph.nodes:
        op = _op(node, modules, alias)
        if op is None:
            continue
        if isinstance(op, str):
            alias[node.name] = op
            continue
        ops.append(op)
    _check_inputs(ops)
    return _fold_norms(ops)


def _is_tensor(node: fx.Node) -> bool:
    return hasattr(node.meta.get("tensor_meta"), "shape")


def _shape(node: fx.Node) -> tuple[int, ...]:
    meta = node.meta.get("tensor_meta")
    if meta is None or not hasattr(meta, "shape"):
        raise _refuse(node, "not a single tensor")
    return tuple(meta.shape[1:])


def _sources(node: fx.Node, alias: dict[str, str]) -> tuple[str, ...]:
    """The tensors a node reads (not the shape arithmetic beside them)."""
    return tuple(alias.get(arg.name, arg.name) for arg in node.all_input_nodes if _is_tensor(arg))


def _op(node: fx.Node, modules: dict, alias: dict[str, str]):
    """The Op of one fx node; a name where the node is the value of another; None for the output's bookkeeping."""
    if node.op == "placeholder":
        return Op(node.name, "input", (), _shape(node))
    if node.op == "output":
        result = node.args[0]
        if not isinstance(result, fx.Node):
            raise QsnnError("the model must return one tensor (the logits)")
        return Op("output", "output", (alias.get(result.name, result.name),), _shape(result))
    if node.op == "get_attr":
        raise _refuse(node, f"a parameter {node.target} used as a tensor")
    if node.target in ("size", "dim", getattr, operator.getitem) and not _is_tensor(node):
        return None  # (shape arithmetic, e.g. x.view(x.size(0), -1): not a value of the network)
    inputs = _sources(node, alias)
    if node.op == "call_module":
        return _module_op(node, modules[node.target], inputs, modules)
    target = node.target
    if target in RELU:
        return _relu(node, inputs, modules)
    if target in (operator.add, torch.add, "add", operator.iadd):
        if len(inputs) != 2 or len(node.args) != 2 or node.kwargs:
            raise _refuse(node, "an addition that is not tensor + tensor")
        return Op(node.name, "add", inputs, _shape(node))
    if target is torch.cat:
        dim = node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else 0)
        if dim != 1:
            raise _refuse(node, f"torch.cat over dim {dim} (only channels, dim 1)")
        return Op(node.name, "cat", inputs, _shape(node), attrs={"dim": 1})
    if target in (torch.flatten, "flatten", "view", "reshape"):
        shape = _shape(node)
        if len(shape) != 1:
            raise _refuse(node, f"a reshape to {shape} (only flattening to (batch, features))")
        return Op(node.name, "flatten", inputs[:1], shape)
    if target in (F.adaptive_avg_pool2d,):
        return _avgpool(node, inputs, None)
    raise _refuse(node, getattr(target, "__name__", str(target)))


def _relu(node: fx.Node, inputs: tuple[str, ...], modules: dict):
    users = list(node.users)
    if users and all(user.op == "call_module" and isinstance(modules[user.target], QuantAct) for user in users):
        return inputs[0]  # (the QuantAct after it applies the ReLU)
    raise QsnnError(
        f"node {node.name!r} is a plain ReLU, which a spiking network does not compute exactly; "
        "use qsnn.nn.QuantAct(k, B) there (its quantizer includes the ReLU)"
    )


def _module_op(node: fx.Node, module: nn.Module, inputs: tuple[str, ...], modules: dict):
    shape = _shape(node)
    if isinstance(module, PASS_THROUGH):
        return inputs[0]
    if isinstance(module, nn.ReLU):
        return _relu(node, inputs, modules)
    if isinstance(module, QuantAct):
        return Op(node.name, "quant", inputs, shape, attrs={"k": module.k, "B": module.B, "module": node.target})
    if isinstance(module, nn.Conv2d):
        if module.padding_mode != "zeros":
            raise _refuse(node, f"Conv2d with padding_mode={module.padding_mode!r} (only zeros)")
        weight = module.weight.detach()
        if getattr(module, "ternary", False):
            weight = ternary_values(weight)
        padding = module.padding if not isinstance(module.padding, str) else _same_padding(module)
        return Op(node.name, "conv", inputs, shape, _float64(weight), _bias(module, weight.shape[0]), {
            "stride": _pair(module.stride), "padding": _pair(padding), "dilation": _pair(module.dilation),
            "groups": module.groups,
        })
    if isinstance(module, nn.Linear):
        weight = module.weight.detach()
        if getattr(module, "ternary", False):
            weight = ternary_values(weight)
        return Op(node.name, "linear", inputs, shape, _float64(weight), _bias(module, weight.shape[0]))
    if isinstance(module, nn.BatchNorm1d | nn.BatchNorm2d):
        if module.running_mean is None:
            raise _refuse(node, "a batch norm without running statistics (track_running_stats=False)")
        return Op(node.name, "scale", inputs, shape, *_norm_affine(module))
    if isinstance(module, nn.AvgPool2d):
        if not module.count_include_pad and _pair(module.padding) != (0, 0):
            raise _refuse(node, "AvgPool2d with count_include_pad=False and padding")
        if module.ceil_mode or module.divisor_override is not None:
            raise _refuse(node, "AvgPool2d with ceil_mode or divisor_override")
        stride = module.stride if module.stride is not None else module.kernel_size
        return Op(node.name, "avgpool", inputs, shape, attrs={
            "kernel": _pair(module.kernel_size), "stride": _pair(stride), "padding": _pair(module.padding),
        })
    if isinstance(module, nn.AdaptiveAvgPool2d):
        return _avgpool(node, inputs, module)
    if isinstance(module, nn.MaxPool2d):
        if module.ceil_mode or _pair(module.dilation) != (1, 1):
            raise _refuse(node, "MaxPool2d with ceil_mode or dilation")
        stride = module.stride if module.stride is not None else module.kernel_size
        return Op(node.name, "maxpool", inputs, shape, attrs={
            "kernel": _pair(module.kernel_size), "stride": _pair(stride), "padding": _pair(module.padding),
        })
    if isinstance(module, nn.Flatten):
        if len(shape) != 1:
            raise _refuse(node, f"Flatten to {shape} (only to (batch, features))")
        return Op(node.name, "flatten", inputs, shape)
    raise _refuse(node, type(module).__name__)


def _norm_affine(module: nn.BatchNorm1d | nn.BatchNorm2d) -> tuple[np.ndarray, np.ndarray]:
    """A batch norm in eval mode as y = a x + c per channel (float64): a = gamma / sigma,
    c = beta - mu a."""
    sigma = torch.sqrt(module.running_var.detach().double() + module.eps)
    gamma = module.weight.detach().double() if module.affine else torch.ones_like(sigma)
    beta = module.bias.detach().double() if module.affine else torch.zeros_like(sigma)
    scale = gamma / sigma
    return scale.cpu().numpy(), (beta - module.running_mean.detach().double() * scale).cpu().numpy()


def net_ops(model: QuantizedNet) -> list[Op]:
    """The operations of a net in the papers' notation (a chain of conv or dense blocks,
    each with its batch norm and quantizer, and a bias-free classifier), batch norms
    folded as for a traced model: the notation net as one way of building a graph."""
    if not model.quantized:
        raise QsnnError("a full-precision network has no spiking populations; train it with --k")
    if model.spec.input_stage != "pixels":
        raise QsnnError("this network standardizes each image first (--recipe paper on CIFAR); a graph takes "
                        "x = pixels / 255, so convert it without --graph")
    ops = [Op("input", "input", (), tuple(model.spec.input_shape))]
    last = ops[0]

    def add(op: Op) -> None:
        nonlocal last
        ops.append(op)
        last = op

    for index, block in enumerate(model.blocks):
        layer, tag = block.layer, index + 1
        weight = _float64(block.effective_weight())
        if layer.kind == "conv":
            add(Op(f"conv{tag}", "conv", (last.name,), tuple(layer.out_shape), weight, np.zeros(len(weight)), {
                "stride": (layer.stride, layer.stride), "padding": (layer.padding, layer.padding), "dilation": (1, 1),
                "groups": 1}))
        else:
            if len(last.shape) > 1:
                add(Op(f"flatten{tag}", "flatten", (last.name,), (math.prod(last.shape),)))
            add(Op(f"dense{tag}", "linear", (last.name,), tuple(layer.out_shape), weight, np.zeros(len(weight))))
        add(Op(f"norm{tag}", "scale", (last.name,), last.shape, *_norm_affine(block.norm)))
        add(Op(f"layer{tag}", "quant", (last.name,), last.shape, attrs={"k": block.k, "B": block.bound,
                                                                         "module": f"blocks.{index}"}))
    if len(last.shape) > 1:
        add(Op("flatten_out", "flatten", (last.name,), (math.prod(last.shape),)))
    classifier = _float64(model.classifier)
    add(Op("classifier", "linear", (last.name,), (len(classifier),), classifier, np.zeros(len(classifier))))
    ops.append(Op("output", "output", (last.name,), last.shape))
    return _fold_norms(ops)


def _avgpool(node: fx.Node, inputs: tuple[str, ...], module) -> Op:
    """An adaptive average pool whose output size divides the map: a plain average pool."""
    source = node.all_input_nodes[0]
    _, height, width = _shape(source)
    _, out_h, out_w = _shape(node)
    if height % out_h or width % out_w:
        raise _refuse(node, f"AdaptiveAvgPool2d from {height}x{width} to {out_h}x{out_w} (windows of unequal size)")
    kernel = (height // out_h, width // out_w)
    return Op(node.name, "avgpool", inputs, _shape(node), attrs={"kernel": kernel, "stride": kernel, "padding": (0, 0)})


def _same_padding(module: nn.Conv2d) -> tuple[int, int]:
    pads = module._reversed_padding_repeated_twice  # (left, right, top, bottom)
    if pads[0] != pads[1] or pads[2] != pads[3]:
        raise QsnnError("Conv2d with padding='same' and an even kernel pads unevenly; give the padding as numbers")
    return pads[2], pads[0]


def _float64(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().to("cpu", torch.float64).numpy().copy()


def _bias(module: nn.Module, channels: int) -> np.ndarray:
    bias = getattr(module, "bias", None)
    return np.zeros(channels) if bias is None else _float64(bias)


def _check_inputs(ops: list[Op]) -> None:
    inputs = [op for op in ops if op.kind == "input"]
    if len(inputs) != 1:
        raise QsnnError(f"the model must take one input tensor (the image), it takes {len(inputs)}")
    if len(inputs[0].shape) != 3:
        raise QsnnError(f"the model's input must be images (batch, channels, height, width), got {tuple(inputs[0].shape)} per item")


def users_of(ops: list[Op]) -> dict[str, int]:
    """How many ops read each op's output."""
    users: dict[str, int] = {}
    for op in ops:
        for name in op.inputs:
            users[name] = users.get(name, 0) + 1
    return users


def _fold_norms(ops: list[Op]) -> list[Op]:
    """Fold each ``scale`` (batch norm) into the weighted op before it: into a conv or
    linear op that feeds nothing else (w' = w a per output channel, b' = b a + c), or,
    after an addition that feeds nothing else, into each of its terms (a scale of its
    own where a term is not such an op). A scale stays where it follows anything else
    (a population, the input, a pool): there it multiplies values on a coarse grid,
    while a scale of a scale's grid would need twice the bits."""
    users = users_of(ops)
    by_name = {op.name: op for op in ops}
    kept: list[Op] = []
    renamed: dict[str, str] = {}

    def foldable(op: Op | None) -> bool:
        return op is not None and op.kind in ("conv", "linear") and users[op.name] == 1

    for op in ops:
        op.inputs = tuple(renamed.get(name, name) for name in op.inputs)
        source = by_name.get(op.inputs[0]) if op.inputs else None
        if op.kind != "scale" or source is None:
            kept.append(op)
        elif foldable(source):
            _fold_into(source, op.weight, op.bias)
            renamed[op.name] = source.name
        elif source.kind == "add" and users[source.name] == 1:
            terms = []
            for number, name in enumerate(source.inputs):
                shift = op.bias if number == 0 else np.zeros_like(op.bias)
                term = by_name[name]
                if foldable(term):
                    _fold_into(term, op.weight, shift)
                    terms.append(name)
                else:  # (a scale of its own, just before the addition)
                    scaled = Op(f"{op.name}_{name}", "scale", (name,), term.shape, op.weight.copy(), shift)
                    kept.insert(kept.index(source), scaled)
                    by_name[scaled.name] = scaled
                    terms.append(scaled.name)
            source.inputs = tuple(terms)
            renamed[op.name] = source.name
        else:
            kept.append(op)
    return kept


def _fold_into(op: Op, scale: np.ndarray, shift: np.ndarray) -> None:
    """op's output times ``scale`` plus ``shift`` (per output channel), in its weights and bias."""
    op.weight = op.weight * scale.reshape((-1,) + (1,) * (op.weight.ndim - 1))
    op.bias = op.bias * scale + shift
