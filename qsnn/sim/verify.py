"""Checking a simulation: its counts and predictions against a reference ANN.

:class:`ModelCheck` compares a simulation, batch by batch, with the exact ANN of the
trained model (:class:`qsnn.snn.exact.ExactANN`), on every image or on a sample; it
counts the images whose prediction differs and, per layer, the neurons whose final count
differs. :func:`check_against_reference` is the cheaper consistency check against the
tables' ANN.
"""

from __future__ import annotations

import torch

from qsnn.errors import QsnnError
from qsnn.sim import engine
from qsnn.snn.exact import ExactANN
from qsnn.snn.model import SpikingNet
from qsnn.snn.reference import (
    cpu_kernels,
    reference_counts,
)


def count_differences(first: torch.Tensor, second: torch.Tensor) -> int:
    """Entries in which two count tensors differ (one pass on the CPU, whatever the dtypes)."""
    if not (cpu_kernels(first) and cpu_kernels(second)):
        return int((first != second.to(first.device)).sum())
    return engine.differences(first.numpy(), second.numpy())


def check_against_reference(net: SpikingNet, checks: list) -> None:
    """Evaluate the quantized ANN from scratch on the images of ``checks`` ((pixels,
    counts per layer, logits) read off simulations), all in one batch, and insist on the
    same counts and logits."""
    checks = [check for check in checks if len(check[0])]
    if not checks:
        return
    pixels = torch.cat([check[0] for check in checks])
    counts = [torch.cat([check[1][index] for check in checks]) for index in range(len(net.layers))]
    logits = torch.cat([check[2] for check in checks])
    tables = reference_counts(net, pixels)
    expected, expected_logits = tables.counts, tables.logits
    for index, (found, wanted) in enumerate(zip(counts, expected, strict=True)):
        if not torch.equal(found.to(torch.int64), wanted.to(torch.int64)):
            raise QsnnError(
                f"internal error: the ANN read off the simulation differs from the exact ANN in layer {index + 1}; "
                "please report it, with the network"
            )
    if not torch.equal(logits, expected_logits):
        raise QsnnError("internal error: the ANN's logits read off the simulation differ from the exact ANN's; please report it")


VERIFY_CHOICES = ("sample", "all", "none")
VERIFY_BATCH = 500


class ModelCheck:
    """SNN results checked against the exact ANN of the trained model (ExactANN, from the
    model's own parameters that ``net`` carries, not from its tables): images checked,
    differing counts per layer, differing final predictions. Either every image, as the
    simulation's reference (:meth:`record`), or a sample added as it comes and evaluated
    in groups of up to VERIFY_BATCH images (:meth:`add`)."""

    def __init__(self, net: SpikingNet) -> None:
        self.net = net
        self._ann = None
        self.pending: list = []
        self._spent = None  # the last result of exact(), reused by the next
        self.images = self.disagreements = 0
        self.differing = [0] * len(net.layers)

    @property
    def ann(self):

        if self._ann is None:
            self._ann = ExactANN(self.net.source_model())
        return self._ann

    def exact(self, pixels: torch.Tensor):
        """The exact ANN of one batch, as the reference of :meth:`record`; each call reuses
        the previous call's count tensors, which the caller is done with by then."""
        self._spent = self.ann(pixels, recycle=self._spent)
        return self._spent

    def record(self, differing: list[int], disagreements: int, images: int) -> None:
        self.differing = [a + b for a, b in zip(self.differing, differing, strict=True)]
        self.disagreements += disagreements
        self.images += images

    def add(self, pixels: torch.Tensor, counts: list, predictions: torch.Tensor) -> None:
        self.pending.append((pixels.cpu().clone(), [c.cpu().clone() for c in counts], predictions.cpu().clone()))
        if sum(len(p[0]) for p in self.pending) >= VERIFY_BATCH:
            self.flush()

    def flush(self) -> None:
        if not self.pending:
            return
        pending, self.pending = self.pending, []
        exact = self.ann(torch.cat([p[0] for p in pending]))
        differing = [count_differences(torch.cat([p[1][index] for p in pending]), exact.counts[index])
                     for index in range(len(self.differing))]
        disagreements = int((torch.cat([p[2] for p in pending]) != exact.predictions).sum())
        self.record(differing, disagreements, len(exact.predictions))
