"""``diffmem measure --model``: models diffmem did not train (TorchScript files and diffusers folders).

The done-criterion: the exact optimal denoiser of an empirical distribution (a TorchScript file) copies
its training set (f_mem >= 0.95 against it) and nothing of a disjoint set of the same data (<= 0.05).
DDIM agrees with diffusers' DDIMScheduler loop on the same noise, including x0 clipping and "trailing"
spacing; bad input gives errors that name the problem and the fix.
"""

import json
import time

import numpy as np
import pytest
import torch

from diffmem import sampling
from diffmem.cli import main
from diffmem.data import digits
from diffmem.external import MeasureConfig, cosine_ratio_test, load_model, measure_model
from diffmem.schedule import linear

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.:DeprecationWarning")


class ExactDenoiser(torch.nn.Module):
    """The optimal eps-predictor of the empirical distribution of ``train`` (model range):
    eps = (x - sqrt(ab) sum_i w_i x_i) / sqrt(1 - ab), w = softmax(-|x - sqrt(ab) x_i|^2 / (2 (1 - ab)))."""

    def __init__(self, train: torch.Tensor, alphas_cumprod: torch.Tensor):
        super().__init__()
        self.register_buffer("data", train.reshape(train.shape[0], -1).float())
        self.register_buffer("ab", alphas_cumprod.float())

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        ab = self.ab[t].reshape(-1, 1)
        xf = x.reshape(x.shape[0], -1)
        diff = xf.unsqueeze(1) - ab.sqrt().unsqueeze(1) * self.data.unsqueeze(0)
        w = torch.softmax(-(diff**2).sum(-1) / (2 * (1 - ab)), dim=1)
        eps = (xf - ab.sqrt() * (w @ self.data)) / (1 - ab).sqrt()
        return eps.reshape(x.shape)


class Smooth(torch.nn.Module):
    """A smooth eps-model (not exact), for comparing samplers."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.register_buffer("w", torch.randn(64, 64, generator=g) * 0.3)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        xf = x.reshape(x.shape[0], -1)
        s = (t.float() / 1000.0).reshape(-1, 1)
        return (0.8 * xf + 0.3 * torch.tanh(xf @ self.w) * (1 + s)).reshape(x.shape)


class OneArg(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


class Cropping(torch.nn.Module):
    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return x[:, :, :4, :4]


class Projection(torch.nn.Module):
    """An embedding network: a fixed random projection of the pixels to 32 dimensions."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(1)
        self.register_buffer("p", torch.randn(64, 32, generator=g))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x.reshape(x.shape[0], -1) - 0.3) @ self.p


def _save(module, path):
    torch.jit.save(torch.jit.script(module), str(path))
    return str(path)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Two disjoint sets of 40 digits (A, B) as .npz, and the exact denoiser of A as TorchScript."""
    root = tmp_path_factory.mktemp("external")
    px = digits().pixels
    perm = torch.randperm(len(px), generator=torch.Generator().manual_seed(0))
    a, b = px[perm[:40]], px[perm[40:80]]
    np.savez(root / "a.npz", images=a.numpy())
    np.savez(root / "b.npz", images=b.numpy())
    exact = _save(ExactDenoiser(2 * a - 1, linear().alphas_cumprod), root / "exact_a.pt")
    return {"root": root, "a": str(root / "a.npz"), "b": str(root / "b.npz"), "exact": exact, "px_a": a, "px_b": b}


# ------------------------------------------------------------------------------ the done-criterion
def test_exact_denoiser_copies_its_training_set_and_nothing_else(files, tmp_path, capsys):
    out = tmp_path / "on_a"
    t0 = time.perf_counter()
    args = ["measure", "--model", files["exact"], "--data", files["a"], "--heldout", files["b"], "--out", str(out)]
    assert main([*args, "--samples", "200", "--loss-gap", "--loss-examples", "40", "--quiet"]) == 0
    assert "f_mem" in capsys.readouterr().out
    rec = json.loads((out / "measure.json").read_text())
    assert rec["f_mem"]["value"] >= 0.95, rec["f_mem"]
    lo, hi = rec["f_mem"]["ci"]
    assert lo <= rec["f_mem"]["value"] <= hi and rec["f_mem"]["level"] == 0.95
    assert rec["samples"] == 200 and rec["k"] == pytest.approx(1 / 3)
    assert rec["model"]["kind"] == "torchscript" and rec["pixel_range"] == [-1.0, 1.0]
    assert rec["schedule"]["source"] == "flags" and rec["schedule"]["kind"] == "linear"
    assert rec["space"] == "pixels" and rec["distance"] == "euclidean"
    assert rec["quality"]["metric"] == "frechet[digits-cnn]" and rec["quality"]["value"] >= 0
    assert rec["sampler"]["eta"] == 0 and rec["sampler"]["steps"] == 50 and rec["sampler"]["clip_x0"] is None
    # the exact denoiser reproduces its training images at small t and not the held-out ones
    assert rec["loss_gap"]["train"] < 0.1 * rec["loss_gap"]["heldout"]
    for key in ("ratios", "quality", "kid", "elapsed_seconds", "data", "heldout", "config", "files"):
        assert key in rec
    with np.load(out / "ratios.npz", allow_pickle=False) as f:
        assert f["ratios"].shape == (200,) and f["nearest"].max() < 40
        assert float((f["ratios"] < 1 / 3).mean()) == pytest.approx(rec["f_mem"]["value"])
    with np.load(out / "samples.npz", allow_pickle=False) as f:
        pix = f["pixels"]
        assert pix.shape == (200, 1, 8, 8) and pix.min() >= 0 and pix.max() <= 1
        # a copied sample is its nearest training image
        near = files["px_a"].numpy()[np.load(out / "ratios.npz")["nearest"]]
        assert np.median(np.abs(pix - near).reshape(200, -1).max(1)) < 1e-3
    for name in ("most_copied.png", "ratios.png", "report.html"):
        assert (out / name).is_file()
    assert "data:image/png;base64," in (out / "report.html").read_text()

    # the same model against a disjoint set of the same data: nothing is a copy of it
    res = measure_model(files["exact"], files["b"], config=MeasureConfig(samples=200))
    assert res.f_mem <= 0.05, res.f_mem
    print(
        f"\nexact denoiser: f_mem vs its training set {rec['f_mem']['value']:.3f} {rec['f_mem']['ci']}, "
        f"vs a disjoint set {res.f_mem:.3f} {res.f_mem_ci} ({time.perf_counter() - t0:.1f} s)"
    )


def test_cosine_space_of_an_embedding_network(files, tmp_path):
    emb = _save(Projection(), tmp_path / "emb.pt")
    res = measure_model(files["exact"], files["a"], config=MeasureConfig(samples=60, sampling_steps=20, space=emb))
    assert res.space == "torchscript:emb.pt" and res.distance == "cosine"
    assert res.f_mem >= 0.9


def test_cosine_ratio_test_is_the_ratio_of_cosine_distances():
    g = np.random.default_rng(0)
    a, b = g.normal(size=(30, 5)), g.normal(size=(12, 5))
    r, idx, d1, _ = cosine_ratio_test(a, 3 * b)
    an = a / np.linalg.norm(a, axis=1, keepdims=True)
    bn = b / np.linalg.norm(b, axis=1, keepdims=True)
    d = 1 - an @ bn.T
    s = np.sort(d, axis=1)
    np.testing.assert_allclose(d1, s[:, 0], atol=1e-12)
    np.testing.assert_allclose(r, s[:, 0] / s[:, 1], atol=1e-12)
    assert (idx == d.argmin(1)).all()
    # the Euclidean ratio of the normalised embeddings is its square root
    e = np.sort(np.linalg.norm(an[:, None] - bn[None], axis=2), axis=1)
    np.testing.assert_allclose(np.sqrt(r), e[:, 0] / e[:, 1], atol=1e-9)


# ---------------------------------------------------------------------- DDIM agrees with diffusers
def _diffusers_loop(sch, eps_fn, x, steps):
    sch.set_timesteps(steps)
    for t in sch.timesteps:
        x = sch.step(eps_fn(x, torch.full((x.shape[0],), int(t), dtype=torch.long)), t, x).prev_sample
    return x


@pytest.mark.parametrize("clip", ["off", "on"])
def test_torchscript_ddim_matches_diffusers_ddim_scheduler(tmp_path, clip):
    diffusers = pytest.importorskip("diffusers")
    path = _save(Smooth(), tmp_path / "smooth.pt")
    cfg = MeasureConfig(samples=6, sampling_steps=10, n_boot=10, clip_sample=clip, seed=3)
    res = measure_model(path, digits().pixels[:20], out=tmp_path / "m", config=cfg)
    ours = torch.from_numpy(np.load(tmp_path / "m" / "samples.npz")["samples"])
    x_T = sampling.randn_per_sample([3 * 1_000_003 + i for i in range(6)], (1, 8, 8))
    sch = diffusers.DDIMScheduler(num_train_timesteps=1000, clip_sample=clip == "on", set_alpha_to_one=True)
    net = torch.jit.load(path)
    ref = _diffusers_loop(sch, net, x_T, 10)
    assert torch.max(torch.abs(ours - ref)) < 1e-4
    assert res.sampler["timesteps"] == [int(t) for t in sch.timesteps]
    if clip == "on":
        assert res.sampler["clip_x0"] == [-1.0, 1.0] and float(ref.abs().max()) <= 1 + 1e-6


# ---------------------------------------------------------------------------------- diffusers folder
def _tiny_unet(diffusers):
    torch.manual_seed(0)
    return diffusers.UNet2DModel(
        sample_size=8,
        in_channels=1,
        out_channels=1,
        block_out_channels=(8, 16),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
        norm_num_groups=4,
    )


@pytest.fixture(scope="module")
def pipe_dir(tmp_path_factory):
    diffusers = pytest.importorskip("diffusers")
    root = tmp_path_factory.mktemp("ddpm")
    pipe = diffusers.DDPMPipeline(
        unet=_tiny_unet(diffusers), scheduler=diffusers.DDPMScheduler(num_train_timesteps=1000)
    )
    pipe.save_pretrained(str(root / "pipe"), safe_serialization=True)
    return root / "pipe"


def test_diffusers_pipeline_end_to_end_by_the_cli(pipe_dir, files, tmp_path, capsys):
    out = tmp_path / "m"
    argv = ["measure", "--model", str(pipe_dir), "--data", "digits", "--heldout", files["b"], "--out", str(out)]
    assert main([*argv, "--samples", "16", "--sampling-steps", "5", "--batch", "8", "--n-boot", "50", "--quiet"]) == 0
    rec = json.loads((out / "measure.json").read_text())
    assert 0 <= rec["f_mem"]["value"] <= 1 and len(rec["f_mem"]["ci"]) == 2
    assert rec["model"]["kind"] == "diffusers-pipeline" and rec["model"]["shape"] == [1, 8, 8]
    assert rec["schedule"]["scheduler"] == "DDPMScheduler" and rec["schedule"]["T"] == 1000
    assert rec["sampler"]["clip_x0"] == [-1.0, 1.0]  # DDPMScheduler's clip_sample=True, as the pipeline would
    assert rec["data"]["n"] == 1797 and rec["quality"]["metric"] == "frechet[digits-cnn]"
    assert (out / "report.html").is_file() and (out / "most_copied.png").is_file()


@pytest.mark.parametrize("spacing, steps", [("leading", 5), ("trailing", 7)])
def test_diffusers_folder_samples_as_its_ddim_scheduler(pipe_dir, tmp_path, spacing, steps):
    """Same noise, same U-Net: our DDIM and diffusers' DDIMScheduler loop (clip_sample from the config)."""
    diffusers = pytest.importorskip("diffusers")
    folder = pipe_dir
    if spacing != "leading":
        folder = tmp_path / "pipe"
        sch = diffusers.DDPMScheduler(num_train_timesteps=1000, timestep_spacing=spacing)
        diffusers.DDPMPipeline(unet=_tiny_unet(diffusers), scheduler=sch).save_pretrained(str(folder))
    model = load_model(folder)
    from diffmem.external.models import sample

    x_T = sampling.randn_per_sample(range(4), (1, 8, 8))
    ours = sample(model, x_T, steps)
    unet = diffusers.UNet2DModel.from_pretrained(str(folder), subfolder="unet", low_cpu_mem_usage=False)
    ddim = diffusers.DDIMScheduler.from_pretrained(str(folder), subfolder="scheduler")
    assert ddim.config.clip_sample
    with torch.no_grad():
        ref = _diffusers_loop(ddim, lambda x, t: unet(x, t).sample, x_T, steps)
    assert torch.max(torch.abs(ours - ref)) < 1e-4


def test_bare_unet_folder_uses_the_schedule_flags(pipe_dir, tmp_path):
    cfg = MeasureConfig(samples=4, sampling_steps=3, n_boot=10, schedule="scaled_linear", T=500)
    res = measure_model(pipe_dir / "unet", "digits", config=cfg)
    assert res.model["kind"] == "diffusers-unet" and res.schedule["source"] == "flags"
    assert res.schedule["T"] == 500 and res.schedule["beta_start"] == 0.00085 and res.sampler["clip_x0"] is None


# ------------------------------------------------------------------------------------ bad input
def _err(capsys, argv):
    assert main(argv) == 2
    return capsys.readouterr().err


def test_bad_input_gives_clear_errors(files, pipe_dir, tmp_path, capsys):
    data = ["--data", files["a"], "--out", str(tmp_path / "o"), "--quiet"]
    # not a diffusers folder
    (tmp_path / "empty").mkdir()
    assert "not a diffusers model folder" in _err(capsys, ["measure", "--model", str(tmp_path / "empty"), *data])
    # TorchScript with the wrong signature, or the wrong output shape
    one = _save(OneArg(), tmp_path / "one.pt")
    assert "forward(x, t)" in _err(capsys, ["measure", "--model", one, *data])
    crop = _save(Cropping(), tmp_path / "crop.pt")
    err = _err(capsys, ["measure", "--model", crop, *data])
    assert "returned shape (1, 1, 4, 4)" in err and "predicted noise" in err
    # a file that is not TorchScript at all
    (tmp_path / "junk.pt").write_bytes(b"not a model")
    assert "not a TorchScript file" in _err(capsys, ["measure", "--model", str(tmp_path / "junk.pt"), *data])
    # training data whose shape is not the model's
    np.savez(tmp_path / "big.npz", images=np.zeros((4, 16, 16), dtype=np.float32))
    err = _err(
        capsys, ["measure", "--model", str(pipe_dir), "--data", str(tmp_path / "big.npz"), "--out", str(tmp_path / "o")]
    )
    assert "have shape (1, 16, 16) but the model generates (1, 8, 8)" in err
    err = _err(
        capsys,
        ["measure", "--model", files["exact"], "--data", str(tmp_path / "big.npz"), "--out", str(tmp_path / "o")],
    )
    assert "failed on one image of the training data (shape (1, 16, 16))" in err
    # a sample budget over the maximum
    assert "more than the maximum of 100000" in _err(
        capsys, ["measure", "--model", files["exact"], *data, "--samples", "200000"]
    )
    # quality or loss gap asked for without held-out images
    assert "--heldout" in _err(capsys, ["measure", "--model", files["exact"], *data, "--features", "pixels"])
    assert "--heldout" in _err(capsys, ["measure", "--model", files["exact"], *data, "--loss-gap"])
    # new flags without --model, --eval-* flags with it, --model without --data
    assert "only apply with --model" in _err(capsys, ["measure", "--out", str(tmp_path), "--samples", "10"])
    err = _err(capsys, ["measure", "--model", files["exact"], *data, "--eval-samples", "10"])
    assert "--eval-samples apply to run folders" in err
    assert "needs --data" in _err(capsys, ["measure", "--model", files["exact"]])
    # a schedule flag that disagrees with the pipeline's scheduler
    assert "drop the flags" in _err(capsys, ["measure", "--model", str(pipe_dir), *data, "--T", "500"])
    assert "seed must be an integer >= 0" in _err(capsys, ["measure", "--model", files["exact"], *data, "--seed", "-1"])
    assert "two numbers" in _err(capsys, ["measure", "--model", files["exact"], *data, "--pixel-range", "0;1"])
    assert not (tmp_path / "o").exists()


def test_bin_only_weights_are_refused_without_unpickling(pipe_dir, tmp_path, capsys):
    folder = tmp_path / "binonly"
    folder.mkdir()
    (folder / "config.json").write_text((pipe_dir / "unet" / "config.json").read_text())
    (folder / "diffusion_pytorch_model.bin").write_bytes(b"\x80\x04 this would be a pickle")
    err = _err(capsys, ["measure", "--model", str(folder), "--data", "digits", "--out", str(tmp_path / "o")])
    assert "only pickled PyTorch weights" in err and "safetensors" in err
    with pytest.raises(ValueError, match="pickled checkpoint"):
        load_model(folder / "diffusion_pytorch_model.bin")


def test_measure_without_model_is_unchanged(tmp_path, capsys):
    assert main(["measure", "--out", str(tmp_path / "nothing")]) == 2
    assert "not a run folder" in capsys.readouterr().err


def test_dry_run_prints_the_resolved_configuration(files, capsys):
    argv = ["measure", "--model", files["exact"], "--data", "digits", "--samples", "7", "--dry-run"]
    assert main([*argv, "--pixel-range", "-1,1", "--seed", "3"]) == 0  # "-1,1" is a value, not a flag
    cfg = json.loads(capsys.readouterr().out)
    assert cfg["config"]["samples"] == 7 and cfg["config"]["pixel_range"] == "-1,1" and cfg["config"]["seed"] == 3
    assert main([*argv, "--pixel-range", "0,1"]) == 0
    assert json.loads(capsys.readouterr().out)["config"]["pixel_range"] == "0,1"


def test_config_and_result_fields_are_documented_and_examples_run():
    import dataclasses
    import doctest
    import importlib

    from diffmem.cliutils import field_docs
    from diffmem.external import MeasureResult

    for cls in (MeasureConfig, MeasureResult):
        missing = [f.name for f in dataclasses.fields(cls) if not field_docs(cls).get(f.name)]
        assert missing == [], f"{cls.__name__} fields without a docstring: {missing}"
    for name in ("diffmem.external.config", "diffmem.external.measure", "diffmem.external.models"):
        assert doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS).failed == 0
