"""diffmem.validation: what each constraint accepts and refuses, the messages it builds, and the
messages of every configuration that states its checks with it."""

from __future__ import annotations

import math
import re
import subprocess
import sys
from dataclasses import dataclass

import numpy as np
import pytest

from diffmem.validation import Each, Integer, Interval, OneOf, Optional, Satisfies, check, show


@pytest.mark.parametrize(
    "constraint, good, bad",
    [
        (Interval(0, 1), [1e-9, 0.5, np.float64(0.99)], [0, 1, -0.1, math.nan, "0.5", None]),
        (Interval(0, 1, closed="left"), [0, 0.999], [1, 1.0, -1e-12]),
        (Interval(0, 1, closed="right"), [1, 0.5], [0, 1.01]),
        (Interval(0, 1, closed="both"), [0, 1], [-0.01, 1.01]),
        (Interval(0), [1e-300, math.inf], [0, -1, math.nan]),
        (Interval(0, finite=True), [2.5, 1], [math.inf, 0, math.nan]),
        (Interval(high=3, closed="right"), [-math.inf, 3], [3.5]),
        (Integer(min=1), [1, 2.0, np.int64(5)], [0, -3, 1.5, math.nan, math.inf, "2", None]),
        (Integer(min=2, max=4), [2, 3, 4], [1, 5]),
        (Integer(min=1, odd=True), [1, 3, 5.0], [2, 0, -1]),
        (Integer(min=0), [0, 7], [-1]),
        (OneOf("a", "b"), ["a", "b"], ["c", None, 1]),
        (OneOf(1, 2), [1, 2], [True, 1.5]),
        (Optional(Integer(min=2)), [None, 2], [1, 1.5]),
        (Each(Interval(0, 1)), [(0.5,), [0.1, 0.9]], [(), (0.5, 1.0), 0.5, "ab"]),
        (Each(Interval(0), min_len=2, increasing=True), [(1, 2), (0.5, 3.0, 4.0)], [(1,), (2, 1), (1, 1), (0, 1)]),
        (Satisfies(bool, text="be non-empty"), ["x", 1], ["", 0]),
    ],
)
def test_constraints_accept_and_refuse(constraint, good, bad):
    assert all(constraint.accepts(v) for v in good), [v for v in good if not constraint.accepts(v)]
    assert not any(constraint.accepts(v) for v in bad), [v for v in bad if constraint.accepts(v)]


def test_descriptions():
    assert Interval(0, 1).describe() == "lie in (0, 1)"
    assert Interval(0, 1, closed="left", what="a decay").describe() == "be a decay in [0, 1)"
    assert Interval(0.5, 2.25, closed="both").describe() == "lie in [0.5, 2.25]"
    assert Interval(0).describe() == "be positive"
    assert Interval(0, closed="left").describe() == "be >= 0"
    assert Interval(1).describe() == "be > 1"
    assert Interval(high=3).describe() == "be < 3"
    assert Interval(0, finite=True).describe() == "be a finite number > 0"
    assert Integer(min=1).describe() == "be a positive integer"
    assert Integer(min=3).describe() == "be an integer >= 3"
    assert Integer(min=1, max=9).describe() == "be an integer in [1, 9]"
    assert Integer(min=1, odd=True).describe() == "be an odd positive integer"
    assert OneOf("x").describe() == "be 'x'"
    assert OneOf("a", "b", "c").describe() == "be 'a', 'b' or 'c'"
    assert Each(Integer(min=2), text="be integers >= 2").describe() == "be integers >= 2"
    assert show("a") == "'a'" and show(0.5) == "0.5" and show((1, 2)) == "(1, 2)"


@dataclass(frozen=True)
class _Cfg:
    rate: float = 0.5
    kind: str = "a"
    sizes: tuple[int, ...] = (2, 3)
    max_rows: int = 10


def test_check_builds_one_message_shape_and_stops_at_the_first_problem():
    rules = {
        "rate": Interval(0, 1, hint="0.5 is common"),
        "kind": OneOf("a", "b"),
        "sizes": Each(Integer(min=2), each="size"),
        "max_rows": (Integer(min=1), Integer(max=100, message="{label}={value} is too many rows; use at most 100")),
    }
    check(_Cfg(), rules)
    cases = [
        (_Cfg(rate=2.0), "rate must lie in (0, 1) (0.5 is common), got 2.0"),
        (_Cfg(rate=2.0, kind="z"), "rate must lie in (0, 1) (0.5 is common), got 2.0"),  # the first field first
        (_Cfg(kind="z"), "kind must be 'a' or 'b', got 'z'"),
        (_Cfg(sizes=(2, 1)), "every size must be an integer >= 2, got (2, 1)"),
        (_Cfg(max_rows=0), "max_rows must be a positive integer, got 0"),
        (_Cfg(max_rows=500), "max_rows=500 is too many rows; use at most 100"),
    ]
    for cfg, message in cases:
        with pytest.raises(ValueError, match="^" + re.escape(message) + "$"):
            check(cfg, rules)
    with pytest.raises(ValueError, match=re.escape("--max-rows must be a positive integer (got 0)")):
        check(_Cfg(max_rows=0), rules, label="--{flag}", got=" (got {value})")
    with pytest.raises(ValueError, match=re.escape("_Cfg.kind must be 'a' or 'b', got 'z'")):
        check(_Cfg(kind="z"), rules, label="{cls}.{name}")
    with pytest.raises(ValueError, match=re.escape("sizes must hold at least 1 value, got ()")):
        check(_Cfg(sizes=()), {"sizes": Each(Integer(min=2))})
    with pytest.raises(ValueError, match=re.escape("every value of sizes must be an integer >= 2, got (1,)")):
        check(_Cfg(sizes=(1,)), {"sizes": Each(Integer(min=2))})
    with pytest.raises(ValueError, match=re.escape("sizes must be strictly increasing, got (3, 2)")):
        check(_Cfg(sizes=(3, 2)), {"sizes": Each(Integer(min=2), increasing=True)})


def _configs():
    from diffmem.dynamics.evaluate import EvalConfig
    from diffmem.dynamics.study import StudyConfig
    from diffmem.dynamics.timescales import TimeRules
    from diffmem.dynamics.training import TrainConfig
    from diffmem.external import MeasureConfig
    from diffmem.monitor import MonitorConfig
    from diffmem.theory.run import DynamicsConfig, PhaseConfig, SpectrumConfig

    return {
        c.__name__: c
        for c in (
            TrainConfig,
            EvalConfig,
            StudyConfig,
            TimeRules,
            MonitorConfig,
            MeasureConfig,
            SpectrumConfig,
            DynamicsConfig,
            PhaseConfig,
        )
    }


# the whole message for one bad value of each configuration (the hints included)
MESSAGES = [
    ("TrainConfig", {"optimizer": "rmsprop"}, "optimizer must be 'adam' or 'sgd', got 'rmsprop'"),
    ("TrainConfig", {"model": "vit"}, "model must be 'mlp' or 'unet', got 'vit'"),
    ("TrainConfig", {"checkpoints": 0}, "checkpoints must be a positive integer, got 0"),
    ("TrainConfig", {"ema": 1.0}, "ema must be a decay in [0, 1) (0 turns it off; 0.999 is common), got 1.0"),
    ("TrainConfig", {"lr": -1.0}, "lr must be positive, got -1.0"),
    ("TrainConfig", {"n": 10, "batch_size": 100}, "batch_size must be in [1, n=10] (or any positive size with"),
    ("TrainConfig", {"steps": 10, "budget_base": 20}, "budget_base must lie in [1, steps=10], got 20"),
    ("EvalConfig", {"sampler": "euler"}, "sampler must be 'ddim' or 'ddpm', got 'euler'"),
    ("EvalConfig", {"samples": 1}, "samples must be an integer >= 2, got 1"),
    ("EvalConfig", {"quality": "fid"}, "quality must be 'auto', 'frechet' or 'kid', got 'fid'"),
    ("StudyConfig", {"sizes": (1, 8)}, "sizes must be integers >= 2, got (1, 8)"),
    ("StudyConfig", {"sizes": (8, 8)}, "sizes must be distinct, got (8, 8)"),
    ("StudyConfig", {"ks": (0.5, 1.5)}, "every k must lie in (0, 1), got (0.5, 1.5)"),
    ("StudyConfig", {"collapse_levels": ()}, "every collapse level must lie in (0, 1), got ()"),
    (
        "StudyConfig",
        {"max_steps_per_n": 0.0},
        "max_steps_per_n must be positive (set it to steps_per_n to never extend), got 0.0",
    ),
    ("StudyConfig", {"until_f_mem": 1.0}, "until_f_mem must lie in [0, 1), got 1.0"),
    ("TimeRules", {"gen_smooth": 4}, "gen_smooth must be an odd positive integer, got 4"),
    ("TimeRules", {"gen_fraction": 1.0}, "gen_fraction must lie in (0, 1), got 1.0"),
    ("MonitorConfig", {"window": 2}, "MonitorConfig.window must be an integer >= 3 (a line's fit), got 2"),
    ("MonitorConfig", {"k": 0.0}, "MonitorConfig.k must lie in (0, 1) (the paper uses 1/3), got 0.0"),
    ("MonitorConfig", {"samples": 30_000}, "MonitorConfig.samples=30000 is more than the monitor's budget of 20000"),
    ("MeasureConfig", {"samples": 200_000}, "--samples 200000 is more than the maximum of 100000"),
    ("MeasureConfig", {"k": 1.0}, "k must lie in (0, 1) (the paper uses 1/3), got 1.0"),
    ("MeasureConfig", {"schedule": "cosine"}, "schedule must be 'linear' or 'scaled_linear', got 'cosine'"),
    ("MeasureConfig", {"space": ""}, "space must be 'pixels', the path of a TorchScript embedding network or"),
    ("MeasureConfig", {"pixel_range": "1"}, "pixel range '1' must be two numbers LO,HI"),
    ("SpectrumConfig", {"t": -0.1}, "--t must be a finite number > 0 (got -0.1)"),
    ("SpectrumConfig", {"sigma_x": math.inf}, "--sigma-x must be a finite number > 0 (got inf)"),
    ("SpectrumConfig", {"n_points": 4}, "--n-points must be an integer >= 10 (got 4)"),
    ("SpectrumConfig", {"simulate": True, "d": 1}, "--d must be an integer >= 2 (got 1)"),
    ("DynamicsConfig", {"psi_n": (4.0, 0.0)}, "--psi-n must be one or more numbers > 0 (got (4.0, 0.0))"),
    ("DynamicsConfig", {"method": "lu"}, "--method must be 'gaussian_equivalent' or 'exact' (got 'lu')"),
    ("DynamicsConfig", {"tau_min_ratio": 1e3}, "--tau-min-ratio must be smaller than --tau-max-ratio"),
    ("PhaseConfig", {"psi_n": (4.0, 2.0)}, "--psi-n must be at least two increasing numbers > 0 (got (4.0, 2.0))"),
    ("PhaseConfig", {"taus": (-1.0,)}, "--taus must be numbers >= 0 (inf for the end of training) (got (-1.0,))"),
]


@pytest.mark.parametrize("name, bad, message", MESSAGES, ids=[f"{m[0]}-{next(iter(m[1]))}" for m in MESSAGES])
def test_every_configuration_refuses_with_its_message(name, bad, message):
    cls = _configs()[name]
    cls().validate()  # the defaults are valid
    with pytest.raises(ValueError, match="^" + re.escape(message)):
        cls(**bad).validate()


def test_configuration_modules_stay_light():
    code = (
        "import sys\n"
        "import diffmem.validation, diffmem.external.config, diffmem.monitor.config\n"
        "print(sorted(m for m in ('torch', 'numpy') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
