"""Run many (train + measure) jobs: local processes by default, one single-threaded process each.

Small models train faster single-threaded (a 0.18M-parameter MLP: 9 ms per step on one thread,
32 ms on two, on a 2-core CPU), so ``workers`` processes with
``threads`` torch threads each beat one process using every core. Progress of every job is sent
back through a queue and shown as one tqdm bar per job.
"""

from __future__ import annotations

import functools
import multiprocessing as mp
import os
import queue as queue_mod
import traceback
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass, replace
from pathlib import Path

from ..io import read_json
from .ensemble import train_ensemble
from .evaluate import EvalConfig, measure
from .timescales import TimeRules, tau_mem
from .training import TrainConfig, list_checkpoints, train

__all__ = ["Job", "default_workers", "run_job", "run_jobs"]


@dataclass(frozen=True)
class Job:
    """Train then evaluate one run, or several runs of one architecture as a vectorized ensemble."""

    name: str
    """Shown on the progress bar and in error messages."""
    train: tuple[TrainConfig, ...]
    """One configuration per run (two or more are trained together by :func:`train_ensemble`)."""
    eval: EvalConfig
    """How every checkpoint of every run is evaluated."""
    run_dirs: tuple[str, ...]
    """One run folder per configuration."""
    device: str = "cpu"
    """Where the job trains and samples (not part of the runs' configuration)."""
    group_dir: str | None = None
    """Folder of the ensemble's resume state (needed with two or more runs)."""
    max_steps: int | None = None
    """Runs that have not memorized at the end of their budget are extended (doubled) up to this."""
    until_f_mem: float = 0.0
    """Extend also until f_mem at the last checkpoint reaches this level."""
    rules: TimeRules | None = None
    """How tau_mem is read (default rules if None)."""

    @property
    def steps(self) -> int:
        return self.train[0].steps


def default_workers(jobs: int) -> int:
    return max(1, min(jobs, os.cpu_count() or 1))


def run_job(job: Job, threads: int = 1, q=None) -> dict:
    """Train then evaluate one job (resuming whatever it already did); returns the metric records."""
    import torch

    torch.set_num_threads(threads)

    def report(stage: str):
        return (lambda i, total: q.put((job.name, stage, i, total))) if q is not None else None

    if len(job.train) > 1 and job.group_dir is None:
        raise ValueError(f"job {job.name} trains {len(job.train)} runs together and needs a group_dir")
    cfgs = list(job.train)
    grown = max([cfgs[0].steps, *(_saved_steps(Path(d)) for d in job.run_dirs)])
    if grown > cfgs[0].steps:  # a run extended before an interruption resumes at its extended budget
        cfgs = [replace(c, steps=grown) for c in cfgs]
    while True:
        if len(cfgs) == 1:
            train(cfgs[0], job.run_dirs[0], progress=report("train"), device=job.device)
        else:
            train_ensemble(cfgs, job.run_dirs, str(job.group_dir), progress=report("train"), device=job.device)
        records = []
        total = len(cfgs) * len(list_checkpoints(Path(job.run_dirs[0])))
        prog = report("measure")
        for i, (cfg, run_dir) in enumerate(zip(cfgs, job.run_dirs)):
            member_progress = None if prog is None else functools.partial(_offset, prog, i * total // len(cfgs), total)
            records.append(measure(cfg, job.eval, run_dir, progress=member_progress, device=job.device))
        steps = cfgs[0].steps
        if job.max_steps is None or steps >= job.max_steps or all(_finished(r, job) for r in records):
            break
        cfgs = [replace(c, steps=min(2 * steps, job.max_steps)) for c in cfgs]
    return {"name": job.name, "records": records}


def _saved_steps(run_dir: Path) -> int:
    """The budget a run folder was last trained to (0 for a new folder)."""
    path = run_dir / "config.json"
    return int(read_json(path).get("steps", 0)) if path.exists() else 0


def _finished(records: list[dict], job: Job) -> bool:
    """Whether a run has measured what it is trained for: tau_mem, and f_mem >= until_f_mem at its end."""
    rules = job.rules if job.rules is not None else TimeRules()
    pts = sorted(records, key=lambda r: r["step"])
    reached = tau_mem([r["step"] for r in pts], [r["f_mem_ci"][0] for r in pts], rules) is not None
    return bool(pts) and reached and pts[-1]["f_mem"] >= job.until_f_mem


def _offset(prog: Callable[[int, int], None], done: int, total: int, i: int, _: int) -> None:
    prog(done + i, total)


def _worker(job: Job, threads: int, q) -> dict:
    try:
        return run_job(job, threads, q)
    except Exception as e:  # keep the message readable across the process boundary
        raise RuntimeError(
            f"job {job.name} ({', '.join(job.run_dirs)}) failed: {type(e).__name__}: {e}\n{traceback.format_exc()}"
        ) from None


def run_jobs(
    jobs: list[Job], workers: int | None = None, threads: int = 1, show_progress: bool = True
) -> dict[str, dict]:
    """Run ``jobs`` on ``workers`` processes (0 or 1 = in this process); results keyed by job name.

    A failed job does not stop the others; its error is raised after all finished, and its run
    folder keeps what it wrote (rerunning resumes it).
    """
    from tqdm.auto import tqdm

    workers = default_workers(len(jobs)) if workers is None else int(workers)
    bars = {
        j.name: tqdm(
            total=j.steps,
            desc=f"{j.name} train",
            position=i,
            leave=True,
            disable=not show_progress,
            dynamic_ncols=True,
        )
        for i, j in enumerate(jobs)
    }

    stages = {j.name: "train" for j in jobs}

    def update(msg) -> None:
        name, stage, i, total = msg
        bar = bars[name]
        if stage != stages[name]:
            stages[name] = stage
            bar.reset(total=total)
            bar.set_description(f"{name} {stage}")
        bar.n = i
        bar.refresh()

    results, errors = {}, []
    if workers <= 1:

        class _Direct:
            def put(self, msg):
                update(msg)

        for j in jobs:
            try:
                results[j.name] = run_job(j, threads, _Direct())
            except Exception as e:
                errors.append(f"job {j.name} ({', '.join(j.run_dirs)}) failed: {type(e).__name__}: {e}")
    else:
        ctx = mp.get_context("spawn")
        with ctx.Manager() as manager:
            q = manager.Queue()
            with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
                futures = {pool.submit(_worker, j, threads, q): j for j in jobs}
                pending = set(futures)
                while pending:
                    done, pending = wait(pending, timeout=0.2, return_when=FIRST_COMPLETED)
                    while True:
                        try:
                            update(q.get_nowait())
                        except queue_mod.Empty:
                            break
                    for f in done:
                        try:
                            res = f.result()
                            results[res["name"]] = res
                        except Exception as e:
                            errors.append(str(e))
    for b in bars.values():
        b.close()
    if errors:
        raise RuntimeError(
            "some runs failed (their folders keep their progress; rerun to resume):\n" + "\n".join(errors)
        )
    return results
