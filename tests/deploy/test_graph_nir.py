"""A spiking graph of SG exported to NIR (qsnn.deploy.graph_nir), run by an independent
one-step interpreter of the NIR definitions, and read back by qsnn's NIR import."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from qsnn.cli import main
from qsnn.deploy.graph_nir import export_graph_nir, graph_nir
from qsnn.errors import QsnnError
from qsnn.snn.convert import convert
from qsnn.snn.graph import exact_ann
from tests.nir_interpreter import run_one_step
from tests.snn.test_graph import _Concat, random_small_resnet, tie_pixels, tiny_residual

nir = pytest.importorskip("nir")


def _assert_exact(graph, pixels, path):
    """The exported graph, interpreted for one step, gives the graph's exact logits and,
    summed over each channel's copies, every population's counts."""
    export_graph_nir(graph, path)
    read = nir.read(str(path))
    assert read.metadata["portable"] and read.metadata["scheme"] == "sg"
    logits, spikes = run_one_step(read, pixels.numpy().astype(np.float64))
    ann = exact_ann(graph, pixels)
    assert np.array_equal(logits, ann.logits.numpy().astype(np.float64))
    for node in graph.populations:
        fired = spikes[node.name]
        gathered = fired.reshape(len(pixels), node.shape[0], node.levels, *node.shape[1:]).sum(axis=2)
        assert np.array_equal(gathered, ann.counts[node.name].numpy()), node.name
    return ann


@pytest.mark.parametrize(("k", "B"), [(0, 1), (1, 2), (2, 3)])
def test_a_residual_graph_exports_exactly_and_reads_back(tmp_path, k, B):
    model = tiny_residual(k, B, seed=5 + k)
    pixels = tie_pixels(12, seed=k)
    graph = convert(model, pixels[:1] / 255, "sg")
    assert [node.kind for node in graph.nodes].count("add") == 1
    ann = _assert_exact(graph, pixels, tmp_path / "residual.nir")
    for scheme in ("sg", "nsd"):  # (read back: binary populations, the same predictions)
        again = convert(tmp_path / "residual.nir", scheme)
        assert again.source["input_range"] == "raw"
        assert torch.equal(exact_ann(again, pixels).predictions, ann.predictions), scheme


def test_a_small_resnet_exports_exactly(tmp_path):
    model = random_small_resnet(1, 2, seed=2)
    pixels = torch.randint(0, 256, (6, 1, 28, 28), generator=torch.Generator().manual_seed(2)).float()
    graph = convert(model, pixels[:1] / 255, "sg")
    _assert_exact(graph, pixels, tmp_path / "resnet.nir")


def test_what_nir_cannot_hold_is_refused_in_one_line(tmp_path, capsys):
    model = tiny_residual(1, 2, seed=1)
    nsd = convert(model, torch.zeros(1, 1, 6, 6), "nsd")
    with pytest.raises(QsnnError, match=r"^a NSD graph needs negative spikes and adapting thresholds, which standard NIR "
                       r"cannot express; convert the model with scheme sg to export it to NIR$"):
        graph_nir(nsd)
    concat = convert(_Concat(nn.AvgPool2d(2)).eval(), torch.zeros(1, 1, 12, 12), "sg")
    with pytest.raises(QsnnError, match=r"^node 'cat' is a concatenation, which NIR has no node for; this graph cannot "
                       r"be exported to NIR$"):
        export_graph_nir(concat, tmp_path / "cat.nir")
    assert not (tmp_path / "cat.nir").exists()
    sg = convert(model, torch.zeros(1, 1, 6, 6), "sg")
    sg.save(tmp_path / "g.npz")
    assert main(["export", str(tmp_path / "g.npz"), "--format", "nir", "-o", str(tmp_path / "g.nir")]) == 0
    assert capsys.readouterr().out == f"wrote {tmp_path / 'g.nir'}\n"
    assert main(["export", str(tmp_path / "g.npz"), "--format", "qsnn-int", "-o", str(tmp_path / "pkg")]) == 2
    assert capsys.readouterr().err == (
        "qsnn: error: a converted model of your own exports to NIR (--format nir, SG, one time step); the qsnn-int "
        "package holds the notation nets' chain networks\n"
    )
