"""The three conversion schemes as objects: what each one is, in one place.

A :class:`Scheme` lists the properties the rest of qsnn asks about a scheme (whether it
runs one time step, what its neurons are, what noise means for it, what it needs of the
trained network, how it exports, how its original code counts); ``SCHEMES`` maps each
name to its object, in the papers' order. Code that behaves differently per scheme asks
the object (``of(net.scheme).single_step``), never compares names, so a new scheme is one
entry here plus the kernels that implement its neurons.

Pure Python, no PyTorch: the NumPy deployment runner (:mod:`qsnn.deploy.runner`) uses it too.
"""

from __future__ import annotations

from dataclasses import dataclass

from qsnn.errors import QsnnError

CIFAR_LIKE = ("cifar10", "cifar100")
NSD_FILES = ("accuracy.txt", "spike_num.txt", "spike_collect.txt", "sop_num.txt")


@dataclass(frozen=True)
class PaperConvention:
    """How one original code base counts spikes and SOPs (its text files and figures),
    relative to qsnn's SOPs of each layer's spikes (``result.sops[l]``: layer l's spikes
    times their exact fan-out; the last layer's into the output accumulator).

    - ``encoding_spikes``: whether the encoding layer's spikes are in spike_num;
    - ``encoding_weight``: SOPs per synapse of an encoding spike (INT: 2^k, its magnitude);
    - ``classifier``: whether the output accumulator's additions are counted (and the
      classifier's MACs in the ANN ops);
    - ``factor``: a multiplier on the total (SG: 2);
    - ``files``: the text files the original writes;
    - ``float_counts``: whether it writes spike_num and sop_num as floats ("2442406.0").
    """

    encoding_spikes: bool
    encoding_weight: int
    classifier: bool
    factor: int
    files: tuple[str, ...]
    float_counts: bool = False

    def sops(self, per_layer: list[float]) -> float:
        """The original's SOPs from qsnn's SOPs of each layer's spikes."""
        last = len(per_layer) - 1
        total = sum(
            value * (self.encoding_weight if index == 0 else 1)
            for index, value in enumerate(per_layer) if index < last or self.classifier
        )
        return self.factor * total

    def spikes(self, per_layer: list[float]) -> float:
        """The original's spike count from qsnn's spikes of each layer."""
        return sum(value for index, value in enumerate(per_layer) if index > 0 or self.encoding_spikes)


@dataclass(frozen=True)
class Scheme:
    """One conversion scheme (ALGORITHMS.md §2)."""

    name: str  # as written in files and on the command line
    title: str  # as the papers write it
    code: str  # the original repository
    single_step: bool  # every spike in one time step (SG); else spikes over time
    binary_copies: bool  # each ANN neuron becomes 2^k*B binary neurons (SG)
    hidden_neuron: str  # "negative-spike" (NSD), "adaptive" (INT's dynamic thresholds), "scatter-gather"
    rising_encoding: bool  # the encoding layer emits its count over 2^k*B steps, thresholds rising (INT)
    noise: str  # what --noise perturbs: "pixels" (multiplicative pixel noise) or "spikes" (dropped)
    needs_bounds: bool  # every block needs an upper bound B (SG)
    needs_ternary: bool  # hidden weights must be ternary, so every membrane is an integer (INT)
    needs_bounded_encoding: bool  # the encoding block needs B (INT)
    rounded_thresholds: bool  # can reproduce the paper's thresholds rounded to 1/scale (INT)
    integer_package: bool  # always a qsnn-int package (else only with integer hidden weights)
    standard_nir: bool  # expressible with standard NIR nodes (IF neurons, one step)
    encoding_rule: str = ""  # the encoding layer's neuron, in words (exported with the net)
    hidden_rule: str = ""  # a hidden layer's neuron, in words

    def neuron(self, role: str) -> str:
        """The neuron model of a layer with ``role`` ("encoding" or "hidden"): a name in
        :data:`qsnn.snn.neurons.NEURON_MODELS` (time-stepped schemes), where the step
        functions are; "rising-threshold" for a rising encoding, else the hidden neuron."""
        return "rising-threshold" if role == "encoding" and self.rising_encoding else self.hidden_neuron

    def neuron_rule(self, role: str) -> str:
        """What a neuron of a layer with ``role`` ("encoding" or "hidden") does, in words."""
        return self.encoding_rule if role == "encoding" else self.hidden_rule

    def missing(self, model) -> list[str]:
        """What a trained network (a QuantizedNet) lacks for this scheme, each with its fix."""
        needs = []
        if self.needs_bounds and any(block.bound is None for block in model.blocks):
            needs.append("an upper bound B on every block (train with --B 1, 2 or 4)")
        if self.needs_ternary and not model.spec.precision.ternary and len(model.blocks) > 1:
            needs.append("ternary hidden weights (--ternary)")
        if self.needs_bounded_encoding and model.blocks[0].bound is None:
            needs.append("a bounded encoding block (--B, or --encoding-k 0 --encoding-B 4 as the paper)")
        return needs

    def paper_convention(self, k: int, dataset: str | None) -> PaperConvention:
        """How this scheme's original code counts, for a net of level ``k`` on ``dataset``
        (ALGORITHMS.md §4):

        - NSD: every layer's spikes, the encoding layer's included; SOPs as qsnn counts
          them, accumulator included.
        - SG: spikes of every layer; SOPs twice qsnn's, without the accumulator; no
          spike_collect.txt; spike_num and sop_num written as floats.
        - INT: the encoding layer's spikes left out of the spike counts, each of them 2^k
          SOPs per synapse; the accumulator counted for MNIST-sized data, not for CIFAR;
          also abs_spike.txt and sum_spike.txt.
        """
        if self.binary_copies:
            return PaperConvention(True, 1, False, 2, ("accuracy.txt", "spike_num.txt", "sop_num.txt"), True)
        if self.rising_encoding:
            return PaperConvention(
                False, 1 << k, dataset not in CIFAR_LIKE, 1, (*NSD_FILES, "abs_spike.txt", "sum_spike.txt"),
            )
        return PaperConvention(True, 1, True, 1, NSD_FILES)


SCHEMES: dict[str, Scheme] = {
    scheme.name: scheme
    for scheme in (
        Scheme(
            "nsd", "NSD", "Spiking_Networks_with_Negative_Spike_Dynamics", single_step=False, binary_copies=False,
            hidden_neuron="negative-spike", rising_encoding=False, noise="pixels", needs_bounds=False,
            needs_ternary=False, needs_bounded_encoding=False, rounded_thresholds=False, integer_package=False,
            standard_nir=False,
            encoding_rule=(
                "integrate-and-fire with negative spikes; V = W (*) pixels arrives at t = 0 only. "
                "Each step: V += current; +1 (c += 1) if V >= T(c); -1 (c -= 1) if V < T(c - 1); else "
                "nothing"
            ),
            hidden_rule=(
                "integrate-and-fire with negative spikes. Each step: V += W (*) s_prev(t) (signed "
                "spikes of the previous layer in the same step); +1 (c += 1) if V >= T(c); -1 (c -= "
                "1) if V < T(c - 1); else nothing"
            ),
        ),
        Scheme(
            "sg", "SG", "Spatio_temporal_SNNs", single_step=True, binary_copies=True,
            hidden_neuron="scatter-gather", rising_encoding=False, noise="spikes", needs_bounds=True,
            needs_ternary=False, needs_bounded_encoding=False, rounded_thresholds=False, integer_package=True,
            standard_nir=True,
            encoding_rule=(
                "scatter-and-gather, one step: the channel's `levels` binary neurons share the "
                "membrane V = W (*) pixels; binary neuron i fires once iff V >= T(i); the layer "
                "passes on the gathered count n = #{i : V >= T(i)}"
            ),
            hidden_rule=(
                "scatter-and-gather, one step: V = W (*) n_prev (the previous layer's gathered "
                "counts); binary neuron i fires once iff V >= T(i); count n = #{i : V >= T(i)}"
            ),
        ),
        Scheme(
            "int", "INT", "ALL_INT_SNN", single_step=False, binary_copies=False,
            hidden_neuron="adaptive", rising_encoding=True, noise="pixels", needs_bounds=False,
            needs_ternary=True, needs_bounded_encoding=True, rounded_thresholds=True, integer_package=True,
            standard_nir=False,
            encoding_rule=(
                "thermometer code: V = W (*) pixels at t = 0, constant afterwards; at step t (t = 0, "
                "1, ...) fire +1 iff V >= T(t): the threshold rises one table level per step"
            ),
            hidden_rule=(
                "integer neuron with two adapting thresholds, upper = T(c) and lower = T(c - 1) "
                "(start: T(0) and -inf). Each step: V += W (*) s_prev(t); +1 if V >= upper, -1 if V < "
                "lower; after a spike c moves by it and both thresholds move one table level"
            ),
        ),
    )
}


def of(name: str) -> Scheme:
    """The scheme called ``name`` (any case); a QsnnError naming the choices otherwise."""
    scheme = SCHEMES.get(name.lower()) if isinstance(name, str) else None
    if scheme is None:
        raise QsnnError(f"unknown scheme {name!r}: use one of {', '.join(SCHEMES)}")
    return scheme
