"""qsnn.nn: the drop-in modules compute what the papers' blocks compute."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from qsnn.errors import QsnnError
from qsnn.net.models import NetSpec, QuantizedNet
from qsnn.net.quantization import Precision
from qsnn.nn import QuantAct, QuantConv2d, QuantLinear


@pytest.mark.parametrize("k", [0, 1, 2, 3])
@pytest.mark.parametrize("bound", [1, 2, None])
def test_quant_act_rounds_half_up_clamps_at_b_and_passes_the_gradient_inside_0_b(k, bound):
    act = QuantAct(k, bound)
    scale = 1 << k
    # every level's tie (i + 1/2) / 2^k, a hair below it, and values beyond B and below 0
    ties = [(i + 0.5) / scale for i in range(scale * (bound or 3))]
    y = torch.tensor([-1.0, 0.0, *ties, *(t - 2.0**-20 for t in ties), 100.0], requires_grad=True)
    a = act(y)
    top = scale * bound if bound is not None else None
    expected = [0, 0, *(min(i + 1, top or i + 1) for i in range(len(ties))), *range(len(ties)), top or 100 * scale]
    assert (a * scale).tolist() == [float(v) for v in expected]
    a.sum().backward()
    inside = [(v > 0 and (bound is None or v < bound)) for v in y.tolist()]
    assert y.grad.tolist() == [1.0 if flag else 0.0 for flag in inside]
    assert repr(act) == f"QuantAct(k={k}, B={bound})"


def test_bad_levels_and_bounds_are_one_line_errors():
    with pytest.raises(QsnnError, match="^k must be an integer from 0 to 4, got 5$"):
        QuantAct(5)
    with pytest.raises(QsnnError, match="^B must be an integer from 1 to 64 or 'none', got 0$"):
        QuantAct(1, 0)


def test_a_model_of_qsnn_nn_modules_equals_the_notation_net_with_the_same_parameters():
    """6C5-P2-12 (k=1, B=2, ternary; P2 is the papers' 2x2 stride-2 convolution block)
    written with qsnn.nn modules gives the QuantizedNet's outputs exactly, on the same
    weights and batch-norm statistics."""
    torch.manual_seed(0)
    reference = QuantizedNet(NetSpec("6C5-P2-12", (1, 12, 12), 10, "valid", Precision(k=1, B=2, ternary=True)))
    blocks = reference.blocks
    for block in blocks:  # statistics other than the defaults
        block.norm.running_mean.uniform_(-0.2, 0.2)
        block.norm.running_var.uniform_(0.5, 1.5)
    model = nn.Sequential(
        QuantConv2d(1, 6, 5), nn.BatchNorm2d(6, eps=blocks[0].norm.eps), QuantAct(1, 2),
        QuantConv2d(6, 6, 2, stride=2, ternary=True), nn.BatchNorm2d(6, eps=blocks[1].norm.eps), QuantAct(1, 2),
        nn.Flatten(), QuantLinear(6 * 4 * 4, 12, ternary=True), nn.BatchNorm1d(12, eps=blocks[2].norm.eps),
        QuantAct(1, 2), QuantLinear(12, 10),
    )
    for block, (conv, norm) in zip(blocks, ((0, 1), (3, 4), (7, 8)), strict=True):
        model[conv].weight.data.copy_(block.weight.reshape(model[conv].weight.shape))
        model[norm].load_state_dict(block.norm.state_dict())
    model[10].weight.data.copy_(reference.classifier)
    reference.eval()
    model.eval()
    x = torch.rand(16, 1, 12, 12)
    assert torch.equal(model(x), reference(x))
    assert set(torch.unique(model[7](torch.eye(96))).tolist()) == {-1.0, 0.0, 1.0}
    assert "ternary=True" in repr(model[7]) and "ternary" not in repr(model[0])


DOC = Path(__file__).resolve().parents[1] / "docs" / "YOUR_MODEL.md"


def test_the_documented_example_runs_and_is_lossless(shared_datasets, capsys):
    """docs/YOUR_MODEL.md's example, whole (under 40 lines), on fewer images: every scheme
    agrees on every image with 0 mismatching counts."""
    text = DOC.read_text()
    code = text.split("```python\n", 1)[1].split("```", 1)[0]
    assert len(code.strip().splitlines()) <= 40
    smaller = {
        '"datasets"': repr(str(shared_datasets)), "[:20000]": "[:300]", "range(2)": "range(1)",
        "test.images.float(), test.labels": "test.images[:24].float(), test.labels[:24]",
    }
    for old, new in smaller.items():
        assert old in code, old
        code = code.replace(old, new)
    exec(compile(code, str(DOC), "exec"), {"__name__": "docs_example"})
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(" ", 1)[0] for line in lines] == ["nsd", "int", "sg"]
    for line in lines:
        assert "24/24 agree," in line and ": 1" not in line
        assert line.count(": 0") == 3  # (three QuantActs, each 0 mismatching counts)


def test_the_encoding_block_is_conv_norm_quant_and_converts_to_the_encoding_population():
    from qsnn.nn import EncodingBlock
    from qsnn.snn.convert import convert

    torch.manual_seed(0)
    block = EncodingBlock(1, 4, 3, 1, 1, k=1, B=2).eval()
    conv, norm, act = block
    assert (type(conv).__name__, type(norm).__name__, (act.k, act.B)) == ("QuantConv2d", "BatchNorm2d", (1, 2))
    assert not conv.ternary and conv.bias is None and conv.padding == (1, 1)
    x = torch.rand(2, 1, 6, 6)
    assert torch.equal(block(x), act(norm(conv(x))))
    model = nn.Sequential(block, QuantConv2d(4, 4, 3, ternary=True), nn.BatchNorm2d(4), QuantAct(1, 2), nn.Flatten(),
                          nn.Linear(64, 3)).eval()
    graph = convert(model, torch.zeros(1, 1, 6, 6), "int")
    assert [node.attrs["role"] for node in graph.populations] == ["encoding", "hidden"]
    assert [key for key in model.state_dict() if key.startswith("0.")][:2] == ["0.0.weight", "0.1.weight"]
