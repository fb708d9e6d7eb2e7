"""The papers' notation: every net of the tables parses, presets match the original code,
property-based round trips, and errors that point at the offending token."""

import math
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from qsnn.cli import main
from qsnn.errors import QsnnError
from qsnn.net.notation import (
    PRESETS,
    Conv,
    Dense,
    Pool,
    build_plan,
    format_items,
    parse,
    resolve_net,
)

PAPER_NETS = [
    "20C5-P2-50C5-P2-500",
    "400-400",
    "32C5-P2-64C5-P2-1024",
    "96C3-256C3-P2-384C3-P2-384C3-256C3-P2-1024-1024",
    "128C3-256C3-P2-512C3-P2-1024C3-512C3-P2-1024-512",
    "16C5-P2-16C5-P2-256",
    "64C3*2-P2-128C3*2-P2-256C3*2-P2-512C3-512",
    "32C5-P2-64C5-P2-1000",
]


@pytest.mark.parametrize("notation", PAPER_NETS)
def test_every_net_in_the_papers_tables_parses(notation):
    items = parse(notation)
    assert parse(format_items(items)) == items
    shape, padding = ((3, 24, 24), "same") if "C3" in notation else ((1, 28, 28), "valid")
    plan = build_plan(notation, shape, 10, padding)
    assert plan.classifier.out_shape == (10,)


def test_repeats_expand():
    assert parse("64C3*2-P2-10") == [Conv(64, 3), Conv(64, 3), Pool(2), Dense(10)]


def test_mnist_lenet_shapes_follow_the_original_code():
    plan = build_plan(PRESETS["nsd-lenet"].notation, (1, 28, 28), 10, "valid")
    assert [layer.out_shape for layer in plan.layers] == [
        (20, 24, 24), (20, 12, 12), (50, 8, 8), (50, 4, 4), (500,), (10,)
    ]
    assert plan.params == 443_380  # weights + BN gamma/beta, no biases


def test_sg_preset_has_the_extra_same_padded_convolution():
    plan = build_plan(PRESETS["sg-lenet"].notation, (1, 28, 28), 10, "valid")
    assert [(layer.out_shape, layer.padding) for layer in plan.hidden] == [
        ((16, 28, 28), 2), ((16, 24, 24), 0), ((16, 12, 12), 0), ((32, 8, 8), 0), ((32, 4, 4), 0), ((256,), 0)
    ]


def test_cifar_first_fully_connected_block_reads_the_last_3x3_map():
    plan = build_plan(PRESETS["nsd-cifar10-cnn1"].notation, (3, 24, 24), 10, "same")
    first_dense = next(layer for layer in plan.layers if layer.kind == "dense")
    assert first_dense.in_shape == (256, 3, 3) and first_dense.in_features == 2304
    assert plan.layers[1].padding == 1 and plan.layers[2].kernel == 2 and plan.layers[2].stride == 2


def test_macs_are_exact_at_the_borders():
    plan = build_plan("2C3s-4", (1, 4, 4), 3, "valid")
    # 3x3 same padding on 4x4: taps per row 2+3+3+2 = 10, so 10 * 10 * 1 * 2 MACs
    assert plan.layers[0].macs == 200
    assert plan.layers[1].macs == 2 * 16 * 4


@pytest.mark.parametrize(
    ("notation", "message"),
    [
        ("20C5-P2-5OC5", "item 3 '5OC5' at character 9 is not understood"),
        ("20C5--500", "item 2 '' at character 6 is not understood"),
        ("20c5-500", "unknown net '20c5-500'"),
        ("", "empty network notation"),
        ("0C5-500", "item 1 '0C5' at character 1 is not understood"),
        ("20C5*0", "item 1 '20C5*0' at character 1 is not understood"),
        ("2P2-10", "item 1 '2P2' at character 1 is not understood"),
        ("P2s-10", "item 1 'P2s' at character 1 is not understood"),
        ("20C5\n-500", "item 1 '20C5\\n' at character 1 is not understood"),
        ("500*99999999999", "bad network notation '500*99999999999': item 1 '500*99999999999' asks for 99999999999 repetitions; qsnn takes at most 256"),
        ("P2*99999999999", "asks for 99999999999 repetitions; qsnn takes at most 256"),
        ("1C1*10000000", "item 1 '1C1*10000000' asks for 10000000 repetitions; qsnn takes at most 256"),
        ("9" * 5000, "bad network notation of 5,000 characters: too long"),
        ("9" * 30, "asks for 999999999999... units; qsnn takes at most 65,536"),
        ("20C65-10", "asks for 65 as kernel size; qsnn takes at most 64"),
        ("-".join(["8C1*200"] * 3), "more than 512 items once repeated; qsnn takes at most 512"),
    ],
)
def test_bad_notation_names_the_token_and_position(notation, message):
    with pytest.raises(QsnnError, match=re.escape(message)):
        resolve_net(notation)


@pytest.mark.parametrize("notation", ["20C5s-P2-500", "16C5s-16C5-P2-32C5-P2-256", "16C5v-P2-10", "  20C5-500 "])
def test_padding_suffixes_are_notation_not_preset_names(notation):
    assert resolve_net(notation) == (notation.strip(), None)


def test_nets_too_large_for_a_machine_are_refused_before_anything_is_built():
    with pytest.raises(QsnnError) as refused:
        build_plan("60000-60000-60000", (1, 28, 28), 10, "valid")
    assert str(refused.value) == (
        "'60000-60000-60000' on 1x28x28 inputs has 7,247,640,000 weights and 180,010 neurons per image; "
        "qsnn takes at most 2,000,000,000 and 100,000,000"
    )


def test_nets_that_do_not_fit_the_input_are_explained():
    with pytest.raises(QsnnError, match=r"item 5 '50C5' of '20C5-P2-50C5-P2-50C5' needs at least a 5x5 input but gets 4x4; remove a layer or use 'same' padding \(e.g. 50C5s\)"):
        build_plan("20C5-P2-50C5-P2-50C5", (1, 28, 28), 10, "valid")
    with pytest.raises(QsnnError, match="is a convolution after a fully connected layer"):
        build_plan("500-20C5", (1, 28, 28), 10, "valid")
    with pytest.raises(QsnnError, match="'same' padding needs an odd kernel size"):
        build_plan("8C4s", (1, 28, 28), 10, "valid")
    with pytest.raises(QsnnError) as refused:  # (no 'same' padding for a P block to suggest)
        build_plan("8C5-P2-P2-P2-P2-P2", (1, 28, 28), 10, "valid")
    assert str(refused.value).endswith("needs at least a 2x2 input but gets 1x1; remove a layer or give a larger input")


def test_qsnn_nets_prints_layers_shapes_and_parameters(capsys):
    assert main(["nets", "nsd-lenet"]) == 0
    out = capsys.readouterr().out
    assert "nsd-lenet: 20C5-P2-50C5-P2-500 on mnist 1x28x28" in out
    assert "5  500              500       401,000    400,000" in out
    assert "   total                      443,380  2,683,400" in out
    assert main(["nets"]) == 0
    listing = capsys.readouterr().out
    assert all(f"{name}: " in listing for name in PRESETS)
    assert main(["nets", "20C5-P2-5OC5"]) == 2
    assert "bad network notation '20C5-P2-5OC5': item 3 '5OC5'" in capsys.readouterr().err


# --- property-based -----------------------------------------------------------------------

positive = st.integers(min_value=1, max_value=4096)
conv = st.builds(Conv, positive, st.integers(1, 11), st.sampled_from([None, "same", "valid"]))
item = st.one_of(conv, st.builds(Pool, st.integers(1, 8)), st.builds(Dense, positive))


@given(st.lists(item, min_size=1, max_size=12))
def test_format_then_parse_is_the_identity(items):
    assert parse(format_items(items)) == items


@given(st.lists(item, min_size=1, max_size=8), st.integers(0, 7))
def test_parse_then_format_is_canonical(items, _):
    text = format_items(items)
    assert format_items(parse(text)) == text


@given(st.text(alphabet="0123456789CPsv*-x ", min_size=1, max_size=20))
def test_any_string_parses_or_fails_with_one_clear_line(text):
    try:
        items = parse(text)
    except QsnnError as error:
        message = str(error)
        assert "\n" not in message
        assert message.startswith(("bad network notation", "empty network notation"))
    else:
        assert items and format_items(items).replace("-", "")


@given(st.lists(st.one_of(st.builds(Conv, st.integers(1, 64), st.sampled_from([1, 3, 5]), st.just("same")),
                          st.builds(Pool, st.just(2))), min_size=0, max_size=4),
       st.lists(st.builds(Dense, st.integers(1, 64)), min_size=0, max_size=2))
def test_plans_chain_shapes(convs, dense):
    items = convs + dense
    if not items:
        return
    try:
        plan = build_plan(format_items(items), (1, 16, 16), 5, "valid")
    except QsnnError as error:
        assert "needs at least" in str(error)
        return
    for before, after in zip(plan.layers, plan.layers[1:], strict=False):
        assert after.in_shape == before.out_shape
    assert plan.macs == sum(layer.macs for layer in plan.layers) > 0


# Every preset's layers as the original code builds them: (output channels, output size,
# fan-in) per layer, the classifier last. "P2" is a learned 2x2 stride-2 convolution, and a
# dense layer over a map is the original's unpadded convolution as large as the map.
ORIGINAL_LAYERS = {
    # Spiking_Networks_with_Negative_Spike_Dynamics/MNIST/Quant_LeNet_MNIST.py (bcnn1..bcnn4, fc1, bout)
    "nsd-lenet": [(20, 24, 25), (20, 12, 80), (50, 8, 500), (50, 4, 200), (500, 1, 800), (10, 1, 500)],
    # .../FashionMNIST/MLP/Quant_MLP_FashionMNIST.py (a 28x28 conv of 400 filters, a 1x1 conv, the output)
    "nsd-fmnist-mlp": [(400, 1, 784), (400, 1, 400), (10, 1, 400)],
    # .../FashionMNIST/LeNet/Quant__LeNet_FashionMNIST.py
    "nsd-fmnist-lenet": [(32, 24, 25), (32, 12, 128), (64, 8, 800), (64, 4, 256), (1024, 1, 1024), (10, 1, 1024)],
    # .../CIFAR10/CNN_1/tensorlayer/models/cnn1_cifar10.py (conv0..conv9, SAME but conv8 VALID; 24x24 crops)
    "nsd-cifar10-cnn1": [
        (96, 24, 27), (256, 24, 864), (256, 12, 1024), (384, 12, 2304), (384, 6, 1536), (384, 6, 3456),
        (256, 6, 3456), (256, 3, 1024), (1024, 1, 2304), (1024, 1, 1024), (10, 1, 1024),
    ],
    # .../CIFAR10/CNN_2/tensorlayer/models/cnn2_cifar10.py
    "nsd-cifar10-cnn2": [
        (128, 24, 27), (256, 24, 1152), (256, 12, 1024), (512, 12, 2304), (512, 6, 2048), (1024, 6, 4608),
        (512, 6, 9216), (512, 3, 2048), (1024, 1, 4608), (512, 1, 1024), (10, 1, 512),
    ],
    # Spatio_temporal_SNNs/LeNet/Quant_LeNet_MNIST.py (bcnn0 SAME, bcnn1..bcnn4, dense as a 4x4 conv, bout)
    "sg-lenet": [(16, 28, 25), (16, 24, 400), (16, 12, 64), (32, 8, 400), (32, 4, 128), (256, 1, 512), (10, 1, 256)],
    # Spatio_temporal_SNNs/VGG/CIFAR10/tensorlayer/models/vgg_cifar10.py (conv00, conv0..conv10; conv10 VALID)
    "sg-vgg": [
        (64, 24, 27), (64, 24, 576), (64, 24, 576), (64, 12, 256), (128, 12, 576), (128, 12, 1152),
        (128, 6, 512), (256, 6, 1152), (256, 6, 2304), (256, 3, 1024), (512, 3, 2304), (512, 1, 4608), (10, 1, 512),
    ],
    # ALL_INT_SNN/MNIST/Quant_LeNet_MNIST.py
    "int-lenet": [(32, 24, 25), (32, 12, 128), (64, 8, 800), (64, 4, 256), (1000, 1, 1024), (10, 1, 1000)],
    # ALL_INT_SNN/CIFAR10/tensorlayer/models/cnn1_cifar10.py (NSD's CNN 1)
    "int-cifar10-cnn1": [
        (96, 24, 27), (256, 24, 864), (256, 12, 1024), (384, 12, 2304), (384, 6, 1536), (384, 6, 3456),
        (256, 6, 3456), (256, 3, 1024), (1024, 1, 2304), (1024, 1, 1024), (10, 1, 1024),
    ],
}


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_is_its_original_codes_net(name):
    from qsnn.data.registry import dataset_info

    preset = PRESETS[name]
    info = dataset_info(preset.dataset)
    plan = build_plan(preset.notation, info.input_shape, info.num_classes, info.default_padding)
    found = []
    for layer in plan.layers:
        size = layer.out_shape[1] if len(layer.out_shape) == 3 else 1
        fan_in = math.prod(layer.in_shape) if layer.kind == "dense" else layer.in_shape[0] * layer.kernel**2
        found.append((layer.out_shape[0], size, fan_in))
    assert found == ORIGINAL_LAYERS[name]


def test_sg_vgg_has_the_original_twelve_convolutions():
    from qsnn.data.registry import dataset_info

    info = dataset_info("cifar10")
    plan = build_plan(PRESETS["sg-vgg"].notation, info.input_shape, 100, info.default_padding)
    assert len(plan.hidden) == 12 and plan.classifier.out_shape == (100,)
