"""End to end: `diffmem dynamics` on a tiny configuration writes the contract files and resumes."""

import json
import os

import pytest

from diffmem.cli import main

TINY = [
    "--sizes",
    "16",
    "32",
    "--steps-per-n",
    "20",
    "--min-steps",
    "200",
    "--width",
    "32",
    "--checkpoints",
    "5",
    "--first-checkpoint",
    "20",
    "--eval-samples",
    "64",
    "--eval-sampling-steps",
    "10",
    "--eval-n-boot",
    "200",
    "--workers",
    "1",
    "--quiet",
]


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    out = tmp_path_factory.mktemp("dyn") / "study"
    assert main(["dynamics", "--out", str(out), *TINY]) == 0
    return out


def test_results_json_contract(study):
    res = json.loads((study / "results.json").read_text())
    assert set(res) >= {"config", "runs", "fit"}
    assert set(res["fit"]) >= {"exponent", "exponent_ci", "r2", "tau_mem_over_n"}
    assert [r["n"] for r in res["runs"]] == [16, 32]
    for r in res["runs"]:
        assert set(r) >= {"n", "tau_gen", "tau_mem", "curve"}
        assert len(r["curve"]) >= 4
        for c in r["curve"]:
            assert set(c) >= {"step", "f_mem", "f_mem_ci", "quality", "loss_train", "loss_test"}
            assert c["f_mem_ci"][0] <= c["f_mem"] <= c["f_mem_ci"][1]
    assert res["config"]["sizes"] == [16, 32]


def test_figures_report_and_run_folders(study):
    for f in ("quality_fmem", "collapse", "losses", "timescales", "samples"):
        assert (study / "figures" / f"{f}.png").stat().st_size > 5000
    html = (study / "report.html").read_text()
    assert "data:image/png;base64," in html and "<table>" in html
    run = study / "runs" / "n_00016"
    assert (run / "config.json").is_file() and (run / "metrics.jsonl").is_file()
    assert any((run / "checkpoints").glob("step_*.safetensors"))
    assert any((run / "samples").glob("step_*.npz"))


def test_rerun_resumes_without_redoing_work(study, capsys):
    run = study / "runs" / "n_00032"
    mtimes = {p: p.stat().st_mtime_ns for p in (run / "checkpoints").glob("*.safetensors")}
    lines = (run / "metrics.jsonl").read_text()
    assert main(["dynamics", "--out", str(study), *TINY]) == 0
    assert {p: p.stat().st_mtime_ns for p in (run / "checkpoints").glob("*.safetensors")} == mtimes
    assert (run / "metrics.jsonl").read_text() == lines


def test_other_configuration_in_same_folder_is_refused(study, capsys):
    args = [a if a != "32" else "48" for a in TINY]  # width 32 -> 48 changes the configuration
    assert main(["dynamics", "--out", str(study), *args]) == 2
    assert "another configuration" in capsys.readouterr().err


def test_n_too_large_fails_before_any_work(tmp_path, capsys):
    assert main(["dynamics", "--out", str(tmp_path / "x"), "--sizes", "64", "5000", "--quiet"]) == 2
    assert "use n <=" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_stages_train_measure_sample(tmp_path, capsys):
    run = str(tmp_path / "one")
    common = ["--out", run]
    assert (
        main(["train", *common, "--n", "16", "--width", "32", "--steps", "100", "--checkpoints", "3", "--quiet"]) == 0
    )
    assert (
        main(
            [
                "measure",
                *common,
                "--eval-samples",
                "32",
                "--eval-sampling-steps",
                "5",
                "--eval-n-boot",
                "100",
                "--quiet",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "f_mem" in printed and "100" in printed
    assert main(["sample", *common, "--eval-samples", "8", "--eval-sampling-steps", "5"]) == 0
    import numpy as np

    with np.load(os.path.join(run, "samples", "sampled_step_0000100.npz"), allow_pickle=False) as f:
        assert f["samples"].shape == (8, 1, 8, 8) and f["pixels"].min() >= 0
    assert main(["measure", "--out", str(tmp_path / "nothing")]) == 2
    assert "not a run folder" in capsys.readouterr().err


def test_dry_run_prints_resolved_config(capsys):
    assert main(["dynamics", "--dry-run", "--sizes", "16", "32"]) == 0
    cfg = json.loads(capsys.readouterr().out)
    assert cfg["runs"]["16"]["batch_size"] == 16 and cfg["runs"]["16"]["lr"] == 1e-3
