"""A residual net of one's own, trained on genuine Fashion-MNIST, simulated as a spiking graph."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from qsnn import data
from qsnn.nn import ResidualBlock, resnet20, small_resnet
from qsnn.sim.graph import model_agreement, simulate_graph
from qsnn.snn.convert import convert
from qsnn.snn.graph import exact_ann


def _trained_small_resnet(folder, images: int = 1000):
    torch.manual_seed(0)
    model = small_resnet(k=1, B=2)
    train = data.load("fashion-mnist", "train", folder)
    x, y = train.images[:images].float() / 255, train.labels[:images].long()
    optimizer = torch.optim.Adam(model.parameters(), 3e-3)
    for start in range(0, images, 50):
        optimizer.zero_grad()
        F.cross_entropy(model(x[start : start + 50]), y[start : start + 50]).backward()
        optimizer.step()
    return model.eval()


@pytest.mark.slow
def test_a_trained_residual_net_converts_losslessly_under_every_scheme(shared_datasets):
    """The small ResNet (two residual blocks, a strided 1x1 shortcut, average pooling),
    trained briefly on Fashion-MNIST: every scheme agrees with the converted
    model's exact evaluation on every image and every neuron, and that evaluation is the
    trained model's own up to the float rounding of folding its batch norms."""
    model = _trained_small_resnet(shared_datasets)
    test = data.load("fashion-mnist", "test", shared_datasets)
    images = 120
    pixels, labels = test.images[:images].float(), test.labels[:images].long()
    results = {}
    for scheme in ("nsd", "int", "sg"):
        graph = convert(model, pixels[:1] / 255, scheme)
        assert [node.kind for node in graph.nodes].count("add") == 2
        results[scheme] = result = simulate_graph(graph, pixels, labels, batch_size=60)
        assert result.lossless and result.agree[-1] == images, scheme
        assert set(result.count_mismatches.values()) == {0}, scheme
        assert result.correct[-1] == result.ann_correct
    assert results["nsd"].positive == results["int"].positive and results["nsd"].steps == results["int"].steps
    assert sum(map(sum, results["nsd"].negative)) > 0  # (the residual sums make NSD correct itself)
    assert results["sg"].steps == 1 and results["nsd"].steps > 1
    with torch.no_grad():
        float32 = model(pixels / 255).argmax(dim=1)
    agreement = model_agreement(model, graph, pixels)
    assert agreement.same_predictions >= images - 2
    assert int((float32 == exact_ann(graph, pixels).predictions).sum()) >= images - 2
    neurons = images * sum(node.shape[0] * node.shape[-1] * node.shape[-2] for node in graph.populations)
    assert sum(agreement.count_mismatches.values()) <= neurons // 10_000  # (float rounding at level boundaries only)


def test_the_presets_have_the_papers_shapes():
    net = resnet20()
    blocks = [module for module in net.modules() if isinstance(module, ResidualBlock)]
    convolutions = [module for module in net.modules() if isinstance(module, torch.nn.Conv2d) and module.kernel_size == (3, 3)]
    assert len(blocks) == 9 and len(convolutions) == 19  # (+ the classifier: 20 weighted layers)
    assert net(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
    graph = convert(net.eval(), torch.zeros(1, 3, 32, 32), "nsd")
    assert len(graph.populations) == 19 and [n.kind for n in graph.nodes].count("add") == 9
    small = small_resnet()
    assert small(torch.zeros(1, 1, 28, 28)).shape == (1, 10)
    assert sum(p.numel() for p in small.parameters()) < 20_000 and small.classifier.in_features == 16 * 7 * 7
