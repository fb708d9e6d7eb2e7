"""QuantizedNet: shapes of the papers' nets, counts vs forward, encoding block, ternary, FP."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from qsnn.errors import QsnnError
from qsnn.net import models
from qsnn.net.models import NetSpec, QuantizedNet
from qsnn.net.notation import PRESETS
from qsnn.net.quantization import Precision
from tests.helpers import one_thread  # noqa: F401  (autouse: one intra-op thread in this module)

MNIST = ((1, 28, 28), "valid")
CIFAR = ((3, 24, 24), "same")


def make(notation: str, shape=MNIST, classes: int = 10, seed: int = 0, **precision) -> QuantizedNet:
    spec = NetSpec(notation, shape[0], classes, shape[1], Precision(**precision))
    torch.manual_seed(seed)
    return QuantizedNet(spec)


def warm_up(model: QuantizedNet, x: torch.Tensor) -> QuantizedNet:
    """A few training-mode passes so batch norm has non-trivial running statistics."""
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(x)
    return model.eval()


@pytest.mark.parametrize(
    ("preset", "shape", "classes"),
    [
        ("nsd-lenet", MNIST, 10),
        ("nsd-fmnist-mlp", MNIST, 10),
        ("sg-lenet", MNIST, 10),
        ("int-lenet", MNIST, 10),
        ("sg-vgg", CIFAR, 100),
        ("nsd-cifar10-cnn1", CIFAR, 10),
    ],
)
def test_preset_output_shapes(preset: str, shape, classes: int) -> None:
    model = make(PRESETS[preset].notation, shape, classes).eval()
    x = torch.rand(3, *shape[0])
    with torch.no_grad():
        logits = model(x)
    assert logits.shape == (3, classes)
    assert logits.dtype == torch.float32
    plan = model.plan
    assert len(model.blocks) == len(plan.hidden)
    assert model.classifier.shape == plan.classifier.weight_shape
    counts = model.counts(x)
    assert [tuple(n.shape[1:]) for n in counts] == [layer.out_shape for layer in plan.hidden]


def test_lenet_layer_shapes() -> None:
    model = make("20C5-P2-50C5-P2-500")
    shapes = [layer.out_shape for layer in model.plan.layers]
    assert shapes == [(20, 24, 24), (20, 12, 12), (50, 8, 8), (50, 4, 4), (500,), (10,)]


@pytest.mark.parametrize(("k", "bound"), [(0, 1), (1, 2), (1, None), (2, 4)])
def test_counts_are_integers_consistent_with_forward(k: int, bound: int | None) -> None:
    model = make("8C5-P2-16C5-P2-32", k=k, B=bound)
    x = torch.rand(16, 1, 28, 28)
    warm_up(model, x)
    counts = model.counts(x)
    assert all(n.dtype == torch.int64 for n in counts)
    assert all(int(n.min()) >= 0 for n in counts)
    if bound is not None:
        assert all(int(n.max()) <= 2**k * bound for n in counts)
    assert any(int(n.max()) > 0 for n in counts)
    with torch.no_grad():
        a = x
        for block, n in zip(model.blocks, counts, strict=True):
            a = block(a)
            assert torch.equal(a, n.float() / 2**k)  # every block's output is n / 2^k
        # the classifier reads the last block's counts / 2^k: the logits agree bit for bit
        logits = F.linear((counts[-1].float() / 2**k).flatten(1), model.classifier)
        assert torch.equal(model(x), logits)


def test_counts_need_eval_mode_and_a_quantized_net() -> None:
    model = make("64-32")
    with pytest.raises(QsnnError) as caught:
        model.counts(torch.rand(2, 1, 28, 28))
    assert str(caught.value) == "counts() needs eval mode: call model.eval() first"
    model = make("64-32", full_precision=True).eval()
    with pytest.raises(QsnnError) as caught:
        model.counts(torch.rand(2, 1, 28, 28))
    assert str(caught.value) == "a full-precision network has no spike counts; train with --k"


def test_encoding_block_uses_its_own_k_and_b() -> None:
    model = make(
        "8C5-P2-16", seed=1, k=0, B=None, ternary=True, encoding_k=0, encoding_B=4
    )
    assert [(block.k, block.bound) for block in model.blocks] == [(0, 4), (0, None), (0, None)]
    x = torch.ones(4, 1, 28, 28)
    with torch.no_grad():
        model.blocks[0].weight.abs_().mul_(10)  # large positive pre-activations: saturate
        model.blocks[1].norm.weight.fill_(50.0)
        model.blocks[1].norm.bias.fill_(20.0)
    model.eval()
    counts = model.counts(x)
    assert int(counts[0].max()) == 4  # 2^0 * 4
    assert int(counts[0].min()) == 4
    assert int(counts[1].max()) > 4  # no bound after the encoding block


def test_ternary_weights_in_hidden_blocks_only() -> None:
    model = make("8C5-P2-16C5-32", ternary=True)
    assert [block.ternary for block in model.blocks] == [False, True, True, True]
    for block in model.blocks[1:]:
        values = block.effective_weight()
        assert set(values.unique().tolist()) == {-1.0, 0.0, 1.0}
    first = model.blocks[0].effective_weight()
    assert torch.equal(first, model.blocks[0].weight)
    assert not set(first.unique().tolist()) <= {-1.0, 0.0, 1.0}
    assert not set(model.classifier.detach().unique().tolist()) <= {-1.0, 0.0, 1.0}
    # the gradient reaches the latent float weights
    model.train()
    model(torch.rand(4, 1, 28, 28)).sum().backward()
    assert all(block.weight.grad is not None for block in model.blocks)


def test_full_precision_has_no_quantizer(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_quantizer(*args, **kwargs):
        raise AssertionError("the quantizer was called")

    monkeypatch.setattr(models, "quantize", no_quantizer)
    model = make("8C5-P2-32", full_precision=True)
    assert not model.quantized
    x = torch.rand(8, 1, 28, 28)
    warm_up(model, x)
    with torch.no_grad():
        y = model.blocks[0].pre_activation(x)
        a = model.blocks[0](x)
    assert torch.equal(a, torch.relu(y))
    assert not torch.equal(a * 2, torch.floor(a * 2))  # not on any quantization grid
    assert model(x).shape == (8, 10)


def test_spec_round_trip_and_signature() -> None:
    spec = NetSpec("8C5-P2-32", (1, 28, 28), 10, "valid", Precision(k=2, B=4, ternary=True))
    assert NetSpec.from_dict(spec.to_dict()) == spec
    model = QuantizedNet(spec)
    assert model.signature() == spec.to_dict()
    assert model.signature()["input_shape"] == [1, 28, 28]
    assert spec.describe() == "8C5-P2-32 (k=2 B=4 ternary)"
