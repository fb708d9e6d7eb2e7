"""Core counts, checked against hand computations (docs/EXPORT.md, "Core mapping")."""

import json

import pytest

from qsnn.deploy.mapping import format_mapping, map_conv, map_cores, map_dense, parse_core
from qsnn.errors import QsnnError
from qsnn.snn.convert import convert
from tests.helpers import random_net


def test_dense_layer_splits_fan_in_and_neurons():
    # 800 -> 500 on 256x256: ceil(800/256) = 4 axon groups x ceil(500/256) = 2 chunks
    layer = map_dense("d", 800, 500, 1, 1, 256, 256)
    assert (layer.input_groups, layer.cores) == (4, 8)
    # SG, 4 copies in and 2 out: 3,200 axons -> 13 groups; 1,000 neurons -> 4 chunks
    assert map_dense("d", 800, 500, 4, 2, 256, 256).cores == 13 * 4
    assert map_dense("d", 200, 100, 1, 1, 256, 256).cores == 1


def test_convolution_tiles_by_hand():
    # P2 4x8x8 -> 8x4x4 on 64 axons x 32 neurons: a 2x2 tile reads 4 ch x 4 x 4 = 64
    # axons and holds 4 x 8 = 32 neurons; 4 tiles, and 128 neurons / 32 is the minimum
    layer = map_conv("c", (4, 8, 8), (8, 4, 4), 2, 2, 1, 1, 64, 32)
    assert layer.cores == 4 and layer.input_groups == 1 and layer.fan_in == 16
    assert layer.tile[0] * layer.tile[1] * layer.neurons_per_position == 32
    # SG with 2 copies in and out: 2-position tiles (8 units x 2 x 4 = 64 axons, 2 x 16
    # = 32 neurons), 16 positions / 2 = 8 cores
    sg = map_conv("c", (4, 8, 8), (8, 4, 4), 2, 2, 2, 2, 64, 32)
    assert sg.cores == 8 and sg.neurons == 256


def test_convolution_whose_fan_in_exceeds_the_axons_splits_input_channels():
    # 64x3x3 -> 10x1x1 with a 3x3 kernel: fan-in 576 > 256; 28 channels (252 axons) per
    # core, ceil(64 / 28) = 3 partial-sum cores
    layer = map_conv("c", (64, 3, 3), (10, 1, 1), 3, 1, 1, 1, 256, 256)
    assert (layer.fan_in, layer.input_groups, layer.axons_used, layer.cores) == (576, 3, 252, 3)


def test_first_mnist_layer_is_optimal():
    # 1x28x28 -> 6x24x24 (5x5) on 256x256: 5x8 positions x 6 channels (240 neurons,
    # 9x12 = 108 axons) give ceil(24/5) x ceil(24/8) = 15 cores. The neuron bound,
    # ceil(3456/256) = 14, is out of reach: it needs 14 tiles of all 6 channels or 7 of
    # 3-5 channels, and ceil(24/th) x ceil(24/tw) is never 14 or 7
    assert map_conv("c", (1, 28, 28), (6, 24, 24), 5, 1, 1, 1, 256, 256).cores == 15


def test_whole_net_sg_multiplies_by_copies_and_counts_the_output():
    model = random_net("6C5-P2-8C3-12", k=1, B=2, ternary=True, seed=0)
    int_report = map_cores(convert(model, "int"), 256, 256)
    sg_report = map_cores(convert(model, "sg"), 256, 256)
    assert [layer.name for layer in sg_report.layers][-1] == "output"
    assert [layer.copies_out for layer in int_report.layers] == [1, 1, 1, 1, 1]
    assert [layer.copies_out for layer in sg_report.layers] == [4, 4, 4, 4, 1]
    assert [layer.copies_in for layer in sg_report.layers] == [1, 4, 4, 4, 4]
    for a, b in zip(int_report.layers[:-1], sg_report.layers[:-1], strict=True):
        assert b.neurons == 4 * a.neurons
    assert sg_report.layers[-1].fan_in == 4 * 12 and sg_report.layers[-1].cores == 1
    assert sg_report.total_cores == sum(layer.cores for layer in sg_report.layers)
    assert sg_report.total_cores > int_report.total_cores
    data = json.loads(json.dumps(sg_report.to_dict()))
    assert data["total_cores"] == sg_report.total_cores and data["core"] == {"axons": 256, "neurons": 256}
    text = format_mapping(sg_report)
    assert "layer1" in text and "output" in text and f"total: {sg_report.total_cores:,} cores" in text


def test_bad_core_specs_are_refused():
    assert parse_core("256x128") == (256, 128)
    assert parse_core(" 64X32 ") == (64, 32)
    for text in ("256", "0x256", "256x", "axb", "-1x4"):
        with pytest.raises(QsnnError, match="AXONSxNEURONS"):
            parse_core(text)
    net = convert(random_net("6C5-P2-8C3-12", k=1, B=2, ternary=True, seed=1), "int")
    with pytest.raises(QsnnError, match="axons"):
        map_cores(net, 0, 256)
    with pytest.raises(QsnnError, match="neurons"):
        map_cores(net, 256, True)
    with pytest.raises(QsnnError, match=r"5x5 window needs 25 axons"):
        map_cores(net, 16, 256)
