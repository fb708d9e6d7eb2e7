"""The original code's text files and counting conventions (issue: faithful to the papers).

The files are read here exactly as the original figure scripts read them
(Spiking_Networks_with_Negative_Spike_Dynamics/MNIST/figs/{accuracy_speed,sops,sparsity}.py,
Spatio_temporal_SNNs/VGG/CIFAR10/figs/{accuracy,sops,sparsity}.py), and what those scripts
compute must equal qsnn's own numbers.
"""

from __future__ import annotations

import numpy as np
import pytest

from qsnn.data.readers import embedded_mnist_test
from qsnn.measure.fanout import nominal_ann_macs, paper_convention
from qsnn.pipeline import MODELS
from qsnn.report.summary import summarize
from qsnn.report.tables import write_simulation
from qsnn.sim.run import simulate
from qsnn.snn.convert import convert

IMAGES = 400
BATCH = 200


def _read_like_the_originals(path, time_steps: int, parse) -> np.ndarray:
    """The figure scripts' reader: lines into a list of per-batch lists of ``time_steps``
    values, then summed over batches and divided by the number of images."""
    rows, batch_number, time_step = [[]], 0, 0
    for line in open(path).readlines():  # noqa: SIM115 (as the originals do)
        time_step = time_step + 1
        value = parse(line)
        if time_step == time_steps + 1:
            time_step = 1
            batch_number = batch_number + 1
            rows.append([value])
        else:
            rows[batch_number].append(value)
    return np.sum(np.array(rows) / IMAGES, axis=0)


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    data = embedded_mnist_test()
    pixels, labels = data.images[:IMAGES, :, :28, :28], data.labels[:IMAGES]
    out = {}
    for name, scheme in (("nsd-lenet-k1", "nsd"), ("int-lenet", "int"), ("sg-lenet-k1B2", "sg")):
        net = convert(MODELS / f"{name}.pt", scheme)
        result = simulate(net, pixels, labels, steps=20 if scheme != "sg" else None, batch_size=BATCH)
        summary = summarize(result, net, dataset="mnist")
        folder = write_simulation(tmp_path_factory.mktemp(scheme), summary, result)
        out[scheme] = (net, result, summary, folder)
    return out


def test_nsd_files_read_by_the_original_figure_scripts(written):
    _, result, summary, folder = written["nsd"]
    assert sorted(p.name for p in folder.glob("*.txt")) == ["accuracy.txt", "sop_num.txt", "spike_collect.txt", "spike_num.txt"]
    assert len((folder / "accuracy.txt").read_text().splitlines()) == (IMAGES // BATCH) * 20
    accuracy = _read_like_the_originals(folder / "accuracy.txt", 20, lambda line: int(line.strip("\n")))
    assert accuracy.tolist() == pytest.approx([c / IMAGES for c in result.correct])
    sops = _read_like_the_originals(folder / "sop_num.txt", 20, lambda line: int(line.strip("\n")))[-1]
    assert sops == pytest.approx(summary["paper_convention"]["sops_per_image"]) == pytest.approx(summary["per_image"]["sops"])
    spikes = _read_like_the_originals(folder / "spike_num.txt", 20, lambda line: int(line.strip("\n")))[-1]
    collect = _read_like_the_originals(
        folder / "spike_collect.txt", 20, lambda line: int(line.strip("0\n").strip("."))  # sparsity.py's parser
    )[-1]
    assert (spikes + collect) / 2 == pytest.approx(summary["per_image"]["positive_spikes"])
    assert (spikes - collect) / 2 == pytest.approx(summary["per_image"]["negative_spikes"])
    assert all(line.endswith(".0") for line in (folder / "spike_collect.txt").read_text().splitlines())
    cumulative = [int(line) for line in (folder / "sop_num.txt").read_text().splitlines()[:20]]
    assert cumulative == sorted(cumulative) and cumulative[0] > 0  # since t = 0, never decreasing


def test_sg_files_read_by_the_original_figure_scripts(written):
    _, result, summary, folder = written["sg"]
    assert sorted(p.name for p in folder.glob("*.txt")) == ["accuracy.txt", "sop_num.txt", "spike_num.txt"]
    accuracy = _read_like_the_originals(folder / "accuracy.txt", 1, lambda line: int(line.strip("\n")))
    assert accuracy.tolist() == pytest.approx([result.correct[-1] / IMAGES])
    sops = _read_like_the_originals(folder / "sop_num.txt", 1, lambda line: float(line.strip("\n")))[-1]
    qsnn_sops = [sum(layer) for layer in result.sops]
    assert sops == pytest.approx(2 * sum(qsnn_sops[:-1]) / IMAGES)  # x2, no output accumulator
    assert sops == pytest.approx(summary["paper_convention"]["sops_per_image"])
    spikes = _read_like_the_originals(folder / "spike_num.txt", 1, lambda line: float(line.strip("\n")))[-1]
    assert spikes == pytest.approx(summary["per_image"]["positive_spikes"])
    assert (folder / "spike_num.txt").read_text().splitlines()[0].endswith(".0")
    assert summary["paper_convention"]["ann_ops_per_image"] == 14_548_992  # SG's sops.py, LeNet (no classifier)


def test_int_files_leave_out_the_encoding_layer_and_add_per_step_spikes(written):
    _, result, _, folder = written["int"]
    assert sorted(p.name for p in folder.glob("*.txt")) == [
        "abs_spike.txt", "accuracy.txt", "sop_num.txt", "spike_collect.txt", "spike_num.txt", "sum_spike.txt",
    ]
    lines = {name: (folder / name).read_text().splitlines() for name in ("spike_num.txt", "abs_spike.txt", "sum_spike.txt")}
    hidden_positive = sum(sum(layer) for layer in result.positive[1:])
    hidden_negative = sum(sum(layer) for layer in result.negative[1:])
    last = [int(lines["spike_num.txt"][b * 20 + 19]) for b in range(IMAGES // BATCH)]
    assert sum(last) == hidden_positive + hidden_negative  # cumulative, the encoding layer left out
    assert sum(int(v) for v in lines["abs_spike.txt"]) == hidden_positive + hidden_negative  # per step
    assert sum(int(v) for v in lines["sum_spike.txt"]) == hidden_positive - hidden_negative
    per_step = [int(v) for v in lines["spike_num.txt"][:20]]
    assert np.diff(per_step).tolist() == [int(v) for v in lines["abs_spike.txt"][1:20]]


def test_paper_conventions_against_qsnn_counts():
    """The per-scheme rules, on hand-made per-layer SOPs [encoding, hidden, last]."""
    sops, spikes = [100, 40, 7], [30, 20, 5]
    nsd = paper_convention("nsd", 1, "mnist")
    assert (nsd.sops(sops), nsd.spikes(spikes)) == (147, 55)
    sg = paper_convention("sg", 1, "mnist")
    assert (sg.sops(sops), sg.spikes(spikes)) == (2 * 140, 55)
    int_mnist, int_cifar = paper_convention("int", 2, "mnist"), paper_convention("int", 2, "cifar10")
    assert (int_mnist.sops(sops), int_mnist.spikes(spikes)) == (4 * 100 + 40 + 7, 25)
    assert int_cifar.sops(sops) == 4 * 100 + 40
    assert "abs_spike.txt" in int_cifar.files and "spike_collect.txt" not in sg.files


def test_nominal_ann_ops_are_the_original_scripts_numbers():
    """NSD MNIST's sops.py: (20*12*12*20*2*2 + 50*8*8*20*5*5 + 50*4*4*50*2*2 + 500*1*1*50*4*4 + 500*10)*3."""
    net = convert(MODELS / "nsd-lenet-k1.pt", "nsd")
    assert 3 * nominal_ann_macs(net) == 7_186_200
    sg = convert(MODELS / "sg-lenet-k1B2.pt", "sg")
    assert 3 * nominal_ann_macs(sg, classifier=False) == (16 * 24 * 24 * 16 * 25 + 16 * 12 * 12 * 16 * 4 + 32 * 8 * 8 * 16 * 25
                                                          + 32 * 4 * 4 * 32 * 4 + 256 * 32 * 16) * 3


def test_tables_count_by_the_convention_asked_for(written):
    from qsnn.errors import QsnnError
    from qsnn.report.summary import counted
    from qsnn.report.tables import summary_table

    _, _, summary, _ = written["sg"]
    paper = summary["paper_convention"]
    assert counted(summary, "paper") == (paper["sops_per_image"], paper["ann_ops_per_image"], paper["energy"]["ratio"])
    assert counted(summary) == (summary["per_image"]["sops"], summary["per_image"]["ann_ops"], summary["energy"]["ratio"])
    table = summary_table([summary], "paper")
    assert "SOPs/img (paper)" in table and f"{paper['sops_per_image']:,.0f}" in table and "14,548,992" in table
    assert "SOPs/img (paper)" not in summary_table([summary])
    with pytest.raises(QsnnError, match="--sop-convention must be one of qsnn, paper, got 'tf'"):
        counted(summary, "tf")
    old = {key: value for key, value in summary.items() if key != "paper_convention"}
    with pytest.raises(QsnnError, match="written before qsnn recorded the papers' conventions; simulate it again"):
        counted(old, "paper")
