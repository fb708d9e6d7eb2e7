"""`qsnn run`, sweeps and reports: one folder with everything, resumable, papers' table."""

import dataclasses
import json
import os
from pathlib import Path

import pytest

from qsnn.cli import main
from qsnn.errors import QsnnError
from qsnn.io import folder_lock
from qsnn.pipeline import RunSpec, execute, markdown_table, parse_grid, report_rows, sweep
from tests.helpers import one_thread  # noqa: F401  (autouse: one intra-op thread in this module)
from tests.test_io import dot_files, in_use

NET = "4C5-P2-8C5-P2-16"


def small_spec(**changes) -> RunSpec:
    base = dict(
        net=NET, dataset="mnist", k=1, B=2, ternary=True, epochs=1, train_limit=600,
        test_limit=60, batch_size=100,
    )
    base.update(changes)
    return RunSpec(**base)


def test_a_run_holds_everything_and_is_lossless(tmp_path, shared_datasets):
    spec = small_spec(noise=[0.0, 0.1], threshold_scale=10000)
    record = execute(spec, tmp_path / "run", data_dir=str(shared_datasets), progress=False)
    run = tmp_path / "run"
    for path in [
        "run.json", "train/last.pt", "train/metrics.csv", "nsd/net.npz", "sg/net.npz", "int/net.npz",
        "int-scale10000/net.npz", "nsd/sim/result.json", "nsd/sim-noise0.1/accuracy.txt",
        "sg/sim/per_step.csv", "int/sim/sop_num.txt", "plots/accuracy.png", "plots/noise.png",
        "report.md", "report.csv",
    ]:
        assert (run / path).exists(), path
    assert [(s["scheme"], s["threshold_scale"], s["noise"]) for s in record["simulations"]] == [
        ("nsd", None, 0.0), ("nsd", None, 0.1), ("sg", None, 0.0), ("sg", None, 0.1),
        ("int", None, 0.0), ("int", None, 0.1), ("int", 10000, 0.0), ("int", 10000, 0.1),
    ]
    rows = report_rows([run])
    assert len(rows) == 8
    exact = [r for r in rows if r["Noise"] == 0 and "scale" not in r["Scheme"]]
    assert [r["Scheme"] for r in exact] == ["NSD", "SG", "INT"]
    assert all(r["Agreement"] == "60/60" and r["Lossless"] and r["SNN"] == r["ANN"] for r in exact)
    assert all(r["Epochs"] == 1 and r["Quantization"] == "k=1 B=2 ternary" for r in rows)
    assert rows[0]["Network"] == NET
    assert json.loads((run / "run.json").read_text())["training"]["epochs"] == 1


def test_a_finished_run_is_reused_not_redone(tmp_path, shared_datasets):
    spec = small_spec(schemes=["sg"])
    execute(spec, tmp_path, data_dir=str(shared_datasets), progress=False)
    result = tmp_path / "sg" / "sim" / "result.json"
    stamp = result.stat().st_mtime_ns
    again = execute(spec, tmp_path, data_dir=str(shared_datasets), progress=False)
    assert result.stat().st_mtime_ns == stamp
    assert again["training"]["already_done"] is True


def test_full_precision_runs_report_no_snn(tmp_path, shared_datasets):
    spec = small_spec(full_precision=True, ternary=False)
    record = execute(spec, tmp_path, data_dir=str(shared_datasets), progress=False)
    assert record["simulations"] == []
    (row,) = report_rows([tmp_path])
    assert row["Quantization"] == "Full-precision" and row["SNN"] is None and row["Scheme"] == "-"
    assert "| Full-precision | 4C5-P2-8C5-P2-16 | mnist | 1 | - |" in markdown_table([row])


def test_sweep_runs_the_grid_once(tmp_path, shared_datasets):
    spec = small_spec(schemes=["sg"], ternary=False)
    grid = parse_grid(["k=0,1", "B=1"])
    assert grid == {"k": [0, 1], "B": [1]}
    sweep(spec, grid, tmp_path, data_dir=str(shared_datasets), progress=False)
    cells = sorted(p.parent.name for p in tmp_path.glob("*/run.json"))
    assert cells == ["k=0-B=1", "k=1-B=1"]
    stamps = {p: p.stat().st_mtime_ns for p in tmp_path.glob("*/run.json")}
    sweep(spec, grid, tmp_path, data_dir=str(shared_datasets), progress=False)
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    with pytest.raises(QsnnError) as refused:  # the same folder, other options: not silently reused
        sweep(small_spec(schemes=["sg"], ternary=False, net="4C5-P2-8"), grid, tmp_path, progress=False)
    assert str(refused.value) == (
        f"{tmp_path / 'k=0-B=1'} already holds a run made with net='4C5-P2-8C5-P2-16' (asked '4C5-P2-8'); "
        "resume with the same options or use another --out"
    )
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    rows = report_rows([tmp_path])
    assert [r["Quantization"] for r in rows] == ["k=0 B=1", "k=1 B=1"]
    assert (tmp_path / "report.md").read_text().count("| SG |") == 2


def test_bad_grids_and_reports_are_explained(tmp_path):
    with pytest.raises(QsnnError, match="bad grid item 'k': write NAME=V1,V2"):
        parse_grid(["k"])
    with pytest.raises(QsnnError, match="cannot sweep over 'lr'"):
        parse_grid(["lr=1,2"])
    with pytest.raises(QsnnError, match="B must be an integer from 1 to 64 or 'none', got 'x'"):
        parse_grid(["B=x"])
    with pytest.raises(QsnnError, match="no run.json under"):
        report_rows([tmp_path])
    for items, message in [
        (["ternary=maybe"], "bad grid item 'ternary=maybe': ternary takes true or false"),
        (["k=1", "k=2"], "--grid k is given twice; give all its values in one item, e.g. k=0,1"),
        (["scheme=sg", "schemes=nsd"], "--grid schemes is given twice; give all its values in one item, e.g. schemes=0,1"),
        (["k=1,,2"], "bad grid item 'k=1,,2': write NAME=V1,V2 (e.g. k=0,1,2 or B=1,2,none), no empty values"),
        (["B=1,1"], "bad grid item 'B=1,1': a value is given twice"),
        (["noise=0.1,0.10"], "bad grid item 'noise=0.1,0.10': a value is given twice"),
        (["k=1,01"], "bad grid item 'k=1,01': a value is given twice"),
        (["noise=x"], "bad grid item 'noise=x': noise takes ratios between 0 and 1"),
    ]:
        with pytest.raises(QsnnError) as refused:
            parse_grid(items)
        assert str(refused.value) == message
    assert parse_grid(["ternary=true,no"]) == {"ternary": [True, False]}
    checkpoint = small_spec(checkpoint="some.pt")
    with pytest.raises(QsnnError) as refused:
        sweep(checkpoint, parse_grid(["k=0,1", "noise=0,0.1"]), tmp_path / "s", progress=False)
    assert str(refused.value) == (
        "--grid k needs training, but --checkpoint fixes the trained net; "
        "sweep over schemes, noise or seed with it, or drop --checkpoint"
    )
    assert not (tmp_path / "s").exists()


def test_a_damaged_run_record_is_named_in_the_report(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "run.json").write_text('{"spec": {"dataset": "mnist"}, "simulations": [')
    with pytest.raises(QsnnError) as refused:
        report_rows([tmp_path])
    assert str(refused.value) == (
        f"{run / 'run.json'} is damaged: not valid JSON (Expecting value, line 1); "
        "re-create it with the command that wrote it"
    )
    (run / "run.json").write_text(json.dumps({"spec": {"dataset": "mnist"}, "simulations": [{"result": "r.json"}]}))
    (run / "r.json").write_text(json.dumps({"scheme": "nsd"}))
    with pytest.raises(QsnnError) as refused:
        report_rows([tmp_path])
    assert str(refused.value) == (
        f"{run / 'run.json'} or a result it names is incomplete (KeyError: 'per_image'); re-run `qsnn run` into {run}"
    )


def test_command_line_run_and_report(tmp_path, shared_datasets, capsys):
    out = tmp_path / "cli"
    argv = [
        "run", "--net", NET, "--dataset", "mnist", "--k", "1", "--B", "1", "--epochs", "1",
        "--train-limit", "400", "--batch-size", "100", "--limit", "40", "--scheme", "sg,nsd",
        "--data-dir", str(shared_datasets), "--out", str(out), "--quiet",
    ]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert printed.count("| k=1 B=1 |") == 2 and f"report, figures and results in {out}" in printed
    assert main(["report", str(out), "-o", str(tmp_path / "rep")]) == 0
    assert (tmp_path / "rep" / "report.csv").read_text().splitlines()[0].startswith(
        "Quantization,Network,Dataset,Epochs,Scheme,Noise,ANN,SNN,T (paper),T_lossless,Agreement"
    )
    capsys.readouterr()
    pid = os.getpid()
    for command, folder in (("report", tmp_path / "rep"), ("plot", tmp_path / "figures")):
        with folder_lock(folder):  # another qsnn process writes there: refused, nothing written
            assert main([command, str(out), "-o", str(folder)]) == 2
        assert capsys.readouterr().err.strip() == f"qsnn: error: {in_use(folder, pid, '-o')}"
    assert not (tmp_path / "figures").exists()
    assert main(["plot", str(out), "-o", str(tmp_path / "figures")]) == 0
    assert sorted(p.suffix for p in (tmp_path / "figures").iterdir() if p.name != ".qsnn.lock") == sorted(
        Path(line).suffix for line in capsys.readouterr().out.splitlines()
    )
    assert main(["run", "--net", NET]) == 2
    assert "give --net and --dataset (or --checkpoint)" in capsys.readouterr().err


@pytest.mark.skipif(os.environ.get("QSNN_SKIP_EMBEDDED") == "1", reason="embedded models not wanted")
def test_default_run_uses_the_embedded_models_offline(tmp_path, monkeypatch):
    from qsnn.pipeline import MODELS, run_default

    monkeypatch.setenv("QSNN_DATA", str(tmp_path / "nothing-here"))
    records = run_default(tmp_path, progress=False, test_limit=100)
    names = [r["spec"]["name"] for r in records]
    manifest = json.loads((MODELS / "manifest.json").read_text())
    assert names == [m["name"] for m in manifest["models"]]
    rows = report_rows([tmp_path])
    assert sorted(r["Scheme"] for r in rows) == ["INT", "NSD", "SG"]
    assert all(r["Agreement"] == "100/100" and r["Lossless"] for r in rows)
    assert Path(tmp_path / "plots" / "accuracy.png").exists()  # one set of figures, with every run
    assert not any((tmp_path / name / "plots").exists() for name in names)
    ours = {r["Scheme"]: r for r in rows}
    paper = {r["Scheme"]: r for r in report_rows([tmp_path], "paper")}
    for scheme in ("NSD", "SG", "INT"):  # each convention's SOPs beside the other's
        assert paper[scheme]["SOPs/img (qsnn)"] == ours[scheme]["SOPs/img"]
        assert ours[scheme]["SOPs/img (paper)"] == paper[scheme]["SOPs/img (paper)"]
    assert paper["NSD"]["SOPs/img (paper)"] == ours["NSD"]["SOPs/img"]  # the NSD code counts as qsnn does
    assert paper["SG"]["SOPs/img (paper)"] > ours["SG"]["SOPs/img"]  # twice, less the output accumulator
    assert (paper["NSD"]["ANN ops/img (paper)"], paper["SG"]["ANN ops/img (paper)"]) == (7_186_200, 14_548_992)
    assert "Energy SNN/ANN (paper)" in paper["SG"] and "Energy SNN/ANN" in ours["SG"]
    for result in tmp_path.rglob("result.json"):  # results written before the papers' conventions were
        older = json.loads(result.read_text())
        del older["paper_convention"]
        result.write_text(json.dumps(older))
    assert all(row["SOPs/img (paper)"] is None for row in report_rows([tmp_path]))  # (N/A)
    with pytest.raises(QsnnError, match="written before qsnn recorded the papers' conventions; simulate it again"):
        report_rows([tmp_path], "paper")


def test_results_are_reused_only_for_the_same_question(tmp_path, monkeypatch):
    """A result made for other images (or steps, noise, checkpoint) is recomputed, and
    run records point at their results relative to the run folder, from any directory."""
    from qsnn.data.readers import embedded_mnist_test
    from qsnn.pipeline import MODELS

    first = RunSpec(net="x", dataset="mnist", checkpoint=str(MODELS / "sg-lenet-k1B2.pt"), schemes=["sg"], test_limit=20)
    execute(first, tmp_path / "run", progress=False, test_set=embedded_mnist_test())
    execute(dataclasses.replace(first, test_limit=30), tmp_path / "run", progress=False, test_set=embedded_mnist_test())
    (row,) = report_rows([tmp_path / "run"])
    assert row["Agreement"] == "30/30"
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run["simulations"][0]["result"] == "sg/sim/result.json"
    monkeypatch.chdir(tmp_path.parent)
    (row,) = report_rows([Path(tmp_path.name) / "run"])
    assert row["Agreement"] == "30/30"


def test_sweep_cells_run_as_separate_jobs_but_never_twice(tmp_path, shared_datasets, monkeypatch):
    import qsnn.pipeline as pipeline
    from qsnn.pipeline import MODELS
    from qsnn.report import plots

    monkeypatch.setattr(plots, "plot_runs", lambda runs, out: [])  # (figures are not the point: seconds)
    spec = RunSpec(net="x", dataset="mnist", checkpoint=str(MODELS / "sg-lenet-k1B2.pt"), schemes=["sg"], test_limit=20)
    grid = parse_grid(["noise=0,0.1"])
    data = dict(data_dir=str(shared_datasets), progress=False)
    pid = os.getpid()
    with folder_lock(tmp_path / "noise=0.1"):  # another job runs this cell
        sweep(spec, parse_grid(["noise=0"]), tmp_path, **data)  # another cell runs meanwhile
        with pytest.raises(QsnnError) as refused:
            sweep(spec, grid, tmp_path, **data)
        assert str(refused.value) == in_use(tmp_path / "noise=0.1", pid)
    stamp = (tmp_path / "noise=0" / "run.json").stat().st_mtime_ns
    records = sweep(spec, grid, tmp_path, **data)
    assert [r["spec"]["name"] for r in records] == ["noise=0", "noise=0.1"]
    assert (tmp_path / "noise=0" / "run.json").stat().st_mtime_ns == stamp  # done before: skipped
    monkeypatch.setattr(pipeline, "SUMMARY_WAIT", 0.2)
    with folder_lock(tmp_path):  # another sweep writes the report: waited for, then refused
        with pytest.raises(QsnnError) as refused:
            sweep(spec, grid, tmp_path, **data)
        assert str(refused.value) == in_use(tmp_path, pid)
    with folder_lock(tmp_path / "run"):
        with pytest.raises(QsnnError) as refused:
            execute(spec, tmp_path / "run", **data)
        assert str(refused.value) == in_use(tmp_path / "run", pid)
    assert dot_files(tmp_path) == []
    assert not (tmp_path / "run").exists()


def test_a_sweep_as_one_job_per_cell(tmp_path, shared_datasets, monkeypatch, capsys):
    """`qsnn sweep ... --list-cells` prints one command per cell; each, run on its own
    (--cell N), makes only its cell's folder and no sweep files; the sweep without --cell
    then finds every cell done, runs nothing again and writes sweep.json and the report."""
    from qsnn.pipeline import MODELS
    from qsnn.report import plots

    monkeypatch.setattr(plots, "plot_runs", lambda runs, out: [])  # (figures are not the point: seconds)
    out = tmp_path / "sweep"
    argv = ["sweep", "--checkpoint", str(MODELS / "sg-lenet-k1B2.pt"), "--scheme", "sg", "--limit", "20",
            "--data-dir", str(shared_datasets), "--grid", "noise=0,0.1", "--grid", "seed=0,1", "--out", str(out),
            "--quiet"]
    assert main([*argv, "--list-cells"]) == 0
    lines = capsys.readouterr().out.splitlines()
    names = ["noise=0-seed=0", "noise=0-seed=1", "noise=0.1-seed=0", "noise=0.1-seed=1"]
    assert lines == [
        f"qsnn {' '.join(argv)} --cell {number}  # {out / name}" for number, name in enumerate(names, 1)
    ]
    assert not out.exists()
    assert main([*argv, "--cell", "3"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["noise=0.1-seed=0"]
    assert "cell 3 done" in capsys.readouterr().out
    stamp = (out / "noise=0.1-seed=0" / "run.json").stat().st_mtime_ns
    for number in (1, 2, 4):
        assert main([*argv, "--cell", str(number)]) == 0
    assert not (out / "sweep.json").exists()
    assert main(argv) == 0
    assert sorted(p.name for p in out.iterdir() if p.is_dir() and p.name != "plots") == names
    assert (out / "noise=0.1-seed=0" / "run.json").stat().st_mtime_ns == stamp  # not run again
    assert [run["name"] for run in json.loads((out / "sweep.json").read_text())["runs"]] == names
    assert (out / "report.md").read_text().count("| SG |") == 4
    assert main([*argv, "--cell", "5"]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == "qsnn: error: --cell 5 is not in the grid: its cells are 1 to 4"
