"""End to end: `diffmem dynamics` on a tiny configuration writes the contract files and resumes."""

import json
import os

import pytest

from diffmem.cli import main
from setting_checks import same_checkpoints

TINY = [
    "--sizes",
    "16",
    "32",
    "--steps-per-n",
    "20",
    "--max-steps-per-n",
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


def test_other_analysis_rules_reanalyse_without_retraining(study, capsys):
    import json

    run = study / "runs" / "n_00032"
    mtimes = {p: p.stat().st_mtime_ns for p in (run / "checkpoints").glob("*.safetensors")}
    assert main(["dynamics", "--out", str(study), *TINY, "--gen-smooth", "1", "--no-gen-before-mem"]) == 0
    assert {p: p.stat().st_mtime_ns for p in (run / "checkpoints").glob("*.safetensors")} == mtimes
    res = json.loads((study / "results.json").read_text())
    assert res["rules"]["gen_smooth"] == 1 and res["rules"]["gen_before_mem"] is False
    assert json.loads((study / "config.json").read_text())["rules"]["gen_smooth"] == 1
    assert main(["dynamics", "--out", str(study), *TINY]) == 0  # and back to the defaults
    assert json.loads((study / "results.json").read_text())["rules"]["gen_smooth"] == 3


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


def test_results_json_new_fields(study):
    res = json.loads((study / "results.json").read_text())
    assert [r["subset"] for r in res["runs"]] == [0, 0]
    assert set(res["collapse"]) >= {"alpha", "alpha_ci", "levels", "levels_used"}
    assert set(res["by_k"]) == {"0.25", "0.3333", "0.5"}
    for b in res["by_k"].values():
        assert len(b["tau_mem"]) == 2 and set(b) >= {"exponent", "exponent_ci"}
    assert set(res["tau_gen_fit"]) >= {"exponent", "exponent_ci"}
    assert res["elapsed_seconds"] > 0


def test_by_k_recomputed_from_the_saved_samples(study):
    """tau_mem at k = 1/3 in by_k is the same rule on the same samples as the run's own tau_mem."""
    res = json.loads((study / "results.json").read_text())
    assert res["by_k"]["0.3333"]["tau_mem"] == [r["tau_mem"] for r in res["runs"]]
    # a looser threshold never memorizes later than a stricter one
    for strict, loose in zip(res["by_k"]["0.25"]["tau_mem"], res["by_k"]["0.5"]["tau_mem"]):
        if strict is not None:
            assert loose is not None and loose <= strict


def test_subsets_train_as_an_ensemble_and_are_reported(tmp_path):
    out = tmp_path / "sub"
    args = [a for a in TINY]
    args[args.index("--sizes") + 2] = "24"
    assert main(["dynamics", "--out", str(out), *args, "--subsets", "2"]) == 0
    res = json.loads((out / "results.json").read_text())
    assert [(r["n"], r["subset"]) for r in res["runs"]] == [(16, 0), (16, 1), (24, 0), (24, 1)]
    assert [r["run_dir"] for r in res["runs"]][:2] == ["runs/n_00016_s0", "runs/n_00016_s1"]
    assert (out / "runs" / "n_00016_ensemble" / "state.safetensors").is_file()
    # the two subsets are disjoint training sets: their first checkpoints differ
    from diffmem import io as dio

    a = dio.load_tensors(next((out / "runs" / "n_00016_s0" / "checkpoints").glob("*.safetensors")))[0]
    b = dio.load_tensors(next((out / "runs" / "n_00016_s1" / "checkpoints").glob("*.safetensors")))[0]
    assert any(not (a[k] == b[k]).all() for k in a)

    # --no-ensemble: one job per run, the same runs (to float rounding), each with its own resume state
    sep = tmp_path / "sep"
    assert main(["dynamics", "--out", str(sep), *args, "--subsets", "2", "--no-ensemble"]) == 0
    assert not (sep / "runs" / "n_00016_ensemble").exists()
    for run in ("n_00016_s0", "n_00016_s1", "n_00024_s0", "n_00024_s1"):
        assert (sep / "runs" / run / "state.safetensors").is_file()
        same_checkpoints(sep / "runs" / run, out / "runs" / run)
    # a folder trained one way is not resumed the other way
    assert main(["dynamics", "--out", str(out), *args, "--subsets", "2", "--no-ensemble"]) == 2


def test_study_bad_input(tmp_path, capsys):
    assert main(["dynamics", "--out", str(tmp_path / "a"), "--sizes", "256", "--subsets", "20", "--quiet"]) == 2
    assert "--subsets 20 needs 5120 training examples" in capsys.readouterr().err
    assert not (tmp_path / "a").exists()
    with pytest.raises(SystemExit):
        main(["dynamics", "--preset", "huge", "--dry-run"])
    assert "invalid choice: 'huge'" in capsys.readouterr().err


def test_full_preset_resumed_with_other_settings_is_refused(tmp_path, capsys):
    from diffmem.config import claim_folder
    from diffmem.dynamics.study import PRESETS

    out = tmp_path / "full"
    claim_folder(out, PRESETS["full"])  # as a started full study leaves it
    assert main(["dynamics", "--preset", "full", "--out", str(out), "--steps-per-n", "10", "--quiet"]) == 2
    assert "another configuration (differs in: steps_per_n)" in capsys.readouterr().err
