"""The scheme registry (qsnn.snn.schemes): what each scheme is, and every registered scheme
through the whole path, convert -> simulate -> export -> the NumPy deployment runner."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from qsnn.deploy import runner as deploy
from qsnn.deploy.export import export_package
from qsnn.errors import QsnnError
from qsnn.sim.run import simulate
from qsnn.snn import schemes
from qsnn.snn.convert import applicable_schemes, convert, skipped_schemes
from qsnn.snn.schemes import SCHEMES
from tests.helpers import random_net, random_pixels


def test_the_registry_says_what_each_scheme_is():
    assert list(SCHEMES) == ["nsd", "sg", "int"]
    nsd, sg, integer = SCHEMES["nsd"], SCHEMES["sg"], SCHEMES["int"]
    assert [s.single_step for s in (nsd, sg, integer)] == [False, True, False]
    assert [s.binary_copies for s in (nsd, sg, integer)] == [False, True, False]
    assert [s.hidden_neuron for s in (nsd, sg, integer)] == ["negative-spike", "scatter-gather", "adaptive"]
    assert [s.noise for s in (nsd, sg, integer)] == ["pixels", "spikes", "pixels"]
    assert [s.rounded_thresholds for s in (nsd, sg, integer)] == [False, False, True]
    assert [s.standard_nir for s in (nsd, sg, integer)] == [False, True, False]
    assert schemes.of("SG") is sg
    with pytest.raises(QsnnError, match="unknown scheme 'tdsnn': use one of nsd, sg, int"):
        schemes.of("tdsnn")


def test_what_each_scheme_needs_of_the_trained_network():
    unbounded = random_net("6C5-P2-12", k=1, B=None, ternary=False, seed=1)
    assert SCHEMES["nsd"].missing(unbounded) == []
    assert SCHEMES["sg"].missing(unbounded) == ["an upper bound B on every block (train with --B 1, 2 or 4)"]
    assert len(SCHEMES["int"].missing(unbounded)) == 2
    assert applicable_schemes(unbounded) == ["nsd"] and sorted(skipped_schemes(unbounded)) == ["int", "sg"]
    bounded = random_net("6C5-P2-12", k=1, B=2, ternary=True, seed=1)
    assert applicable_schemes(bounded) == ["nsd", "sg", "int"] and skipped_schemes(bounded) == {}


@pytest.mark.parametrize("name", list(SCHEMES))
def test_every_registered_scheme_from_conversion_to_deployment(name, tmp_path):
    """Lossless against the quantized ANN, one step exactly for single-step schemes, and the
    exported package's NumPy runner gives the simulator's predictions, spikes and counts."""
    scheme = SCHEMES[name]
    model = random_net("6C5-P2-8C3-12", k=1, B=2, ternary=True, seed=5)
    pixels, labels = random_pixels(16, seed=5), torch.randint(0, 10, (16,), generator=torch.Generator().manual_seed(5))
    net = convert(model, name)
    result = simulate(net, pixels, labels, steps=None)
    assert result.agree[-1] == 16 and result.count_mismatches == [0, 0, 0, 0]
    assert result.verified_images == 16 and result.verified_disagreements == 0
    if scheme.single_step:
        assert result.steps == 1 and sum(map(sum, result.negative)) == 0
    package = deploy.load(export_package(net, tmp_path / "pkg"))
    assert package.scheme == name
    ran = deploy.run(package, pixels.numpy())
    assert ran.steps == result.steps
    assert np.array_equal(ran.positive.sum(axis=1), np.array([sum(layer) for layer in result.positive]))
    assert np.array_equal(ran.negative.sum(axis=1), np.array([sum(layer) for layer in result.negative]))
    assert int((ran.predictions[-1] == labels.numpy()).sum()) == result.correct[-1]


TOY = schemes.Scheme(
    "nsd-rising", "NSD-R", "(none: a scheme made for this test)", single_step=False, binary_copies=False,
    hidden_neuron="negative-spike", rising_encoding=True, noise="pixels", needs_bounds=False, needs_ternary=False,
    needs_bounded_encoding=True, rounded_thresholds=False, integer_package=False, standard_nir=False,
    encoding_rule="thermometer code with rising thresholds", hidden_rule="integrate-and-fire with negative spikes",
)


def test_a_fourth_scheme_is_one_registry_entry(monkeypatch, tmp_path):
    """A scheme made of registered parts (here INT's rising encoding before NSD's hidden
    neurons) needs its Scheme entry and nothing else: it converts, the event engine and
    the step-by-step simulator run it count for count, it is lossless against the exact
    ANN, and its exported package runs in the NumPy runner."""
    from qsnn.sim.stepwise import simulate_batch
    from qsnn.snn.neurons import NEURON_MODELS

    monkeypatch.setitem(SCHEMES, TOY.name, TOY)
    assert [NEURON_MODELS[TOY.neuron(role)].name for role in ("encoding", "hidden")] == ["rising-threshold", "negative-spike"]
    model = random_net("6C5-P2-8C3-12", k=1, B=2, ternary=True, seed=7)
    assert TOY.name in applicable_schemes(model)
    pixels, labels = random_pixels(12, seed=7), torch.randint(0, 10, (12,), generator=torch.Generator().manual_seed(7))
    net = convert(model, TOY.name)
    result = simulate(net, pixels, labels, steps=None)
    assert result.agree[-1] == 12 and result.count_mismatches == [0, 0, 0, 0] and result.verified_disagreements == 0
    stepwise = simulate_batch(net, pixels.to(torch.float64), result.steps)
    assert [int(p.sum()) for p in stepwise.positive] == [sum(layer) for layer in result.positive]
    assert [int(n.sum()) for n in stepwise.negative] == [sum(layer) for layer in result.negative]
    with pytest.raises(QsnnError, match="^this NSD-R network has real-valued hidden weights"):
        export_package(convert(random_net("6C5-P2-8C3-12", k=1, B=2, ternary=False, seed=7), TOY.name), tmp_path / "no")
    ran = deploy.run(deploy.load(export_package(net, tmp_path / "pkg")), pixels.numpy())
    assert ran.steps == result.steps
    assert np.array_equal(ran.positive.sum(axis=1), np.array([sum(layer) for layer in result.positive]))
    assert int((ran.predictions[-1] == labels.numpy()).sum()) == result.correct[-1]
