"""The command line: every subcommand has --help, bad input is one line and exit 2."""

import contextlib
import errno
import os

import pytest

from qsnn.cli import build_parser, main
from qsnn.io import folder_lock
from qsnn.pipeline import MODELS
from tests.test_io import dot_files, fail_writes, in_use

COMMANDS = ["nets", "data", "train", "eval", "convert", "simulate", "run", "sweep", "report", "export", "map", "plot"]


def test_every_subcommand_has_help(capsys):
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    assert sorted(sub.choices) == sorted(COMMANDS)
    for command in COMMANDS:
        with pytest.raises(SystemExit) as done:
            main([command, "--help"])
        assert done.value.code == 0
        assert f"usage: qsnn {command}" in capsys.readouterr().out


def test_eval_reports_the_exact_ann_and_the_float32_model(capsys):
    """int-lenet's float32 pass rounds 57 neuron counts of image 1..1000 to the other side
    of a level boundary (a pre-activation 1e-7 below it); the exact ANN decides them."""
    checkpoint = str(MODELS / "int-lenet.pt")
    assert main(["eval", checkpoint, "--limit", "1000", "--quiet"]) == 0
    assert capsys.readouterr().out == (
        "32C5-P2-64C5-P2-1000 (k=0 B=none (encoding k=0 B=4) ternary) on mnist test (1,000 images): 98.90% "
        "(the quantized ANN evaluated exactly)\n"
        "float32 model: 98.90%; 57 neuron counts on 1 image differ from the exact ANN "
        "(float32 rounding near a level boundary)\n"
    )


def test_eval_checks_the_net_and_the_dataset(capsys, tmp_path):
    checkpoint = str(MODELS / "sg-lenet-k1B2.pt")
    assert main(["eval", checkpoint, "--limit", "200"]) == 0
    assert "16C5s-16C5-P2-32C5-P2-256 (k=1 B=2 ternary) on mnist test (200 images): " in capsys.readouterr().out
    assert main(["eval", checkpoint, "--net", "nsd-lenet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("qsnn: error: checkpoint ") and "holds the net 16C5s-16C5-P2-32C5-P2-256, not 20C5-P2-50C5-P2-500" in err
    assert main(["eval", checkpoint, "--dataset", "cifar10"]) == 2
    assert capsys.readouterr().err == (
        f"qsnn: error: {checkpoint} was trained on mnist, not cifar10; drop --dataset (or give --dataset mnist)\n"
    )
    junk = tmp_path / "junk.pt"
    junk.write_text("no")
    assert main(["eval", str(junk)]) == 2
    assert "is not a qsnn checkpoint" in capsys.readouterr().err


def test_convert_simulate_export_and_map_from_the_command_line(capsys, tmp_path):
    checkpoint = str(MODELS / "sg-lenet-k1B2.pt")
    net = tmp_path / "sg.npz"
    assert main(["convert", checkpoint, "--scheme", "sg", "-o", str(net)]) == 0
    assert f"written to {net}" in capsys.readouterr().out
    assert main(["simulate", str(net), "--limit", "100", "--quiet", "--out", str(tmp_path / "sim")]) == 0
    out = capsys.readouterr().out
    assert (
        "LOSSLESS: SNN agrees with the exact quantized ANN of the trained model (from its own parameters, not the "
        "converted tables) on 100 of 100 images (100.00%), 0 neuron counts differ" in out
    )
    assert "Checked against" not in out and "SOPs/img (paper)" not in out
    assert main(["simulate", str(net), "--limit", "100", "--quiet", "--sop-convention", "paper",
                 "--out", str(tmp_path / "s3")]) == 0
    assert "SOPs/img (paper)" in capsys.readouterr().out
    assert main(["simulate", str(net), "--limit", "100", "--quiet", "--verify", "sample", "--out", str(tmp_path / "s2")]) == 0
    out = capsys.readouterr().out
    assert "LOSSLESS: SNN agrees with the quantized ANN of the converted tables on 100 of 100 images (100.00%)" in out
    assert (
        "Checked against the exact ANN of the trained model (its own parameters, not the converted tables) on 1 "
        "image: 0 neuron counts and 0 predictions differ" in out
    )
    assert sorted(p.name for p in (tmp_path / "sim").iterdir()) == [
        "accuracy.txt", "layers.csv", "per_step.csv", "result.json", "sop_num.txt", "spike_num.txt",  # (SG's three)
    ]
    assert main(["export", str(net), "--format", "qsnn-int", "-o", str(tmp_path / "pkg")]) == 0
    assert (tmp_path / "pkg" / "manifest.json").exists()
    assert main(["map", str(net), "--core", "256x256", "--json", str(tmp_path / "map.json")]) == 0
    assert "total" in capsys.readouterr().out and (tmp_path / "map.json").exists()
    assert main(["convert", checkpoint, "--scheme", "nsd", "--threshold-scale", "10000"]) == 2
    assert "--threshold-scale reproduces the INT paper's rounded thresholds" in capsys.readouterr().err
    with pytest.raises(SystemExit) as done:
        main(["simulate", str(net), "--steps", "0"])
    assert done.value.code == 2
    assert capsys.readouterr().err == (
        "qsnn simulate: error: argument --steps: --steps must be a positive integer up to 100,000 "
        "or 'auto', got '0' (see qsnn simulate --help)\n"
    )


def test_bad_values_and_unwritable_paths_are_one_line_errors(capsys, tmp_path):
    checkpoint = str(MODELS / "sg-lenet-k1B2.pt")
    net = tmp_path / "sg.npz"
    assert main(["convert", checkpoint, "--scheme", "sg", "-o", str(net)]) == 0
    capsys.readouterr()
    for argv, message in [
        (["simulate", str(net), "--noise", "nan"], "argument --noise: expected a ratio between 0 and 1, got 'nan'"),
        (["simulate", str(net), "--device", "tpu"], "argument --device: unknown device 'tpu': use cpu, cuda or cuda:N"),
        (["simulate", str(net), "--energy-add", "-1"], "argument --energy-add: expected a positive energy in pJ, got '-1'"),
    ]:
        with pytest.raises(SystemExit) as done:
            main(argv)
        assert done.value.code == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1
    assert main(["simulate", str(net), "--limit", "10", "--quiet", "--out", "/dev/null/x"]) == 2
    err = capsys.readouterr().err
    assert err == "qsnn: error: /dev/null is not a folder, so /dev/null/x cannot be created; choose another --out\n"
    assert main(["run", "--checkpoint", checkpoint, "--k", "0", "--limit", "10"]) == 2
    assert "which does not match --k 0; drop the option (the checkpoint decides)" in capsys.readouterr().err
    assert main(["run", "--checkpoint", str(MODELS / "nsd-lenet-k1.pt"), "--threshold-scale", "10000",
                 "--limit", "10", "--out", str(tmp_path / "r"), "--quiet"]) == 2
    assert "--threshold-scale compares the INT paper's rounded thresholds, but this run has no INT scheme" in capsys.readouterr().err


def test_run_says_which_schemes_it_skips_and_what_they_need(capsys, tmp_path):
    assert main(["run", "--checkpoint", str(MODELS / "nsd-lenet-k1.pt"), "--limit", "20",
                 "--out", str(tmp_path / "r"), "--quiet"]) == 0
    err = capsys.readouterr().err.splitlines()
    assert [line for line in err if "skipped" in line] == [
        "[mnist-20C5-P2-50C5-P2-500-k1-Bnone] sg skipped: SG needs an upper bound B on every block (train with --B 1, 2 or 4)",
        "[mnist-20C5-P2-50C5-P2-500-k1-Bnone] int skipped: INT needs ternary hidden weights (--ternary) and a bounded encoding block "
        "(--B, or --encoding-k 0 --encoding-B 4 as the paper)",
    ]
    assert sorted(p.name for p in (tmp_path / "r").iterdir() if p.is_dir() and p.name in ("nsd", "sg", "int")) == ["nsd"]


def _error(capsys, argv) -> str:
    """Run the command line, insist on exit status 2 and one line; return that line."""
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("qsnn: error: "), err
    return err[len("qsnn: error: "):-1]


def test_an_output_that_is_the_input_or_no_file_is_refused(capsys, tmp_path):
    checkpoint = tmp_path / "net.pt"
    checkpoint.write_bytes((MODELS / "sg-lenet-k1B2.pt").read_bytes())
    before = checkpoint.read_bytes()
    assert _error(capsys, ["convert", str(checkpoint), "--scheme", "sg", "-o", str(checkpoint)]) == (
        f"-o {checkpoint} is the input file, which would be overwritten; choose another output file"
    )
    assert checkpoint.read_bytes() == before
    net = tmp_path / "sg.npz"
    assert main(["convert", str(checkpoint), "--scheme", "sg", "-o", str(net)]) == 0
    capsys.readouterr()
    assert _error(capsys, ["export", str(net), "--format", "nir", "-o", str(net)]) == (
        f"-o {net} is the input file, which would be overwritten; choose another output file"
    )
    assert _error(capsys, ["convert", str(checkpoint), "--scheme", "sg", "-o", str(tmp_path)]) == (
        f"{tmp_path} is a directory; give a file name (e.g. {tmp_path / 'out'}...)"
    )
    assert _error(capsys, ["convert", str(checkpoint), "--scheme", "sg", "-o", "/dev/null"]) == (
        "/dev/null is not a regular file (a device, pipe or socket); write to a file"
    )
    assert _error(capsys, ["convert", str(checkpoint), "--scheme", "sg", "-o", str(net / "x.npz")]) == (
        f"{net} is not a folder, so {net / 'x.npz'} cannot be created; choose another path"
    )
    assert _error(capsys, ["map", str(net), "--json", str(net)]) == (
        f"--json {net} is the input file, which would be overwritten; choose another output file"
    )
    assert _error(capsys, ["map", str(net), "--json", str(tmp_path)]).startswith(f"{tmp_path} is a directory")
    assert capsys.readouterr().out == ""  # (refused before the table)
    import errno

    from tests.test_io import fail_writes

    with pytest.MonkeyPatch.context() as patch:  # a write the file system refuses
        fail_writes(patch, errno.EACCES)
        assert _error(capsys, ["map", str(net), "--json", str(tmp_path / "map.json")]).startswith(
            f"cannot write {tmp_path / 'map.json'}: Permission denied"
        )
        assert capsys.readouterr().out == ""  # the table is not printed before the failure
    assert sorted(p.name for p in tmp_path.iterdir()) == ["net.pt", "sg.npz"]  # nothing else written
    package = tmp_path / "pkg"
    package.mkdir()  # a package goes into a folder, new or not
    for _ in range(2):
        assert main(["export", str(net), "--format", "qsnn-int", "-o", str(package)]) == 0
    assert capsys.readouterr().out == f"wrote {package}\n" * 2
    assert (package / "manifest.json").is_file()
    assert _error(capsys, ["export", str(net), "--format", "qsnn-int", "--steps", "4", "-o", str(package)]) == (
        "--steps does not apply to SG (it takes one step); drop it"
    )
    assert main(["export", str(net), "--format", "qsnn-int", "--steps", "1", "-o", str(package)]) == 0  # its one step
    capsys.readouterr()


def test_an_output_folder_in_use_is_refused_by_every_command_that_fills_one(capsys, tmp_path, shared_datasets):
    checkpoint = str(MODELS / "sg-lenet-k1B2.pt")
    net = tmp_path / "sg.npz"
    assert main(["convert", checkpoint, "--scheme", "sg", "-o", str(net)]) == 0
    capsys.readouterr()
    busy, cell = tmp_path / "busy", tmp_path / "sweep" / "noise=0"
    train = ["train", "--net", "64-32", "--dataset", "mnist", "--data-dir", str(shared_datasets), "--epochs", "1",
             "--batch-size", "100", "--train-limit", "200", "--test-limit", "100", "--quiet"]
    with contextlib.ExitStack() as other_process:
        other_process.enter_context(folder_lock(busy))
        other_process.enter_context(folder_lock(cell))
        for argv, folder, option in [
            ([*train, "--out", str(busy)], busy, "--out"),
            ([*train, "--out", str(busy), "--resume"], busy, "--out"),
            (["run", "--checkpoint", checkpoint, "--limit", "10", "--quiet", "--out", str(busy)], busy, "--out"),
            (["sweep", "--checkpoint", checkpoint, "--grid", "noise=0", "--limit", "10", "--quiet",
              "--out", str(tmp_path / "sweep")], cell, "--out"),
            (["simulate", str(net), "--limit", "10", "--quiet", "--out", str(busy)], busy, "--out"),
            (["export", str(net), "--format", "qsnn-int", "-o", str(busy)], busy, "-o"),
        ]:
            assert _error(capsys, argv) == in_use(folder, os.getpid(), option), argv[0]
        assert sorted(p.name for p in busy.iterdir()) == [".qsnn.lock"]  # nothing written
        assert sorted(p.name for p in cell.iterdir()) == [".qsnn.lock"]
    assert main(["export", str(net), "--format", "qsnn-int", "-o", str(busy)]) == 0
    assert main([*train, "--out", str(busy)]) == 0
    assert sorted(p.name for p in busy.iterdir()) == [
        "best.pt", "config.json", "last.pt", "manifest.json", "metrics.csv", "metrics.json", "weights.npz",
    ]
    assert not (tmp_path / "sweep").exists()  # (the folders the holder made, empty, went with it)


def test_a_full_disk_or_a_refused_write_is_one_line_naming_the_file(capsys, tmp_path, monkeypatch):
    checkpoint = str(MODELS / "sg-lenet-k1B2.pt")
    net = tmp_path / "sg.npz"
    fail_writes(monkeypatch)
    assert _error(capsys, ["convert", checkpoint, "--scheme", "sg", "-o", str(net)]) == (
        f"cannot write {net}: No space left on device; free some space and run the command again"
    )
    assert list(tmp_path.iterdir()) == []
    assert main(["convert", checkpoint, "--scheme", "sg", "-o", str(net)]) == 0
    capsys.readouterr()
    fail_writes(monkeypatch, errno.EACCES)
    assert _error(capsys, ["map", str(net), "--json", str(tmp_path / "map.json")]) == (
        f"cannot write {tmp_path / 'map.json'}: Permission denied; check that you may write to {tmp_path} "
        "and run the command again, or choose another folder"
    )
    assert capsys.readouterr().out == ""
    fail_writes(monkeypatch, errno.EIO, name="manifest.json")
    assert _error(capsys, ["export", str(net), "--format", "qsnn-int", "-o", str(tmp_path / "pkg")]) == (
        f"cannot write {tmp_path / 'pkg' / 'manifest.json'}: Input/output error; check the disk and run the command again"
    )
    assert sorted(p.name for p in (tmp_path / "pkg").iterdir()) == ["weights.npz"]  # no manifest: no package
    assert dot_files(tmp_path) == []


def test_a_network_file_that_is_not_one_is_named_so(capsys, tmp_path):
    checkpoint = str(MODELS / "sg-lenet-k1B2.pt")
    net = tmp_path / "sg.npz"
    assert main(["convert", checkpoint, "--scheme", "sg", "-o", str(net)]) == 0
    cut = tmp_path / "cut.npz"
    cut.write_bytes(net.read_bytes()[:2000])
    empty = tmp_path / "empty.npz"
    empty.write_bytes(b"")
    capsys.readouterr()
    for argv in (["simulate"], ["map"], ["export", "--format", "nir", "-o", str(tmp_path / "x.nir")]):
        assert _error(capsys, [*argv, str(cut)]) == (
            f"{cut} is not a converted qsnn network or is damaged (BadZipFile); re-create it with `qsnn convert`"
        )
    assert _error(capsys, ["simulate", str(empty)]) == (
        f"{empty} is not a converted qsnn network or is damaged (EOFError); re-create it with `qsnn convert`"
    )
    assert _error(capsys, ["simulate", checkpoint]) == (
        f"{checkpoint} is a training checkpoint, not a converted network; "
        f"convert it first: `qsnn convert {checkpoint} --scheme nsd`"
    )
    assert _error(capsys, ["simulate", str(tmp_path)]) == (
        f"{tmp_path} is a folder; give a converted network file (the .npz `qsnn convert` writes)"
    )


def test_options_that_would_be_ignored_are_refused(capsys, tmp_path):
    checkpoint = str(MODELS / "nsd-lenet-k1.pt")
    assert _error(capsys, ["run", "--k", "3", "--epochs", "2"]) == (
        "--epochs, --k needs --net and --dataset (or --checkpoint): without them `qsnn run` runs the shipped demo, "
        "which takes only --limit, --device, --out and --quiet"
    )
    for scheme in ("", "nsd,,sg", "nsd,nsd", "snn"):
        assert _error(capsys, ["run", "--checkpoint", checkpoint, "--scheme", scheme]) == (
            f"--scheme takes nsd, sg, int separated by commas, each once; got {scheme!r}"
        )
    assert _error(capsys, ["run", "--checkpoint", checkpoint, "--epochs", "5"]) == (
        "--epochs shapes training, but --checkpoint reuses a trained net; drop it (or drop --checkpoint to train)"
    )
    assert _error(capsys, ["run", "--checkpoint", checkpoint, "--lr", "0.1", "--train-limit", "5"]) == (
        "--lr, --train-limit shape training, but --checkpoint reuses a trained net; drop it (or drop --checkpoint to "
        "train)"
    )
    assert _error(capsys, ["run", "--checkpoint", checkpoint, "--ternary"]) == (  # compared, as --k and --B are
        f"{checkpoint} holds 20C5-P2-50C5-P2-500 (k=1 B=none), which does not match --ternary; drop the option "
        "(the checkpoint decides) or give another checkpoint"
    )
    ternary = str(MODELS / "int-lenet.pt")
    assert main(["run", "--checkpoint", ternary, "--ternary", "--scheme", "int", "--limit", "5", "--quiet",
                 "--out", str(tmp_path / "int")]) == 0
    capsys.readouterr()
    assert main(["run", "--noise", "0.0", "--limit", "5", "--quiet", "--out", str(tmp_path / "demo")]) == 0
    capsys.readouterr()
    assert _error(capsys, ["run", "--net", "8-10", "--dataset", "mnist", "--fp32", "--ternary", "--B", "2"]) == (
        "--fp32 trains a full-precision baseline; drop --B, --ternary (they quantize)"
    )
    assert _error(capsys, ["train", "--net", "8-10", "--dataset", "mnist", "--fp32", "--k", "3", "--B", "none",
                           "--out", str(tmp_path / "t")]) == (
        "--fp32 trains a full-precision baseline; drop --k (they quantize)"  # (B none quantizes nothing)
    )
    assert not (tmp_path / "t").exists()


def test_a_network_is_simulated_on_its_own_dataset_only(capsys, tmp_path):
    net = tmp_path / "nsd.npz"
    assert main(["convert", str(MODELS / "nsd-lenet-k1.pt"), "--scheme", "nsd", "-o", str(net)]) == 0
    capsys.readouterr()
    assert _error(capsys, ["simulate", str(net), "--dataset", "fashion-mnist"]) == (
        f"{net} was trained on mnist, not fashion-mnist; drop --dataset (or give --dataset mnist)"
    )
    assert _error(capsys, ["simulate", str(net), "--dataset", "svhn"]).startswith("unknown dataset 'svhn'")
    assert _error(capsys, ["run", "--checkpoint", str(MODELS / "nsd-lenet-k1.pt"), "--dataset", "fashion-mnist"]) == (
        f"{MODELS / 'nsd-lenet-k1.pt'} was trained on mnist, not fashion-mnist; drop --dataset (or give --dataset mnist)"
    )


def test_nets_on_a_dataset_lists_what_fits_and_names_what_does_not(capsys):
    assert main(["nets", "--dataset", "mnist"]) == 0
    out = capsys.readouterr().out
    assert "nsd-lenet: 20C5-P2-50C5-P2-500 on mnist 1x28x28" in out
    unfit = [line.split(":")[0] for line in out.splitlines() if "does not fit mnist (item " in line]
    assert unfit == ["nsd-cifar10-cnn1", "nsd-cifar10-cnn2", "sg-vgg", "int-cifar10-cnn1"]


def test_ignored_or_repeated_values_and_interruptions(capsys, tmp_path, monkeypatch):
    import qsnn.cli as cli

    checkpoint = str(MODELS / "sg-lenet-k1B2.pt")
    assert _error(capsys, ["run", "--checkpoint", checkpoint, "--scheme", "sg", "--steps", "3"]) == (
        "SG takes one time step; --steps 3 does not apply to it (drop it)"
    )
    assert _error(capsys, ["run", "--checkpoint", checkpoint, "--noise", "0,0.1,0"]) == (
        "--noise gives a ratio twice ('0,0.1,0'); give each once"
    )
    net = tmp_path / "sg.npz"
    assert main(["convert", checkpoint, "--scheme", "sg", "-o", str(net)]) == 0
    capsys.readouterr()
    assert _error(capsys, ["simulate", str(net), "--steps", "5", "--limit", "5"]) == (
        "SG takes one time step; --steps 5 does not apply to it (drop it)"
    )
    assert _error(capsys, ["train", "--net", "8-10", "--dataset", "mnist", "--seed", "-1",
                           "--out", str(tmp_path / "t")]) == "seed must be an integer from 0 to 2^63 - 1, got -1"
    assert _error(capsys, ["report", str(tmp_path)]) == (
        f"no run.json under {tmp_path}: give folders written by `qsnn run`"
    )

    def interrupted():
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "build_parser", interrupted)  # Ctrl-C while torch is still being imported
    assert main(["nets"]) == 130
    assert capsys.readouterr().err == "qsnn: interrupted\n"


def test_run_takes_the_papers_recipe_like_train():
    """`qsnn run` and `qsnn train` declare their shared options once (the TrainConfig fields of qsnn.train.options.NETWORK_FIELDS)."""
    from qsnn.cli import _run_spec, build_parser

    args = build_parser().parse_args(["run", "--net", "nsd-lenet", "--dataset", "mnist", "--recipe", "paper", "--epochs", "2"])
    spec = _run_spec(args)
    assert (spec.recipe, spec.epochs, spec.batch_size, spec.lr) == ("paper", 2, None, None)  # (not given)
    config = spec.train_config(None, "cpu")
    assert (config.recipe, config.lr_at(1), config.epochs, config.batch_size) == ("paper", 1e-4, 2, 200)
    plain = _run_spec(build_parser().parse_args(["run", "--net", "nsd-lenet", "--dataset", "mnist"])).train_config(None, "cpu")
    assert (plain.recipe, plain.epochs, plain.lr) == ("qsnn", 3, 1e-3)
    from qsnn.pipeline import RunSpec

    from_python = RunSpec(net="nsd-lenet", dataset="mnist", recipe="paper").train_config(None, "cpu")
    assert (from_python.epochs, from_python.lr, from_python.batch_size) == (150, 1e-4, 200)
    train = build_parser().parse_args(["train", "--net", "nsd-lenet", "--dataset", "mnist", "--out", "x"])
    run = build_parser().parse_args(["run"])
    shared = ("k", "B", "ternary", "full_precision", "encoding_k", "encoding_B", "recipe", "epochs", "batch_size", "lr",
              "seed", "train_limit")
    assert {name: getattr(train, name) for name in shared} == {name: getattr(run, name) for name in shared}


MODEL_MODULE = '''
import torch
from torch import nn
from qsnn.nn import QuantAct


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.norm, self.act = nn.Conv2d(1, 4, 5, stride=2), nn.BatchNorm2d(4), QuantAct(1, 2)
        self.conv2, self.act2 = nn.Conv2d(4, 4, 3, padding=1), QuantAct(1, 2)
        self.fc = nn.Linear(4 * 12 * 12, 10)

    def forward(self, x):
        a = self.act(self.norm(self.conv(x)))
        return self.fc(torch.flatten(self.act2(self.conv2(a)) + a, 1))


def make():
    torch.manual_seed(0)
    return Net()
'''


def test_a_model_of_ones_own_through_the_command_line(capsys, tmp_path, monkeypatch, shared_datasets):
    """qsnn convert WEIGHTS --model MODULE:FACTORY writes a spiking graph; qsnn simulate
    runs it, checks every image and writes its results; the mistakes are one line each."""
    import json

    import torch

    monkeypatch.chdir(tmp_path)
    (tmp_path / "my_nets.py").write_text(MODEL_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    import my_nets

    torch.save(my_nets.make().state_dict(), tmp_path / "w.pt")
    assert main(["convert", "w.pt", "--model", "my_nets:make", "--dataset", "mnist", "--scheme", "nsd", "-o", "g.npz"]) == 0
    assert capsys.readouterr().out.startswith("NSD spiking graph: 2 populations, 1 additions")
    data_dir = str(shared_datasets)
    assert main(["simulate", "g.npz", "--data-dir", data_dir, "--limit", "30", "--out", "sim", "--quiet"]) == 0
    line = capsys.readouterr().out
    assert line.startswith("LOSSLESS: the spiking graph agrees with the converted model's exact evaluation on 30 of 30 "
                           "images, 0 neuron counts differ;"), line
    saved = json.loads((tmp_path / "sim" / "result.json").read_text())
    assert (saved["images"], saved["lossless"], saved["source"]["model"]) == (30, True, "my_nets:make")
    assert _error(capsys, ["simulate", "g.npz", "--data-dir", data_dir, "--verify", "sample"]) == (
        "--verify does not apply to a converted model of your own (every image is checked against the model's exact "
        "evaluation); drop it"
    )
    assert main(["simulate", "g.npz", "--limit", "30", "--data-dir", data_dir, "--quiet", "--noise", "0.2",
                 "--out", str(tmp_path / "noisy")]) == 0
    line = capsys.readouterr().out
    assert line.startswith("noise r = 0.2, pixel noise: accuracy "), line
    assert ("the spiking graph agrees with the converted model's tables on the noisy pixels on 30 of 30 images, 0 neuron "
            "counts differ;") in line
    noisy = json.loads((tmp_path / "noisy" / "result.json").read_text())
    assert (noisy["noise"], noisy["lossless"], noisy["ann_accuracy_clean"]) == (0.2, True, saved["ann_accuracy"])
    assert _error(capsys, ["simulate", "g.npz", "--dataset", "fashion-mnist", "--data-dir", data_dir]) == (
        "g.npz was trained on mnist, not fashion-mnist; drop --dataset (or give --dataset mnist)"
    )
    assert _error(capsys, ["convert", "w.pt", "--model", "my_nets", "--dataset", "mnist", "--scheme", "nsd"]) == (
        "--model takes MODULE:FACTORY (e.g. mynets:resnet), got 'my_nets'"
    )
    assert _error(capsys, ["convert", "w.pt", "--model", "my_nets:missing", "--dataset", "mnist", "--scheme", "nsd"]) == (
        "cannot make the model my_nets:missing: module 'my_nets' has no attribute 'missing'; check the module path "
        "and the function name"
    )
    assert _error(capsys, ["convert", "w.pt", "--model", "my_nets:make", "--scheme", "nsd"]) == (
        "give --input-shape C,H,W (or --dataset, whose images the model takes)"
    )
    torch.save({"conv.weight": torch.zeros(4, 1, 5, 5)}, tmp_path / "partial.pt")
    assert _error(capsys, ["convert", "partial.pt", "--model", "my_nets:make", "--input-shape", "1,28,28",
                           "--scheme", "nsd"]).startswith("partial.pt does not match the model my_nets:make: Error(s) in loading")
    assert _error(capsys, ["convert", "w.pt", "--dataset", "mnist", "--scheme", "nsd"]) == (
        "--dataset is for a model of your own (--model); a qsnn checkpoint knows its input and dataset"
    )
