"""The quantizer of ALGORITHMS.md §1: half-up counts, the bound, the STE, ternary weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from qsnn.errors import QsnnError
from qsnn.net.quantization import (
    Precision,
    check_bound,
    check_level,
    max_count,
    parse_bound,
    quantize,
    quantize_counts,
    ternarize,
    ternary_values,
)


def counts(values: list[float], k: int, bound: int | None) -> list[float]:
    return quantize_counts(torch.tensor(values), k, bound).tolist()


def test_half_up_at_exact_ties_where_torch_round_differs() -> None:
    ties = [0.5, 1.5, 2.5, 3.5]
    assert counts(ties, 0, None) == [1.0, 2.0, 3.0, 4.0]
    assert torch.round(torch.tensor(ties)).tolist() == [0.0, 2.0, 2.0, 4.0]  # half-to-even
    # k=1: a count is half a unit, so y = 0.25 is a tie between 0 and 1 counts
    assert counts([0.25, 0.75, 1.25], 1, None) == [1.0, 2.0, 3.0]
    assert counts([0.125, 0.375], 2, None) == [1.0, 2.0]
    assert counts([0.24, 0.26, 0.74, 0.76], 1, None) == [0.0, 1.0, 1.0, 2.0]


def test_upper_bound_clips_at_two_to_the_k_times_b() -> None:
    assert max_count(1, 2) == 4
    assert max_count(0, 1) == 1
    assert max_count(2, None) is None
    assert counts([1.9, 2.0, 2.2, 10.0], 1, 2) == [4.0, 4.0, 4.0, 4.0]
    assert counts([0.7, 5.0], 0, 1) == [1.0, 1.0]
    assert counts([3.9, 100.0], 2, 4) == [16.0, 16.0]


def test_no_bound_means_unbounded() -> None:
    assert counts([100.2, 1000.0], 1, None) == [200.0, 2000.0]
    assert counts([100.2], 0, None) == [100.0]


def test_negative_and_zero_give_zero_counts() -> None:
    assert counts([-3.0, -0.5, -0.0, 0.0, 0.2], 0, 2) == [0.0, 0.0, 0.0, 0.0, 0.0]
    assert counts([-1e30], 4, None) == [0.0]


def test_counts_keep_dtype_and_quantize_divides_by_two_to_the_k() -> None:
    y = torch.tensor([0.25, 0.8, 3.0], dtype=torch.float64)
    n = quantize_counts(y, 1, 1)
    assert n.dtype == torch.float64
    assert n.tolist() == [1.0, 2.0, 2.0]
    assert quantize(y, 1, 1).tolist() == [0.5, 1.0, 1.0]
    assert quantize(torch.tensor([0.3, 0.9]), 2, None).tolist() == [0.25, 1.0]


def test_half_up_is_exact_just_below_a_tie() -> None:
    below_half = float(np.nextafter(np.float32(0.5), np.float32(0)))
    below_quarter = float(np.nextafter(np.float32(0.25), np.float32(0)))
    assert counts([below_half], 0, None) == [0.0]
    assert counts([below_quarter], 1, None) == [0.0]
    assert counts([8388609.0], 0, None) == [8388609.0]


def test_straight_through_gradient_is_one_strictly_inside_zero_to_b() -> None:
    y = torch.tensor([-1.0, 0.0, 1e-6, 0.3, 1.0, 1.99, 2.0, 3.0], requires_grad=True)
    upstream = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0])
    (quantize(y, 1, 2) * upstream).sum().backward()
    assert y.grad.tolist() == [0.0, 0.0, 3.0, 4.0, 5.0, 6.0, 0.0, 0.0]

    y = torch.tensor([-1.0, 0.0, 0.3, 2.0, 1e6], requires_grad=True)
    quantize(y, 0, None).sum().backward()
    assert y.grad.tolist() == [0.0, 0.0, 1.0, 1.0, 1.0]


def test_ternary_values_and_threshold() -> None:
    w = torch.tensor([3.0, -3.0, 1.0, -1.0, 0.0, 2.0, -2.0])  # delta = 0.7 * 12/7 = 1.2
    assert ternary_values(w).tolist() == [1.0, -1.0, 0.0, 0.0, 0.0, 1.0, -1.0]
    # the threshold is relative to the layer: scaling the weights changes nothing
    assert ternary_values(w * 1000).tolist() == [1.0, -1.0, 0.0, 0.0, 0.0, 1.0, -1.0]
    # mean|w| = 4 exactly, delta = 0.7 * 4 = 2.8: the comparison is strict
    w = torch.tensor([2.8, -2.8, 10.4, 0.0], dtype=torch.float64)
    assert float(w.abs().mean()) == 4.0
    assert ternary_values(w).tolist() == [0.0, 0.0, 1.0, 0.0]
    w = torch.tensor([2.81, -2.81, 10.38, 0.0], dtype=torch.float64)
    assert ternary_values(w).tolist() == [1.0, -1.0, 1.0, 0.0]
    assert ternary_values(w).dtype == torch.float64


def test_ternary_straight_through_gradient_passes_unchanged() -> None:
    w = torch.tensor([3.0, -3.0, 1.0, -1.0, 0.0, 2.0], requires_grad=True)
    upstream = torch.tensor([0.5, -2.0, 7.0, 1.0, -1.0, 3.0])
    (ternarize(w) * upstream).sum().backward()
    assert w.grad.tolist() == upstream.tolist()


@pytest.mark.parametrize("k", [-1, 5, 1.0, True, "1", None])
def test_bad_k_is_a_one_line_error(k: object) -> None:
    with pytest.raises(QsnnError) as caught:
        Precision(k=k)  # type: ignore[arg-type]
    assert str(caught.value) == f"k must be an integer from 0 to 4, got {k!r}"
    with pytest.raises(QsnnError) as caught:
        Precision(encoding_k=7)
    assert str(caught.value) == "encoding k must be an integer from 0 to 4, got 7"
    with pytest.raises(QsnnError) as caught:
        check_level(9)
    assert str(caught.value) == "k must be an integer from 0 to 4, got 9"


@pytest.mark.parametrize("bound", [0, -2, 1.5, True, "0", "two"])
def test_bad_b_is_a_one_line_error(bound: object) -> None:
    with pytest.raises(QsnnError) as caught:
        Precision(B=bound)  # type: ignore[arg-type]
    shown = 0 if bound == "0" else bound  # (text is read first, then checked)
    assert str(caught.value) == f"B must be an integer from 1 to 64 or 'none', got {shown!r}"
    with pytest.raises(QsnnError) as caught:
        Precision(encoding_B=0)
    assert str(caught.value) == "encoding B must be an integer from 1 to 64 or 'none', got 0"


def test_precision_reads_command_line_text() -> None:
    """B and the encoding values as the options give them: integers, "none" and "same"."""
    assert Precision(B="2", encoding_k="0", encoding_B="none") == Precision(B=2, encoding_k=0, encoding_B=None)
    assert Precision(encoding_k="same", encoding_B="same").block(0) == (1, None)
    with pytest.raises(QsnnError) as caught:
        Precision(encoding_k="x")
    assert str(caught.value) == "encoding k must be an integer from 0 to 4 or 'same', got 'x'"


def test_parse_bound() -> None:
    assert parse_bound("none") is None
    assert parse_bound(" None ") is None
    assert parse_bound(None) is None
    assert parse_bound("4") == 4
    assert parse_bound(2) == 2
    assert check_bound(None) is None
    with pytest.raises(QsnnError) as caught:
        parse_bound("two")
    assert str(caught.value) == "B must be an integer from 1 to 64 or 'none', got 'two'"
    with pytest.raises(QsnnError) as caught:
        parse_bound("0")
    assert str(caught.value) == "B must be an integer from 1 to 64 or 'none', got 0"


def test_precision_blocks_and_round_trip() -> None:
    precision = Precision(k=0, B=None, ternary=True, encoding_k=0, encoding_B=4)
    assert precision.block(0) == (0, 4)
    assert precision.block(1) == (0, None)
    assert precision.block(5) == (0, None)
    assert Precision(k=2, B=1).block(0) == (2, 1)
    assert Precision.from_dict(precision.to_dict()) == precision
    assert precision.describe() == "k=0 B=none (encoding k=0 B=4) ternary"
    assert Precision(full_precision=True).describe() == "full precision"


def test_train_config_and_run_spec_are_precisions_declared_once():
    """TrainConfig and RunSpec are Precisions: their precision fields are Precision's own
    field objects (one declaration, options included), flat in config.json and run.json,
    and precision_fields copies one into another."""
    import dataclasses

    from qsnn.net.quantization import PRECISION_FIELDS, precision_fields
    from qsnn.pipeline import RunSpec
    from qsnn.train.config import TrainConfig

    declared = dataclasses.fields(Precision)
    assert tuple(f.name for f in declared) == PRECISION_FIELDS == (
        "k", "B", "ternary", "full_precision", "encoding_k", "encoding_B",
    )
    for holder in (TrainConfig, RunSpec):
        inherited = [f for f in dataclasses.fields(holder) if f.name in PRECISION_FIELDS]
        assert all(a is b for a, b in zip(inherited, declared, strict=True)), holder.__name__
    config = TrainConfig(net="500", dataset="mnist", k=2, B=4, ternary=True, encoding_k=0, encoding_B=4)
    assert list(config.to_dict())[:8] == ["net", "dataset", *PRECISION_FIELDS]
    assert type(config.precision()) is Precision
    assert Precision(**precision_fields(config)) == config.precision()
    run = RunSpec(net="500", dataset="mnist", **precision_fields(config))
    assert list(run.to_dict())[:8] == ["net", "dataset", *PRECISION_FIELDS]
    assert run.train_config(None, "cpu").precision() == config.precision()
    assert (config.label(), run.tag()) == ("k2-B4-ternary", "mnist-500-k2-B4-ternary")
    assert TrainConfig(net="500", dataset="mnist", full_precision=True).label() == "fp32"
