"""Training: files written, determinism, exact resume, checkpoint errors, torchrun (DDP)."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from qsnn import data as qdata
from qsnn.errors import QsnnError
from qsnn.io import folder_lock
from qsnn.net.models import NetSpec, QuantizedNet
from qsnn.net.quantization import Precision
from qsnn.train.checkpoint import load_checkpoint, save_checkpoint
from qsnn.train.config import TrainConfig
from qsnn.train.loop import TrainingInterrupted, evaluate, train
from qsnn.train.options import main
from tests.helpers import one_thread  # noqa: F401  (autouse: one intra-op thread in this module)
from tests.test_io import dot_files, fail_writes, in_use

NET = "8C5-P2-16C5-P2-32"
ROW_KEYS = ["epoch", "lr", "train_loss", "train_acc", "test_acc", "seconds"]


def config(data_dir: str, **changes: Any) -> TrainConfig:
    """A tiny run: 600 training images in 12 steps of 50, 300 test images."""
    settings: dict[str, Any] = dict(
        net=NET, dataset="mnist", data_dir=data_dir, epochs=2, batch_size=50, lr=1e-2,
        train_limit=600, test_limit=300,
    )
    settings.update(changes)
    return TrainConfig(**settings)


def checkpoint(path: Path) -> dict[str, Any]:
    return torch.load(path, map_location="cpu", weights_only=True)


def assert_same_tensors(a: Any, b: Any) -> None:
    """Equal nested dicts/lists with bit-identical tensors."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys()
        for key in a:
            assert_same_tensors(a[key], b[key])
    elif isinstance(a, list | tuple):
        assert len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            assert_same_tensors(x, y)
    else:
        assert a == b


def without_seconds(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{key: value for key, value in row.items() if key != "seconds"} for row in rows]


def assert_same_run(a: Path, b: Path) -> None:
    """Two finished runs hold bit-identical weights, optimizer states and metrics."""
    first, second = checkpoint(a / "last.pt"), checkpoint(b / "last.pt")
    assert_same_tensors(first["model"], second["model"])
    assert_same_tensors(first["optimizer"], second["optimizer"])
    assert without_seconds(first["metrics"]) == without_seconds(second["metrics"])
    assert (first["epoch"], first["step"], first["best_acc"]) == (
        second["epoch"], second["step"], second["best_acc"],
    )
    assert_same_tensors(checkpoint(a / "best.pt")["model"], checkpoint(b / "best.pt")["model"])


def stop_at(epoch: int, step: int):
    """An on_step hook that interrupts the run after ``step`` steps of ``epoch``."""

    def hook(e: int, s: int) -> None:
        if (e, s) == (epoch, step):
            raise KeyboardInterrupt

    return hook


# ----------------------------------------------------------------------------- a run


def test_short_run_writes_config_metrics_and_checkpoints(tmp_path: Path, data_dir: str) -> None:
    cfg = config(data_dir, train_limit=1000)
    summary = train(cfg, tmp_path, progress=False)

    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "best.pt", "config.json", "last.pt", "metrics.csv", "metrics.json",
    ]
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["config"] == cfg.to_dict()
    assert saved["spec"] == cfg.spec().to_dict()
    assert saved["resolved"] == {
        "notation": NET, "batch_size": 50, "lr_decay_epoch": 1, "params": 13352,
    }
    assert saved["provenance"]["seed"] == 0
    assert set(saved["provenance"]) >= {"command", "qsnn", "python", "torch", "numpy"}

    rows = json.loads((tmp_path / "metrics.json").read_text())
    assert [list(row) for row in rows] == [ROW_KEYS, ROW_KEYS]
    assert [row["epoch"] for row in rows] == [1, 2]
    assert [row["lr"] for row in rows] == [1e-2, 1e-3]  # divided by 10 after half the epochs
    with open(tmp_path / "metrics.csv", newline="") as handle:
        table = list(csv.DictReader(handle))
    assert [{key: float(value) for key, value in row.items()} for row in table] == rows

    # clearly better than chance (10%) after 40 steps on 1000 images
    assert rows[-1]["test_acc"] > 60.0
    assert rows[-1]["train_acc"] > rows[0]["train_acc"]
    assert rows[-1]["train_loss"] < rows[0]["train_loss"]

    last = checkpoint(tmp_path / "last.pt")
    assert last["format"] == "qsnn-checkpoint" and last["version"] == 1
    assert (last["epoch"], last["step"], last["world_size"]) == (2, 0, 1)
    assert last["spec"] == cfg.spec().to_dict()
    assert last["config"] == cfg.to_dict()
    assert last["metrics"] == rows
    assert last["provenance"]["seed"] == 0
    assert set(last["optimizer"]) == {"state", "param_groups"}
    best_epoch = max(rows, key=lambda row: row["test_acc"])["epoch"]
    assert last["best_acc"] == max(row["test_acc"] for row in rows)
    assert last["best_epoch"] == best_epoch

    best = checkpoint(tmp_path / "best.pt")
    assert best["epoch"] == best_epoch
    assert best["test_acc"] == last["best_acc"]
    assert "optimizer" not in best

    assert summary == {
        "out_dir": str(tmp_path),
        "epochs": 2,
        "already_done": False,
        "final_test_acc": rows[-1]["test_acc"],
        "final_train_acc": rows[-1]["train_acc"],
        "final_train_loss": rows[-1]["train_loss"],
        "best_test_acc": last["best_acc"],
        "best_epoch": best_epoch,
        "seconds": rows[0]["seconds"] + rows[1]["seconds"],
    }

    # the checkpoint rebuilds the network and reproduces its test accuracy
    model, payload = load_checkpoint(tmp_path / "last.pt", spec_check=cfg.spec())
    assert not model.training
    assert payload["epoch"] == 2
    test_set = qdata.load("mnist", "test", data_dir).subset(300)
    assert evaluate(model, test_set, batch_size=128) == rows[-1]["test_acc"]


def test_evaluate_is_batched_eval_mode_and_restores_the_mode(data_dir: str) -> None:
    torch.manual_seed(0)
    model = QuantizedNet(config(data_dir).spec())
    test_set = qdata.load("mnist", "test", data_dir).subset(250)
    model.train()
    accuracy = evaluate(model, test_set, batch_size=100)
    assert model.training
    model.eval()
    with torch.no_grad():
        predictions = model(qdata.to_float(test_set.images)).argmax(1)
    assert accuracy == 100.0 * int((predictions == test_set.labels).sum()) / 250
    assert evaluate(model, test_set, batch_size=7) == accuracy


# ----------------------------------------------------------------------------- reproducibility


def test_same_seed_gives_bit_identical_weights(tmp_path: Path, data_dir: str) -> None:
    cfg = config(data_dir, epochs=1, train_limit=400)
    train(cfg, tmp_path / "a", progress=False)
    train(cfg, tmp_path / "b", progress=False)
    assert_same_run(tmp_path / "a", tmp_path / "b")

    train(config(data_dir, epochs=1, train_limit=400, seed=1), tmp_path / "c", progress=False)
    a, c = checkpoint(tmp_path / "a" / "last.pt"), checkpoint(tmp_path / "c" / "last.pt")
    assert not torch.equal(a["model"]["classifier"], c["model"]["classifier"])


def test_one_epoch_then_resume_equals_two_epochs(tmp_path: Path, data_dir: str) -> None:
    train(config(data_dir), tmp_path / "whole", progress=False)
    train(config(data_dir, epochs=1), tmp_path / "parts", progress=False)
    assert checkpoint(tmp_path / "parts" / "last.pt")["epoch"] == 1
    summary = train(config(data_dir), tmp_path / "parts", resume=True, progress=False)
    assert summary["epochs"] == 2 and not summary["already_done"]
    assert_same_run(tmp_path / "whole", tmp_path / "parts")


def test_interrupt_mid_epoch_then_resume_equals_uninterrupted(
    tmp_path: Path, data_dir: str
) -> None:
    train(config(data_dir), tmp_path / "whole", progress=False)
    with pytest.raises(KeyboardInterrupt):
        train(config(data_dir), tmp_path / "parts", progress=False, on_step=stop_at(1, 5))
    saved = checkpoint(tmp_path / "parts" / "last.pt")
    assert (saved["epoch"], saved["step"]) == (1, 5)
    assert saved["running"]["seen"] == 5 * 50
    assert len(saved["metrics"]) == 1
    train(config(data_dir), tmp_path / "parts", resume=True, progress=False)
    assert_same_run(tmp_path / "whole", tmp_path / "parts")
    metrics = json.loads((tmp_path / "parts" / "metrics.json").read_text())
    assert [row["epoch"] for row in metrics] == [1, 2]


def test_sigterm_saves_at_the_next_step_and_resumes_exactly(
    tmp_path: Path, data_dir: str
) -> None:
    train(config(data_dir), tmp_path / "whole", progress=False)
    handler = signal.getsignal(signal.SIGTERM)

    def terminate(epoch: int, step: int) -> None:
        if (epoch, step) == (0, 2):
            os.kill(os.getpid(), signal.SIGTERM)

    with pytest.raises(TrainingInterrupted) as caught:
        train(config(data_dir), tmp_path / "parts", progress=False, on_step=terminate)
    assert caught.value.signum == signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) is handler  # restored
    saved = checkpoint(tmp_path / "parts" / "last.pt")
    assert (saved["epoch"], saved["step"]) == (0, 3)  # the step under way was finished
    train(config(data_dir), tmp_path / "parts", resume=True, progress=False)
    assert_same_run(tmp_path / "whole", tmp_path / "parts")


def test_periodic_checkpoints_mid_epoch(tmp_path: Path, data_dir: str) -> None:
    seen: list[tuple[int, int]] = []

    def look(epoch: int, step: int) -> None:
        if step > 1:  # the checkpoint after the previous step is there already
            saved = checkpoint(tmp_path / "last.pt")
            seen.append((saved["epoch"], saved["step"]))

    train(config(data_dir, epochs=1, checkpoint_interval=0), tmp_path, progress=False, on_step=look)
    assert seen == [(0, step) for step in range(1, 12)]
    assert checkpoint(tmp_path / "last.pt")["step"] == 0


def test_resuming_a_finished_run_reports_it_is_done(tmp_path: Path, data_dir: str) -> None:
    cfg = config(data_dir, epochs=1, train_limit=200)
    first = train(cfg, tmp_path, progress=False)
    before = (tmp_path / "last.pt").read_bytes()
    again = train(cfg, tmp_path, resume=True, progress=False)
    assert again == {**first, "already_done": True}
    assert (tmp_path / "last.pt").read_bytes() == before


# ----------------------------------------------------------------------------- errors


def test_resume_with_other_options_is_refused(tmp_path: Path, data_dir: str) -> None:
    train(config(data_dir, epochs=1, train_limit=200), tmp_path, progress=False)
    with pytest.raises(QsnnError) as caught:
        train(config(data_dir, epochs=1, train_limit=200, k=2, net="64-32"), tmp_path,
              resume=True, progress=False)
    assert str(caught.value) == (
        f"cannot resume {tmp_path}: it was trained with net='{NET}', k=1 but "
        "net='64-32', k=2 was asked; resume with the same options (only epochs, device, "
        "data_dir and the checkpoint interval may change) or give another output directory"
    )


def test_resume_needs_a_run_and_a_new_run_needs_an_empty_place(
    tmp_path: Path, data_dir: str
) -> None:
    cfg = config(data_dir, epochs=1, train_limit=200)
    with pytest.raises(QsnnError) as caught:
        train(cfg, tmp_path, resume=True, progress=False)
    assert str(caught.value) == (
        f"nothing to resume: {tmp_path / 'last.pt'} does not exist; run without resume to start"
    )
    train(cfg, tmp_path, progress=False)
    with pytest.raises(QsnnError) as caught:
        train(cfg, tmp_path, progress=False)
    assert str(caught.value) == (
        f"{tmp_path} already holds a run (last.pt); resume it or give another output directory"
    )


def test_load_checkpoint_errors_are_one_clear_line(tmp_path: Path) -> None:
    spec = NetSpec("64-32", (1, 28, 28), 10, "valid", Precision(k=1))
    model = QuantizedNet(spec)
    save_checkpoint(tmp_path / "net.pt", model, None, epoch=3)

    loaded, payload = load_checkpoint(tmp_path / "net.pt", spec_check=spec)
    assert_same_tensors(loaded.state_dict(), model.state_dict())
    assert payload["epoch"] == 3 and payload["config"] is None
    # "same" encoding values equal the explicit ones: the same network
    same = NetSpec("64-32", (1, 28, 28), 10, "valid", Precision(k=1, encoding_k=1))
    load_checkpoint(tmp_path / "net.pt", spec_check=same)

    def error(path: Path, spec_check: NetSpec | None = None) -> str:
        with pytest.raises(QsnnError) as caught:
            load_checkpoint(path, spec_check=spec_check)
        message = str(caught.value)
        assert "\n" not in message
        return message

    other = NetSpec("8C5-P2-32", (1, 28, 28), 10, "valid", Precision(k=2, B=4))
    assert error(tmp_path / "net.pt", other) == (
        f"checkpoint {tmp_path / 'net.pt'} holds a net with net=64-32, k=1, B=none, "
        "encoding_k=1, encoding_B=none but net=8C5-P2-32, k=2, B=4, encoding_k=2, "
        "encoding_B=4 was asked; give the options it was trained with (see its config.json) "
        "or another checkpoint"
    )
    full = NetSpec("64-32", (1, 28, 28), 10, "valid", Precision(full_precision=True))
    assert error(tmp_path / "net.pt", full).startswith(
        f"checkpoint {tmp_path / 'net.pt'} holds a net with full_precision=False, k=1, B=none,"
    )

    assert error(tmp_path / "missing.pt") == (
        f"checkpoint {tmp_path / 'missing.pt'} does not exist; check the path or train a net first"
    )
    assert error(tmp_path) == (
        f"checkpoint {tmp_path} is not a file; give the path of a .pt file"
    )
    broken = QuantizedNet(spec)
    with torch.no_grad():
        broken.blocks[0].norm.running_var[3] = -1.0
    save_checkpoint(tmp_path / "negative.pt", broken, None, epoch=1)
    assert error(tmp_path / "negative.pt") == (
        f"checkpoint {tmp_path / 'negative.pt'} has a negative batch-norm variance in block 1 (a damaged file); "
        "re-create it with qsnn train"
    )
    payload = torch.load(tmp_path / "net.pt", weights_only=False)
    payload["spec"]["precision"] = "garbage"
    torch.save(payload, tmp_path / "garbage.pt")
    assert "has a damaged network description" in error(tmp_path / "garbage.pt")  # (not read as k=1)
    (tmp_path / "text.pt").write_text("not a checkpoint\n")
    assert error(tmp_path / "text.pt") == (
        f"{tmp_path / 'text.pt'} is not a qsnn checkpoint (not a PyTorch archive); "
        "give a last.pt or best.pt written by qsnn's training"
    )
    torch.save({"state_dict": model.state_dict()}, tmp_path / "plain.pt")
    assert error(tmp_path / "plain.pt") == (
        f"{tmp_path / 'plain.pt'} is not a qsnn checkpoint (it holds a dict with keys "
        "['state_dict']); give a last.pt or best.pt written by qsnn's training"
    )
    torch.save(model, tmp_path / "module.pt")
    assert error(tmp_path / "module.pt") == (
        f"{tmp_path / 'module.pt'} is not a qsnn checkpoint (it holds Python objects that "
        "qsnn checkpoints never contain, so it is not loaded); give a last.pt or best.pt "
        "written by qsnn's training"
    )
    data = (tmp_path / "net.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2] + data[-200:])
    assert error(tmp_path / "cut.pt").startswith(f"cannot read checkpoint {tmp_path / 'cut.pt'}")
    payload = checkpoint(tmp_path / "net.pt")
    payload["version"] = 99
    torch.save(payload, tmp_path / "future.pt")
    assert error(tmp_path / "future.pt") == (
        f"checkpoint {tmp_path / 'future.pt'} has format version 99, newer than this qsnn "
        "reads (2); upgrade qsnn"
    )
    payload["version"] = 1
    payload["spec"]["notation"] = "64-"
    torch.save(payload, tmp_path / "notation.pt")
    assert error(tmp_path / "notation.pt").startswith(
        f"checkpoint {tmp_path / 'notation.pt'} has a damaged network description (bad network notation '64-': "
    )
    with torch.no_grad():
        model.blocks[0].norm.running_var[0] = float("inf")
    save_checkpoint(tmp_path / "diverged.pt", model, None, epoch=3)
    assert error(tmp_path / "diverged.pt") == (
        f"checkpoint {tmp_path / 'diverged.pt'} holds non-finite values in blocks.0.norm.running_var "
        "(a diverged training); retrain it with a lower --lr"
    )


def test_a_diverging_training_stops_before_writing_a_checkpoint(tmp_path: Path, shared_datasets, monkeypatch) -> None:
    from qsnn.train import loop as training

    train(config(str(shared_datasets), epochs=1), tmp_path, progress=False)
    before = (tmp_path / "last.pt").read_bytes()
    real_step = training.train_step

    def diverging(model, optimizer, x, labels):
        loss, correct = real_step(model, optimizer, x, labels)
        return loss * float("nan"), correct

    monkeypatch.setattr(training, "train_step", diverging)
    with pytest.raises(QsnnError) as refused:
        train(config(str(shared_datasets), epochs=2), tmp_path, resume=True, progress=False)
    assert str(refused.value) == (
        "training diverged in epoch 2 (the loss or the weights are no longer finite at lr 0.01); "
        f"train again with a lower --lr (the checkpoints in {tmp_path} are from before)"
    )
    assert (tmp_path / "last.pt").read_bytes() == before
    assert len(json.loads((tmp_path / "metrics.json").read_text())) == 1


def metric_epochs(out: Path) -> tuple[list[int], list[int]]:
    """The epochs metrics.json and metrics.csv record."""
    with open(out / "metrics.csv", newline="") as handle:
        table = [int(row["epoch"]) for row in csv.DictReader(handle)]
    return [row["epoch"] for row in json.loads((out / "metrics.json").read_text())], table


def test_a_full_disk_at_a_checkpoint_is_one_line_and_resume_continues(
    tmp_path: Path, data_dir: str, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    from qsnn.cli import main as qsnn

    train(config(data_dir), tmp_path / "whole", progress=False)
    out = tmp_path / "full"
    argv = [
        "train", "--net", NET, "--dataset", "mnist", "--data-dir", data_dir, "--epochs", "2",
        "--batch-size", "50", "--lr", "0.01", "--train-limit", "600", "--test-limit", "300",
        "--out", str(out), "--quiet",
    ]
    opened = fail_writes(monkeypatch, name="last.pt", nth=2)  # the disk is full at epoch 2's checkpoint
    assert qsnn(argv) == 2
    assert capsys.readouterr().err == (
        f"qsnn: error: cannot write {out / 'last.pt'}: No space left on device; "
        "free some space and resume with --resume\n"
    )
    assert len(opened) == 2
    assert checkpoint(out / "last.pt")["epoch"] == 1
    assert metric_epochs(out) == ([1], [1])  # no epoch without its checkpoint
    assert dot_files(out) == []  # no temporary file, no lock left behind

    assert qsnn([*argv, "--resume"]) == 0
    assert metric_epochs(out) == ([1, 2], [1, 2])
    assert_same_run(tmp_path / "whole", out)


def test_metrics_that_could_not_be_written_catch_up_on_resume(
    tmp_path: Path, data_dir: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = config(data_dir, epochs=1, train_limit=200)
    fail_writes(monkeypatch, name="metrics.csv")  # after last.pt and metrics.json
    with pytest.raises(QsnnError) as caught:
        train(cfg, tmp_path, progress=False)
    assert str(caught.value) == (
        f"cannot write {tmp_path / 'metrics.csv'}: No space left on device; free some space and resume with --resume"
    )
    assert checkpoint(tmp_path / "last.pt")["epoch"] == 1 and not (tmp_path / "metrics.csv").exists()
    assert train(cfg, tmp_path, resume=True, progress=False)["already_done"]
    assert metric_epochs(tmp_path) == ([1], [1])
    assert dot_files(tmp_path) == []


def test_a_folder_another_run_holds_is_refused(tmp_path: Path, data_dir: str) -> None:
    cfg = config(data_dir, epochs=1, train_limit=200)
    with folder_lock(tmp_path):
        with pytest.raises(QsnnError) as refused:
            train(cfg, tmp_path, progress=False)
        assert str(refused.value) == in_use(tmp_path, os.getpid())
        with pytest.raises(QsnnError) as refused:
            train(cfg, tmp_path, resume=True, progress=False)
        assert str(refused.value) == in_use(tmp_path, os.getpid())
        assert sorted(p.name for p in tmp_path.iterdir()) == [".qsnn.lock"]  # nothing written

    def second_writer(epoch: int, step: int) -> None:
        if step == 1:  # while the run works, the folder is its own
            with pytest.raises(QsnnError, match="is in use by another qsnn process"), folder_lock(tmp_path):
                pass

    train(cfg, tmp_path, progress=False, on_step=second_writer)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "best.pt", "config.json", "last.pt", "metrics.csv", "metrics.json",
    ]


# ----------------------------------------------------------------------------- config and CLI


def test_config_defaults_and_schedule() -> None:
    cfg = TrainConfig(net="nsd-lenet", dataset="mnist", epochs=150)
    assert cfg.resolved_batch_size() == 200
    assert TrainConfig(net="sg-vgg", dataset="cifar10").resolved_batch_size() == 128
    assert cfg.resolved_lr_decay_epoch() == 75
    assert [cfg.lr_at(e) for e in (0, 74, 75, 149)] == [1e-3, 1e-3, 1e-4, 1e-4]
    assert TrainConfig(net="500", dataset="mnist", epochs=1).resolved_lr_decay_epoch() == 1
    spec = cfg.spec()
    assert (spec.notation, spec.input_shape, spec.num_classes, spec.padding) == (
        "20C5-P2-50C5-P2-500", (1, 28, 28), 10, "valid",
    )
    cifar = TrainConfig(net="sg-vgg", dataset="cifar100", k=1, B="2", encoding_B="none").spec()
    assert (cifar.input_shape, cifar.num_classes, cifar.padding) == ((3, 24, 24), 100, "same")
    assert cifar.precision == Precision(k=1, B=2, encoding_B=None)
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"k": 7}, "k must be an integer from 0 to 4, got 7"),
        ({"B": "x"}, "B must be an integer from 1 to 64 or 'none', got 'x'"),
        ({"epochs": 0}, "epochs must be an integer >= 1, got 0"),
        ({"batch_size": -5}, "batch_size must be an integer >= 1, got -5"),
        ({"lr": 0.0}, "lr must be a number above 0 and at most 10 (the papers: 1e-3), got 0.0"),
        ({"lr": float("inf")}, "lr must be a number above 0 and at most 10 (the papers: 1e-3), got inf"),
        ({"B": 65}, "B must be an integer from 1 to 64 or 'none', got 65"),
        ({"batch_size": 70000}, "batch_size must be at most 65,536, got 70,000"),
        ({"encoding_k": "one"}, "encoding k must be an integer from 0 to 4 or 'same', got 'one'"),
    ],
)
def test_bad_config_values(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(QsnnError) as caught:
        TrainConfig(net="500", dataset="mnist", **changes)
    assert str(caught.value) == message


def test_bad_net_for_the_data_is_refused(tmp_path: Path) -> None:
    with pytest.raises(QsnnError, match="needs at least a 5x5 input"):
        train(TrainConfig(net="8C5-8C5-8C5-8C5-8C5-8C5-8C5", dataset="mnist"), tmp_path)
    assert not tmp_path.joinpath("config.json").exists()


def test_too_few_images_for_a_batch_and_a_missing_gpu(tmp_path: Path, data_dir: str) -> None:
    with pytest.raises(QsnnError) as caught:
        train(config(data_dir, train_limit=40), tmp_path, progress=False)
    assert str(caught.value) == (
        "40 training images do not fill one batch of 50; lower the batch size or raise the "
        "train limit"
    )
    if not torch.cuda.is_available():
        with pytest.raises(QsnnError) as caught:
            train(config(data_dir, device="cuda"), tmp_path, progress=False)
        assert str(caught.value) == (
            "device 'cuda' was asked but torch sees no CUDA GPU; use cpu"
        )


def test_command_line_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["--net", "nonsense", "--dataset", "mnist", "--out", str(tmp_path)]) == 2
    error = capsys.readouterr().err
    assert error.startswith("qsnn: error: unknown net 'nonsense'")
    assert error.count("\n") == 1


def test_command_line_trains(tmp_path: Path, data_dir: str, capsys: pytest.CaptureFixture) -> None:
    argv = [
        "--net", "64-32", "--dataset", "mnist", "--data-dir", data_dir, "--epochs", "1",
        "--batch-size", "50", "--train-limit", "200", "--test-limit", "100", "--B", "none",
        "--encoding-B", "2", "--out", str(tmp_path), "--quiet",
    ]
    assert main(argv) == 0
    saved = json.loads((tmp_path / "config.json").read_text())["config"]
    assert (saved["B"], saved["encoding_B"], saved["batch_size"]) == (None, 2, 50)
    lines = capsys.readouterr().out.splitlines()  # --quiet: no progress, only the summary
    assert len(lines) == 1 and lines[0].startswith("done: 1 epochs in ")
    assert lines[0].endswith(f"checkpoints in {tmp_path}")


# ----------------------------------------------------------------------------- distributed


def torchrun(out: Path, data_dir: str, train_limit: int, *extra: str) -> list[str]:
    """``torchrun --standalone --nproc_per_node 2 -m qsnn.train ...`` (2 CPU processes)."""
    return [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        "-m", "qsnn.train", "--net", NET, "--dataset", "mnist", "--data-dir", data_dir,
        "--epochs", "2", "--batch-size", "100", "--lr", "0.01", "--train-limit",
        str(train_limit), "--test-limit", "200", "--out", str(out), "--quiet", *extra,
    ]


TORCHRUN_ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def run(command: list[str]) -> None:
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, env=TORCHRUN_ENV)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


@pytest.mark.slow
def test_torchrun_two_processes_agree(tmp_path: Path, data_dir: str) -> None:
    out = tmp_path / "ddp"
    run(torchrun(out, data_dir, 400, "--checkpoint-interval", "0", "--save-rank-weights"))

    rank0 = torch.load(out / "rank0_weights.pt", weights_only=True)
    rank1 = torch.load(out / "rank1_weights.pt", weights_only=True)
    assert_same_tensors(rank0, rank1)
    last = checkpoint(out / "last.pt")
    assert_same_tensors(last["model"], rank0)
    assert (last["epoch"], last["step"], last["world_size"]) == (2, 0, 2)
    assert [row["epoch"] for row in last["metrics"]] == [1, 2]
    # every step used the whole batch of 100 (50 per process): 4 steps of 100 per epoch
    assert last["optimizer"]["state"][0]["step"].item() == 8
    assert json.loads((out / "config.json").read_text())["resolved"]["batch_size"] == 100
    assert sorted(p.name for p in out.iterdir()) == [
        "best.pt", "config.json", "last.pt", "metrics.csv", "metrics.json",
        "rank0_weights.pt", "rank1_weights.pt",
    ]


@pytest.mark.slow
def test_torchrun_sigterm_then_resume_equals_uninterrupted(tmp_path: Path, data_dir: str) -> None:
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    run(torchrun(whole, data_dir, 8000))

    job = subprocess.Popen(
        torchrun(parts, data_dir, 8000, "--checkpoint-interval", "0"),
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=TORCHRUN_ENV,
    )
    try:
        while not (parts / "last.pt").exists() and job.poll() is None:
            time.sleep(0.05)
        job.send_signal(signal.SIGTERM)  # torchrun passes it on to both processes
        _, errors = job.communicate(timeout=120)
    finally:
        if job.poll() is None:
            job.kill()
    assert job.returncode != 0, "the run ended before it could be interrupted"
    saved = checkpoint(parts / "last.pt")
    assert saved["epoch"] == 0 and 0 < saved["step"] < 80, errors[-3000:]

    run(torchrun(parts, data_dir, 8000, "--resume"))
    assert_same_run(whole, parts)


def test_a_preset_resumes_under_its_own_notation(tmp_path: Path, shared_datasets) -> None:
    train(config(str(shared_datasets), net="nsd-fmnist-mlp", epochs=1, train_limit=100, test_limit=50), tmp_path,
          progress=False)
    summary = train(config(str(shared_datasets), net="400-400", epochs=2, train_limit=100, test_limit=50), tmp_path,
                    resume=True, progress=False)
    assert summary["epochs"] == 2
    with pytest.raises(QsnnError, match="it was trained with net='400-400' but net='400-300' was asked"):
        train(config(str(shared_datasets), net="400-300", epochs=3, train_limit=100, test_limit=50), tmp_path,
              resume=True, progress=False)


def test_an_extended_run_keeps_its_schedule_and_can_be_made_again(tmp_path: Path, data_dir: str) -> None:
    """2 epochs (lr / 10 from the second), then extended to 4: the lrs already used stay,
    config.json says so, and one run with those options makes the same weights."""
    train(config(data_dir, epochs=2), tmp_path / "extended", progress=False)
    train(config(data_dir, epochs=4), tmp_path / "extended", resume=True, progress=False)
    metrics = json.loads((tmp_path / "extended" / "metrics.json").read_text())
    assert [row["lr"] for row in metrics] == [1e-2, 1e-3, 1e-3, 1e-3]
    resolved = json.loads((tmp_path / "extended" / "config.json").read_text())["resolved"]
    assert resolved["lr_decay_epoch"] == 1
    train(config(data_dir, epochs=4, lr_decay_epoch=1), tmp_path / "once", progress=False)
    assert_same_tensors(checkpoint(tmp_path / "extended" / "last.pt")["model"],
                        checkpoint(tmp_path / "once" / "last.pt")["model"])


@pytest.mark.slow
def test_torchrun_into_a_held_folder_ends_on_every_rank(tmp_path: Path, data_dir: str) -> None:
    """Only rank 0 locks; the others learn it was refused instead of waiting for it."""
    out = tmp_path / "ddp"
    with folder_lock(out):
        done = subprocess.run(
            torchrun(out, data_dir, 400), capture_output=True, text=True, timeout=300, env=TORCHRUN_ENV,
        )
    assert done.returncode != 0
    # (each rank says it, rank 0 first hand; their lines may interleave)
    assert done.stderr.count(f"qsnn: error: {in_use(out, os.getpid())}") == 2, done.stderr[-3000:]
    assert not out.exists()


# --- the papers' recipe ---------------------------------------------------------------------


def test_per_image_standardization_is_tensorflows():
    """x = (p - mean) / max(std, 1 / sqrt(N)) per image (tf.image.per_image_standardization),
    and the spiking network reads exactly 255 x (the model's float32 x, in pixel units)."""
    import numpy as np

    rng = np.random.default_rng(0)
    images = torch.from_numpy(rng.integers(0, 256, (3, 3, 5, 5), dtype=np.uint8))
    images[2] = 77  # a flat image: std 0, the 1 / sqrt(N) floor
    found = qdata.model_input(images, "standardize")
    for image, x in zip(images.numpy().astype(np.float64), found.numpy(), strict=True):
        expected = (image - image.mean()) / max(image.std(), 1 / np.sqrt(image.size))
        assert np.allclose(x, expected, rtol=1e-6, atol=1e-6)
    assert torch.equal(found[2], torch.zeros_like(found[2]))
    spiking = qdata.spiking_input(images, "standardize")
    assert spiking.dtype == torch.float64 and torch.equal(spiking / 255, found.double())
    assert torch.equal(qdata.spiking_input(images, "pixels"), images)


def test_the_papers_cifar_recipe_is_recorded_and_converts_losslessly(tmp_path, monkeypatch):
    """`qsnn train --recipe paper` on CIFAR-format files: the original schedule (batch 200,
    lr 1e-3, 10x decay half-way) in config.json, the colour augmentation and per-image
    standardization as the net's input stage, and every scheme's SNN equal, count for
    count, to the quantized ANN on the standardized test images."""
    from qsnn.cli import main
    from qsnn.sim.run import simulate
    from qsnn.snn.convert import convert
    from qsnn.snn.exact import ExactANN
    from tests.data.test_data import accept_files, write_cifar

    folder = tmp_path / "data" / "cifar-10-batches-py"
    write_cifar(folder, "cifar10", count=48, seed=3)
    accept_files(monkeypatch, "cifar10", folder)
    out = tmp_path / "run"
    argv = ["train", "--net", "8C3-P2-16", "--dataset", "cifar10", "--k", "1", "--B", "2", "--ternary",
            "--recipe", "paper", "--epochs", "2", "--data-dir", str(tmp_path / "data"), "--out", str(out), "--quiet"]
    assert main(argv) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["config"]["recipe"] == "paper"
    assert (config["config"]["batch_size"], config["config"]["lr"], config["config"]["epochs"]) == (200, 1e-3, 2)
    model, _ = load_checkpoint(out / "last.pt")
    assert model.spec.input_stage == "standardize"
    test = qdata.load("cifar10", "test", tmp_path / "data")
    pixels = qdata.prepare(test.images, "cifar10", train=False)
    for scheme in ("nsd", "sg", "int"):
        net = convert(out / "last.pt", scheme)
        result = simulate(net, pixels, test.labels, steps=None, batch_size=10)
        assert result.agree[-1] == len(test) == 48 and result.count_mismatches == [0, 0, 0], scheme
        assert result.verified_images == 48 and result.verified_disagreements == 0  # (the model's exact ANN)
    model, _ = load_checkpoint(out / "last.pt")
    exact = ExactANN(model)(pixels)  # (the same from raw pixels and from what the SNN reads)
    again = ExactANN(model)(qdata.spiking_input(pixels, "standardize"))
    assert all(torch.equal(a, b) for a, b in zip(exact.counts, again.counts, strict=True))
    with pytest.raises(QsnnError, match="takes raw 8-bit pixels, but this network standardizes each image first"):
        from qsnn.deploy.export import export_package

        export_package(convert(out / "last.pt", "nsd"), tmp_path / "pkg")


def test_the_papers_recipe_per_net():
    mnist = TrainConfig.paper("sg-lenet", "mnist")
    assert (mnist.epochs, mnist.batch_size, mnist.lr, mnist.lr_at(mnist.epochs - 1)) == (200, 128, 1e-4, 1e-4)
    assert mnist.spec().input_stage == "pixels" and mnist.recipe == "paper"
    cifar = TrainConfig.paper("nsd-cifar10-cnn1", "cifar10", epochs=10)
    assert (cifar.epochs, cifar.batch_size, cifar.lr_at(4), cifar.lr_at(5)) == (10, 200, 1e-3, 1e-4)
    assert cifar.spec().input_stage == "standardize"
    assert TrainConfig.paper("nsd-lenet", "mnist").epochs == 150 and TrainConfig.paper("8C3-10", "mnist").epochs == 200
    assert TrainConfig(net="nsd-lenet", dataset="mnist").spec().input_stage == "pixels"
    with pytest.raises(QsnnError, match="recipe must be one of qsnn, paper, got 'tf'"):
        TrainConfig(net="nsd-lenet", dataset="mnist", recipe="tf")


def test_resuming_runs_written_before_the_recipe_and_extending_a_paper_run(tmp_path):
    from qsnn.train.checkpoint import check_resumable as _check_resumable

    config = TrainConfig(net="nsd-lenet", dataset="mnist")
    older = {key: value for key, value in config.to_dict().items() if key != "recipe"}
    _check_resumable(older, config, tmp_path)  # (a config without the field: the qsnn recipe)
    with pytest.raises(QsnnError, match="recipe"):
        _check_resumable(older, TrainConfig.paper("nsd-lenet", "mnist", epochs=3), tmp_path)
    paper = TrainConfig.paper("nsd-lenet", "mnist", epochs=2)
    _check_resumable(paper.to_dict(), TrainConfig.paper("nsd-lenet", "mnist", epochs=4), tmp_path)
    assert paper.lr_at(10**5) == 1e-4  # constant


def test_a_run_whose_preset_changed_since_is_not_resumed_as_the_new_net(tmp_path, monkeypatch):
    from dataclasses import replace

    from qsnn import data as qsnn_data
    from qsnn.net import notation

    config = TrainConfig(net="nsd-fmnist-mlp", dataset="mnist", epochs=1, train_limit=200, test_limit=50,
                         data_dir=None)
    monkeypatch.setattr(qsnn_data, "load", lambda name, split, data_dir=None: _tiny(split))
    train(config, tmp_path, progress=False)
    changed = replace(notation.PRESETS["nsd-fmnist-mlp"], notation="400-300")
    monkeypatch.setitem(notation.PRESETS, "nsd-fmnist-mlp", changed)
    with pytest.raises(QsnnError, match=r"last.pt holds 400-400 .* but these options now build 400-300 .*; train into"):
        train(replace(config, epochs=2), tmp_path, resume=True, progress=False)


def _tiny(split: str) -> qdata.ImageSet:
    generator = torch.Generator().manual_seed(0 if split == "train" else 1)
    count = 200 if split == "train" else 50
    images = torch.randint(0, 256, (count, 1, 28, 28), generator=generator, dtype=torch.uint8)
    return qdata.ImageSet("mnist", split, images, torch.randint(0, 10, (count,), generator=generator))
