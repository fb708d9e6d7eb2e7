"""qsnn train --model MODULE:FACTORY: a model of one's own trained by qsnn's loop, resumed,
refused in one line where it cannot be, and converted from its checkpoint."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from qsnn import data as qdata
from qsnn.cli import main as qsnn
from qsnn.errors import QsnnError
from qsnn.snn.graph import SpikingGraph
from qsnn.train.checkpoint import load_checkpoint
from qsnn.train.config import TrainConfig
from qsnn.train.loop import evaluate, train
from qsnn.train.model import ModelSpec
from tests import own_models
from tests.helpers import one_thread  # noqa: F401  (autouse: one intra-op thread in this module)
from tests.train.test_training import (
    ROW_KEYS,
    TORCHRUN_ENV,
    assert_same_run,
    assert_same_tensors,
    checkpoint,
    stop_at,
)
from tests.train.test_training import config as notation_config

TINY = "tests.own_models:tiny"


def config(data_dir: str, **changes: Any) -> TrainConfig:
    """A tiny run of the tiny model: test_training's run (600 MNIST training images in 12
    steps of 50, 300 test images) with the model in place of the net."""
    return notation_config(data_dir, **{"net": None, "model": TINY, **changes})


def error(capsys: pytest.CaptureFixture, argv: list[str]) -> str:
    """Run `qsnn`, insist on exit status 2 and one line; return that line."""
    assert qsnn(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("qsnn: error: "), err
    return err[len("qsnn: error: "):-1]


# ----------------------------------------------------------------------------- a run


def test_a_model_of_ones_own_trains_into_the_usual_files(tmp_path: Path, data_dir: str) -> None:
    cfg = config(data_dir)
    summary = train(cfg, tmp_path, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "best.pt", "config.json", "last.pt", "metrics.csv", "metrics.json",
    ]
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["config"] == {
        "model": TINY, "dataset": "mnist", "epochs": 2, "batch_size": 50, "lr": 1e-2, "lr_decay_epoch": None,
        "seed": 0, "data_dir": data_dir, "train_limit": 600, "test_limit": 300, "device": "cpu",
        "checkpoint_interval": 300.0,
    }
    assert saved["resolved"] == {"model": TINY, "batch_size": 50, "lr_decay_epoch": 1, "params": 5878}
    assert saved["spec"] == {"model": TINY, "input_shape": [1, 28, 28], "num_classes": 10, "input_stage": "pixels"}
    assert TrainConfig.from_dict(saved["config"]) == cfg

    rows = json.loads((tmp_path / "metrics.json").read_text())
    assert [list(row) for row in rows] == [ROW_KEYS, ROW_KEYS]
    assert [(row["epoch"], row["lr"]) for row in rows] == [(1, 1e-2), (2, 1e-3)]
    assert rows[-1]["test_acc"] > 50.0  # (chance: 10%)

    last = checkpoint(tmp_path / "last.pt")
    assert (last["format"], last["version"], last["factory"]) == ("qsnn-checkpoint", 2, TINY)
    assert (last["epoch"], last["step"], last["spec"], last["config"]) == (2, 0, saved["spec"], cfg.to_dict())
    best = checkpoint(tmp_path / "best.pt")
    assert best["factory"] == TINY and best["epoch"] == summary["best_epoch"]
    assert summary["epochs"] == 2 and summary["final_test_acc"] == rows[-1]["test_acc"]

    # the weights are the model's own state dict, and give the run's test accuracy again
    model = own_models.tiny()
    model.load_state_dict(last["model"])
    test_set = qdata.load("mnist", "test", data_dir).subset(300)
    assert evaluate(model, test_set, batch_size=128) == rows[-1]["test_acc"]


def test_the_same_seed_gives_the_same_weights_and_another_seed_others(tmp_path: Path, data_dir: str) -> None:
    cfg = config(data_dir, epochs=1)
    train(cfg, tmp_path / "a", progress=False)
    train(cfg, tmp_path / "b", progress=False)
    assert_same_run(tmp_path / "a", tmp_path / "b")
    train(config(data_dir, epochs=1, seed=1), tmp_path / "c", progress=False)
    a, c = checkpoint(tmp_path / "a" / "last.pt"), checkpoint(tmp_path / "c" / "last.pt")
    assert not torch.equal(a["model"]["5.weight"], c["model"]["5.weight"])


def test_an_interrupted_run_resumes_to_exactly_the_uninterrupted_weights(tmp_path: Path, data_dir: str) -> None:
    """Mid-epoch, with dropout in the model: every tensor equal to the run never stopped."""
    train(config(data_dir), tmp_path / "whole", progress=False)
    with pytest.raises(KeyboardInterrupt):
        train(config(data_dir), tmp_path / "parts", progress=False, on_step=stop_at(1, 5))
    saved = checkpoint(tmp_path / "parts" / "last.pt")
    assert (saved["epoch"], saved["step"], saved["factory"]) == (1, 5, TINY)
    summary = train(config(data_dir), tmp_path / "parts", resume=True, progress=False)
    assert summary["epochs"] == 2 and not summary["already_done"]
    assert_same_run(tmp_path / "whole", tmp_path / "parts")
    whole, parts = checkpoint(tmp_path / "whole" / "last.pt"), checkpoint(tmp_path / "parts" / "last.pt")
    assert_same_tensors(whole["model"], parts["model"])  # (every parameter and batch-norm buffer)


# ----------------------------------------------------------------------------- one-line errors


MNIST = ["--dataset", "mnist", "--epochs", "1", "--quiet"]


@pytest.mark.parametrize(("given", "message"), [
    (["--net", "64-32", "--model", TINY],
     "--net and --model are exclusive: give --net for a net in the papers' notation or --model for a model of your own"),
    ([], "give --net (a net in the papers' notation, or a preset) or --model MODULE:FACTORY (a model of your own)"),
    *[([*option, "--model", TINY],
       f"{option[0]}{' paper' if option[0] == '--recipe' else ''} does not apply with --model: the model's own "
       "QuantAct(k, B) set its precision (and --epochs, --lr and --batch-size its schedule); drop it")
      for option in (["--k", "2"], ["--B", "none"], ["--ternary"], ["--fp32"], ["--encoding-k", "0"],
                     ["--encoding-B", "4"], ["--recipe", "paper"])],
    (["--model", TINY, "--k", "1", "--ternary"],
     "--k, --ternary do not apply with --model: the model's own QuantAct(k, B) set its precision (and --epochs, "
     "--lr and --batch-size its schedule); drop them"),
    (["--model", "tests.own_models"], "--model takes MODULE:FACTORY (e.g. mynets:resnet), got 'tests.own_models'"),
    (["--model", "tests.no_such_file:tiny"],
     "cannot make the model tests.no_such_file:tiny: No module named 'tests.no_such_file'; check the module path "
     "and the function name"),
    (["--model", "tests.own_models:missing"],
     "cannot make the model tests.own_models:missing: module 'tests.own_models' has no attribute 'missing'; "
     "check the module path and the function name"),
    (["--model", "tests.own_models:broken"],
     "tests.own_models:broken() raised RuntimeError: no weights file here; fix the factory (it is called with no "
     "arguments, so give every parameter a default)"),
    (["--model", "tests.own_models:needs_arguments"],
     "tests.own_models:needs_arguments() raised TypeError: needs_arguments() missing 1 required positional "
     "argument: 'k'; fix the factory (it is called with no arguments, so give every parameter a default)"),
    (["--model", "tests.own_models:not_a_module"],
     "tests.own_models:not_a_module() returned a str, not a torch.nn.Module; return the model"),
    (["--model", "tests.own_models:colour"],
     "the model tests.own_models:colour fails on mnist's images (1x28x28): RuntimeError: Given groups=1, weight of "
     "size [4, 3, 5, 5], expected input[2, 1, 28, 28] to have 3 channels, but got 1 channels instead; make it take "
     "a batch of 1x28x28 images, x = pixels / 255"),
    (["--model", "tests.own_models:five_classes"],
     "the model tests.own_models:five_classes gives (2, 5) for a batch of 2 mnist images, not (2, 10); make it "
     "output (batch, 10): one logit per class of mnist"),
])
def test_what_cannot_be_trained_is_one_line_and_writes_nothing(
    capsys: pytest.CaptureFixture, tmp_path: Path, given: list[str], message: str,
) -> None:
    out = tmp_path / "run"
    assert error(capsys, ["train", *given, *MNIST, "--out", str(out)]) == message
    assert not out.exists()


def test_the_config_refuses_what_does_not_apply_to_a_model() -> None:
    for values, message in [
        ({"model": TINY, "k": 2}, f"k does not apply to a model of your own ({TINY}): its QuantAct(k, B) set its "
                                  "precision, and the papers' recipe is for their nets; drop it"),
        ({"model": TINY, "ternary": True, "recipe": "paper"},
         f"ternary, recipe do not apply to a model of your own ({TINY}): its QuantAct(k, B) set its precision, and "
         "the papers' recipe is for their nets; drop them"),
        ({"model": TINY, "net": "64-32"}, "net and model are exclusive: give one of them"),
        ({}, "give a net (notation or a preset) or a model of your own (model, MODULE:FACTORY)"),
        ({"model": "tiny"}, "--model takes MODULE:FACTORY (e.g. mynets:resnet), got 'tiny'"),
        ({"model": ".own_models:tiny"}, "--model takes MODULE:FACTORY (e.g. mynets:resnet), got '.own_models:tiny'"),
    ]:
        with pytest.raises(QsnnError) as refused:
            TrainConfig.from_values({"dataset": "mnist", **values})
        assert str(refused.value) == message


def test_resume_refuses_another_factory_or_a_net_in_notation(tmp_path: Path, data_dir: str) -> None:
    train(config(data_dir, epochs=1, train_limit=100), tmp_path / "own", progress=False)
    other = "tests.own_models:wider"
    with pytest.raises(QsnnError) as refused:
        train(config(data_dir, model=other, epochs=2, train_limit=100), tmp_path / "own", resume=True, progress=False)
    assert str(refused.value) == (
        f"cannot resume {tmp_path / 'own'}: it holds a run of the model {TINY}, not the model {other}; resume it with "
        f"--model {TINY} or give another output directory"
    )
    with pytest.raises(QsnnError) as refused:
        train(config(data_dir, model=None, net="64-32", epochs=2, train_limit=100), tmp_path / "own", resume=True,
              progress=False)
    assert str(refused.value) == (
        f"cannot resume {tmp_path / 'own'}: it holds a run of the model {TINY}, not the net 64-32; resume it with "
        f"--model {TINY} or give another output directory"
    )
    train(config(data_dir, model=None, net="64-32", epochs=1, train_limit=100), tmp_path / "net", progress=False)
    with pytest.raises(QsnnError) as refused:
        train(config(data_dir, epochs=2, train_limit=100), tmp_path / "net", resume=True, progress=False)
    assert str(refused.value) == (
        f"cannot resume {tmp_path / 'net'}: it holds a run of the net 64-32, not the model {TINY}; resume it with "
        "--net 64-32 or give another output directory"
    )
    with pytest.raises(QsnnError) as refused:  # (qsnn eval, qsnn run --checkpoint: nets in notation only)
        load_checkpoint(tmp_path / "own" / "best.pt")
    assert str(refused.value) == (
        f"checkpoint {tmp_path / 'own' / 'best.pt'} holds a model of your own ({TINY}), not a net in the papers' "
        f"notation; convert it with qsnn convert {tmp_path / 'own' / 'best.pt'} --model {TINY} --dataset mnist "
        "--scheme SCHEME"
    )


# ----------------------------------------------------------------------------- convert


def test_convert_takes_a_training_checkpoint_or_a_state_dict_of_the_same_factory(
    capsys: pytest.CaptureFixture, tmp_path: Path, data_dir: str,
) -> None:
    train(config(data_dir, epochs=1), tmp_path / "own", progress=False)
    best = tmp_path / "own" / "best.pt"
    assert qsnn(["convert", str(best), "--model", TINY, "--scheme", "nsd", "-o", str(tmp_path / "a.npz")]) == 0
    assert capsys.readouterr().out.startswith("NSD spiking graph: 1 populations")
    graph = SpikingGraph.load(tmp_path / "a.npz")
    assert (graph.source["dataset"], graph.source["model"]) == ("mnist", TINY)  # (the dataset from the checkpoint)
    torch.save(checkpoint(best)["model"], tmp_path / "state.pt")  # torch.save(model.state_dict(), path)
    assert qsnn(["convert", str(tmp_path / "state.pt"), "--model", TINY, "--dataset", "mnist", "--scheme", "nsd",
                 "-o", str(tmp_path / "b.npz")]) == 0
    capsys.readouterr()
    again = SpikingGraph.load(tmp_path / "b.npz")
    assert all(torch.equal(torch.as_tensor(x.weight), torch.as_tensor(y.weight))
               for x, y in zip(graph.nodes, again.nodes, strict=True) if x.weight is not None)

    other = "tests.own_models:wider"
    assert error(capsys, ["convert", str(best), "--model", other, "--scheme", "nsd"]) == (
        f"{best} was trained from the model {TINY}, not {other}; give --model {TINY}"
    )
    assert error(capsys, ["convert", str(best), "--model", TINY, "--dataset", "fashion-mnist", "--scheme", "nsd"]) == (
        f"{best} was trained on mnist, not fashion-mnist; drop --dataset (or give --dataset mnist)"
    )
    train(config(data_dir, model=None, net="64-32", epochs=1, train_limit=100), tmp_path / "net", progress=False)
    notation = tmp_path / "net" / "best.pt"
    assert error(capsys, ["convert", str(notation), "--model", TINY, "--scheme", "nsd"]) == (
        f"{notation} is a qsnn checkpoint of the net 64-32, not of a model of your own; convert it without --model: "
        f"qsnn convert {notation} --scheme SCHEME"
    )


def _trained_on_cifar(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, model: str, seed: int) -> Path:
    """``model`` trained one epoch by qsnn train --model on 32 CIFAR-10-format images
    written to tmp_path/data (accepted in-process); returns the run folder."""
    from tests.data.test_data import accept_files, write_cifar

    folder = tmp_path / "data" / "cifar-10-batches-py"
    write_cifar(folder, "cifar10", count=32, seed=seed)
    accept_files(monkeypatch, "cifar10", folder)
    out = tmp_path / "run"
    assert qsnn(["train", "--model", model, "--dataset", "cifar10", "--epochs", "1", "--batch-size", "16",
                 "--data-dir", str(tmp_path / "data"), "--out", str(out), "--quiet"]) == 0
    return out


def test_a_cifar_model_reads_whole_images_from_training_to_simulation(
    capsys: pytest.CaptureFixture, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A model of one's own on CIFAR trains on the whole 3x32x32 images (not the notation
    nets' 24x24 crops), converts from its checkpoint at that size, and simulates losslessly."""
    model = "tests.own_models:colour"
    out = _trained_on_cifar(tmp_path, monkeypatch, model, seed=3)
    assert json.loads((out / "config.json").read_text())["spec"]["input_shape"] == [3, 32, 32]
    assert qsnn(["convert", str(out / "last.pt"), "--model", model, "--scheme", "nsd", "-o", str(tmp_path / "g.npz")]) == 0
    assert SpikingGraph.load(tmp_path / "g.npz").nodes[0].shape == (3, 32, 32)
    capsys.readouterr()
    assert qsnn(["simulate", str(tmp_path / "g.npz"), "--data-dir", str(tmp_path / "data"), "--out",
                 str(tmp_path / "sim"), "--quiet"]) == 0
    assert capsys.readouterr().out.startswith(
        "LOSSLESS: the spiking graph agrees with the converted model's exact evaluation on 32 of 32 images, "
        "0 neuron counts differ;"
    )


def test_resnet20_trained_by_qsnn_on_cifar_format_data_converts_and_simulates_losslessly(
    capsys: pytest.CaptureFixture, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The conversion papers' ResNet-20 preset (19 populations, 9 residual additions),
    trained one epoch by qsnn train --model on 32 CIFAR-10-format images, converts under
    NSD and SG and simulates losslessly on 8 of them."""
    model = "qsnn.nn:resnet20"
    out = _trained_on_cifar(tmp_path, monkeypatch, model, seed=4)
    for scheme in ("nsd", "sg"):
        graph = tmp_path / f"{scheme}.npz"
        assert qsnn(["convert", str(out / "last.pt"), "--model", model, "--scheme", scheme, "-o", str(graph)]) == 0
        converted = SpikingGraph.load(graph)
        assert len(converted.populations) == 19 and [n.kind for n in converted.nodes].count("add") == 9
        capsys.readouterr()
        assert qsnn(["simulate", str(graph), "--data-dir", str(tmp_path / "data"), "--limit", "8", "--out",
                     str(tmp_path / f"sim-{scheme}"), "--quiet"]) == 0
        assert capsys.readouterr().out.startswith(
            "LOSSLESS: the spiking graph agrees with the converted model's exact evaluation on 8 of 8 images, "
            "0 neuron counts differ;"
        ), scheme


def test_the_small_resnet_trained_by_qsnn_converts_and_simulates_losslessly(
    capsys: pytest.CaptureFixture, tmp_path: Path, data_dir: str,
) -> None:
    """The README's commands: qsnn train --model qsnn.nn:small_resnet (600 Fashion-MNIST
    images, one epoch), qsnn convert of its best.pt under NSD, qsnn simulate on 50 test images."""
    out = tmp_path / "resnet"
    assert qsnn(["train", "--model", "qsnn.nn:small_resnet", "--dataset", "fashion-mnist", "--epochs", "1",
                 "--train-limit", "600", "--test-limit", "200", "--data-dir", data_dir, "--out", str(out),
                 "--quiet"]) == 0
    line = capsys.readouterr().out
    assert line.startswith("done: 1 epochs in ") and line.endswith(f"checkpoints in {out}\n")
    assert ModelSpec.of("qsnn.nn:small_resnet", "fashion-mnist").describe() == "qsnn.nn:small_resnet (12,802 parameters)"
    graph = tmp_path / "resnet.npz"
    assert qsnn(["convert", str(out / "best.pt"), "--model", "qsnn.nn:small_resnet", "--scheme", "nsd",
                 "-o", str(graph)]) == 0
    assert capsys.readouterr().out.startswith("NSD spiking graph: 5 populations, 2 additions")
    assert qsnn(["simulate", str(graph), "--data-dir", data_dir, "--limit", "50", "--out", str(tmp_path / "sim"),
                 "--quiet"]) == 0
    assert capsys.readouterr().out.startswith(
        "LOSSLESS: the spiking graph agrees with the converted model's exact evaluation on 50 of 50 images, "
        "0 neuron counts differ;"
    )


@pytest.mark.slow
def test_torchrun_trains_a_model_of_ones_own_on_two_processes(tmp_path: Path, data_dir: str) -> None:
    out = tmp_path / "ddp"
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "qsnn.train",
        "--model", TINY, "--dataset", "mnist", "--data-dir", data_dir, "--epochs", "1", "--batch-size", "100",
        "--train-limit", "400", "--test-limit", "200", "--out", str(out), "--quiet", "--save-rank-weights",
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, env=TORCHRUN_ENV)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    rank0 = torch.load(out / "rank0_weights.pt", weights_only=True)
    assert_same_tensors(rank0, torch.load(out / "rank1_weights.pt", weights_only=True))
    last = checkpoint(out / "last.pt")
    assert_same_tensors(last["model"], rank0)
    assert (last["epoch"], last["world_size"], last["factory"]) == (1, 2, TINY)
