"""The command line: every subcommand has --help, bad input is one line and exit 2."""

import pytest

from qsnn.cli import build_parser, main
from qsnn.pipeline import MODELS

COMMANDS = ["nets", "data", "train", "eval", "convert", "simulate", "run", "sweep", "report", "export", "map", "plot"]


def test_every_subcommand_has_help(capsys):
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    assert sorted(sub.choices) == sorted(COMMANDS)
    for command in COMMANDS:
        with pytest.raises(SystemExit) as done:
            main([command, "--help"])
        assert done.value.code == 0
        assert f"usage: qsnn {command}" in capsys.readouterr().out


def test_eval_checks_the_net_and_the_dataset(capsys, tmp_path):
    checkpoint = str(MODELS / "sg-lenet-k1B2.pt")
    assert main(["eval", checkpoint, "--limit", "200"]) == 0
    assert "16C5s-16C5-P2-32C5-P2-256 (k=1 B=2 ternary) on mnist test (200 images): " in capsys.readouterr().out
    assert main(["eval", checkpoint, "--net", "nsd-lenet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("qsnn: error: checkpoint ") and "holds the net 16C5s-16C5-P2-32C5-P2-256, not 20C5-P2-50C5-P2-500" in err
    assert main(["eval", checkpoint, "--dataset", "cifar10"]) == 2
    assert "was trained on 1x28x28 inputs, but cifar10 gives 3x24x24" in capsys.readouterr().err
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
    assert "LOSSLESS: SNN agrees with the quantized ANN on 100 of 100 images (100.00%), 0 neuron counts differ" in out
    assert sorted(p.name for p in (tmp_path / "sim").iterdir()) == [
        "accuracy.txt", "layers.csv", "per_step.csv", "result.json", "sop_num.txt", "spike_collect.txt", "spike_num.txt",
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
    assert err.startswith("qsnn: error: cannot use /dev/null/x") and err.count("\n") == 1
    assert main(["run", "--checkpoint", checkpoint, "--k", "0", "--limit", "10"]) == 2
    assert "which does not match --k 0; drop the option (the checkpoint decides)" in capsys.readouterr().err
    assert main(["run", "--checkpoint", str(MODELS / "nsd-lenet-k1.pt"), "--threshold-scale", "10000",
                 "--limit", "10", "--out", str(tmp_path / "r"), "--quiet"]) == 2
    assert "--threshold-scale compares the INT paper's rounded thresholds, but this run has no INT scheme" in capsys.readouterr().err
