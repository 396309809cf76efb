"""The Stable-Diffusion side of the audit, on a tiny SD-shaped pipeline with random weights built offline.

Reference implementations: the diffusers pipeline itself (encode_prompt, the U-Net called per
branch, the full guided DDIM loop), the VAE called directly, and hand-written preprocessing.
"""

import json
import shutil
import socket
import sys

import numpy as np
import pytest
import torch

diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")

# below the importorskip calls: without diffusers/transformers the module is skipped before these load
from diffmem import sampling  # noqa: E402 - after importorskip
from diffmem.audit.diffusers_adapter import DiffusersModel, load_pipeline_model  # noqa: E402 - after importorskip
from diffmem.audit.manifest import read_manifest  # noqa: E402 - after importorskip
from diffmem.audit.protocol import PromptSpec  # noqa: E402 - after importorskip
from diffmem.audit.sscd import IMAGENET_MEAN, IMAGENET_STD, SSCDSeverity  # noqa: E402 - after importorskip

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.:DeprecationWarning")

SD_BETAS = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")


# ------------------------------------------------------------------------------------- fixtures
def _byte_chars():
    """The 256 printable stand-ins for bytes used by byte-level BPE (GPT-2/CLIP)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for c in cs]


def _tokenizer(folder):
    """A CLIP tokenizer from a small local vocab.json/merges.txt (every byte, a few merges)."""
    chars = _byte_chars()
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": len(chars) + i for i, c in enumerate(chars)})
    merges = ["t h", "th e</w>", "a n", "an d</w>", "c a", "ca t</w>"]
    for m in merges:
        vocab.setdefault("".join(m.split()), len(vocab))
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    return transformers.CLIPTokenizer.from_pretrained(str(folder), model_max_length=77), vocab


@pytest.fixture(scope="module")
def pipe_dir(tmp_path_factory):
    """A Stable-Diffusion-shaped pipeline (16 px images, 4x8x8 latents) with random weights, saved to disk."""
    root = tmp_path_factory.mktemp("sd")
    tok, vocab = _tokenizer(root / "vocab")
    torch.manual_seed(0)
    text = transformers.CLIPTextModel(
        transformers.CLIPTextConfig(
            vocab_size=len(vocab),
            hidden_size=32,
            intermediate_size=37,
            num_attention_heads=4,
            num_hidden_layers=2,
            max_position_embeddings=77,
            bos_token_id=vocab["<|startoftext|>"],
            eos_token_id=vocab["<|endoftext|>"],
            pad_token_id=vocab["<|endoftext|>"],
        )
    )
    unet = diffusers.UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=4,
        norm_num_groups=8,
    )
    vae = diffusers.AutoencoderKL(
        in_channels=3,
        out_channels=3,
        block_out_channels=(16, 32),
        latent_channels=4,
        norm_num_groups=8,
        sample_size=16,
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
    )
    sched = diffusers.DDIMScheduler(**SD_BETAS, clip_sample=False, set_alpha_to_one=True, steps_offset=1)
    pipe = diffusers.StableDiffusionPipeline(
        unet=unet,
        vae=vae,
        text_encoder=text,
        tokenizer=tok,
        scheduler=sched,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    out = root / "pipe"
    pipe.save_pretrained(str(out))
    return out


def _variant(pipe_dir, tmp_path, **scheduler_changes):
    """A copy of the pipeline folder with a changed scheduler configuration (same weights)."""
    d = tmp_path / "variant"
    shutil.copytree(pipe_dir, d)
    cfg_path = d / "scheduler" / "scheduler_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg.update(scheduler_changes)
    cfg_path.write_text(json.dumps(cfg))
    return d


def _reference_pipe(folder):
    p = diffusers.StableDiffusionPipeline.from_pretrained(
        str(folder), local_files_only=True, safety_checker=None, requires_safety_checker=False
    )
    p.set_progress_bar_config(disable=True)
    return p


@pytest.fixture
def offline(monkeypatch):
    """No network: the hub is switched off and any socket connection fails."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")

    def refuse(*a, **k):
        raise OSError("network access attempted in an offline test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


# ------------------------------------------------------------------------------------- loading
def test_load_offline_and_shapes(pipe_dir, offline):
    m = load_pipeline_model(pipe_dir)
    assert isinstance(m, DiffusersModel)
    assert m.latent_shape == (4, 8, 8)
    assert m.resolution == (16, 16)  # sample_size 8 x vae scale 2
    # what the audit calls: both branches at once, pixels to latents and back
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    eps_c, eps_u = m.predict(x, torch.tensor([999.0, 1.0]), "a cat")
    assert eps_c.shape == eps_u.shape == x.shape and eps_c.dtype == x.dtype
    assert (eps_c - eps_u).abs().max() > 0
    z = m.encode(torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(1)))
    assert z.shape == (3, *m.latent_shape)
    img = m.decode(z)
    assert img.shape == (3, 3, 16, 16) and img.min() >= 0 and img.max() <= 1
    assert m.prediction_type == "epsilon"
    info = m.to_dict()
    assert info["T"] == 1000 and info["beta_schedule"] == "scaled_linear" and info["text_max_length"] == 77


def test_schedule_equals_scheduler(pipe_dir):
    m = load_pipeline_model(pipe_dir)
    ref = m.scheduler.alphas_cumprod.double()
    np.testing.assert_allclose(m.schedule.alphas_cumprod.numpy(), ref.numpy(), rtol=2e-6, atol=1e-9)
    betas = np.linspace(0.00085**0.5, 0.012**0.5, 1000) ** 2  # SD's scaled_linear, float64
    np.testing.assert_allclose(m.schedule.alphas_cumprod.numpy(), np.cumprod(1 - betas), rtol=1e-12)
    assert m.schedule.alphas_cumprod.dtype == torch.float64


def test_missing_and_invalid_folders(tmp_path, pipe_dir):
    with pytest.raises(FileNotFoundError, match="no such pipeline folder"):
        load_pipeline_model(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"not a diffusers pipeline folder: it has no model_index\.json"):
        load_pipeline_model(tmp_path / "empty")
    f = tmp_path / "model.safetensors"
    f.write_bytes(b"x")
    with pytest.raises(ValueError, match="is a file, not a diffusers pipeline folder"):
        load_pipeline_model(f)
    broken = tmp_path / "broken"
    shutil.copytree(pipe_dir, broken)
    shutil.rmtree(broken / "unet")
    with pytest.raises(ValueError, match="not a complete diffusers pipeline folder: missing unet/"):
        load_pipeline_model(broken)
    noweights = tmp_path / "noweights"
    shutil.copytree(pipe_dir, noweights)
    for w in (noweights / "vae").glob("*.safetensors"):
        w.unlink()
    with pytest.raises(ValueError, match="could not load the diffusers pipeline"):
        load_pipeline_model(noweights)


def test_pickled_weights_are_refused_not_loaded(pipe_dir, tmp_path, monkeypatch):
    # a planted .bin file: the loader must refuse the folder without ever calling torch.load on it
    calls = []
    real_load = torch.load

    def watched_load(*a, **k):
        calls.append(a[0] if a else k.get("f"))
        return real_load(*a, **k)

    monkeypatch.setattr(torch, "load", watched_load)
    for part in ("unet", "vae"):
        d = tmp_path / part
        shutil.copytree(pipe_dir, d)
        for w in (d / part).glob("*.safetensors"):
            w.unlink()
        (d / part / "diffusion_pytorch_model.bin").write_bytes(b"not a real pickle")
        with pytest.raises(ValueError, match=r"pickled|safetensors"):
            load_pipeline_model(d)
    assert calls == []


def test_fp16_variant_only_folder_loads(pipe_dir, tmp_path):
    d = tmp_path / "fp16"
    shutil.copytree(pipe_dir, d)
    for w in d.glob("*/*.safetensors"):
        w.rename(w.with_name(w.name.replace(".safetensors", ".fp16.safetensors")))
    m, ref = load_pipeline_model(d), load_pipeline_model(pipe_dir)
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(2))
    for a, b in zip(
        m.predict(x, torch.tensor([10.0, 900.0]), "a cat"), ref.predict(x, torch.tensor([10.0, 900.0]), "a cat")
    ):
        torch.testing.assert_close(a, b)


def test_zero_snr_schedule_is_refused(pipe_dir, tmp_path):
    with pytest.raises(ValueError, match="zero terminal SNR"):
        load_pipeline_model(_variant(pipe_dir, tmp_path, rescale_betas_zero_snr=True))


def test_missing_diffusers_says_how_to_install(pipe_dir, monkeypatch):
    monkeypatch.setitem(sys.modules, "diffusers", None)
    with pytest.raises(ImportError, match=r"diffmem\[sd\]"):
        load_pipeline_model(pipe_dir)


# ------------------------------------------------------------------------------------- denoising
def test_predict_matches_pipeline_branches(pipe_dir):
    m = load_pipeline_model(pipe_dir)
    ref = _reference_pipe(pipe_dir)
    prompt = "the cat and the dog"
    x = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([999.0, 500.0, 3.0])
    eps_c, eps_u = m.predict(x, t, prompt)
    with torch.no_grad():
        pe, ne = ref.encode_prompt(prompt, "cpu", 1, True)
        want_c = torch.cat([ref.unet(x[i : i + 1], int(t[i]), encoder_hidden_states=pe).sample for i in range(3)])
        want_u = torch.cat([ref.unet(x[i : i + 1], int(t[i]), encoder_hidden_states=ne).sample for i in range(3)])
    assert eps_c.shape == eps_u.shape == x.shape
    torch.testing.assert_close(eps_c, want_c, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(eps_u, want_u, atol=1e-5, rtol=1e-5)
    assert (eps_c - eps_u).abs().max() > 1e-4  # the prompt matters: the test can tell the branches apart
    # one batched pass split in chunks gives the same numbers
    m.batch_size = 2
    c2, u2 = m.predict(x, t, prompt)
    torch.testing.assert_close(c2, eps_c, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(u2, eps_u, atol=1e-5, rtol=1e-5)


def test_long_prompts_are_truncated_like_the_pipeline(pipe_dir):
    m = load_pipeline_model(pipe_dir)
    ref = _reference_pipe(pipe_dir)
    long = " ".join(["the cat and the dog"] * 30)  # far more than 77 tokens
    with pytest.warns(UserWarning, match="truncated"):
        emb = m.embed(long)
    with torch.no_grad():
        want, _ = ref.encode_prompt(long, "cpu", 1, False)
    assert emb.shape == (1, 77, 32)
    torch.testing.assert_close(emb, want)
    assert m.embed(long) is emb  # cached


def test_predict_rejects_bad_input(pipe_dir):
    m = load_pipeline_model(pipe_dir)
    with pytest.raises(ValueError, match=r"x must have shape \(S, 4, 8, 8\), got \(2, 4, 16, 16\)"):
        m.predict(torch.zeros(2, 4, 16, 16), torch.zeros(2), "a")
    with pytest.raises(ValueError, match=r"step indices must lie in \[0, 1000\), got 3\.\.1000"):
        m.predict(torch.zeros(2, 4, 8, 8), torch.tensor([1000.0, 3.0]), "a")
    with pytest.raises(ValueError, match="one step index per sample"):
        m.predict(torch.zeros(2, 4, 8, 8), torch.zeros(3), "a")


def _guided_denoiser(model, prompt, g, calls):
    def den(x, t):
        calls.append(x.shape[0])
        c, u = model.predict(x, t, prompt)
        return sampling.cfg_mix(u, c, g)

    return den


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_guided_ddim_trajectory_matches_pipeline(pipe_dir, tmp_path, prediction_type):
    folder = pipe_dir if prediction_type == "epsilon" else _variant(pipe_dir, tmp_path, prediction_type=prediction_type)
    m = load_pipeline_model(folder)
    ref = _reference_pipe(folder)
    prompt, g, steps = "a cat", 7.5, 5
    x_T = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    want = ref(
        prompt,
        num_images_per_prompt=2,
        latents=x_T.clone(),
        guidance_scale=g,
        num_inference_steps=steps,
        output_type="latent",
    ).images
    ks = m.timesteps(steps)  # StableDiffusionPipeline forces steps_offset = 1: leading spacing plus one
    assert ks == [k + 1 for k in sampling.timesteps(m.schedule, steps, "leading")]
    calls = []
    got = sampling.ddim(_guided_denoiser(m, prompt, g, calls), x_T, m.schedule, ks=ks)
    assert calls == [2] * steps
    torch.testing.assert_close(got, want, atol=2e-4, rtol=1e-4)
    # a different guidance scale or timesteps give a different result (the comparison can fail)
    other = sampling.ddim(_guided_denoiser(m, prompt, 1.5, []), x_T, m.schedule, ks=ks)
    assert (other - want).abs().max() > 1e-2
    shifted = sampling.ddim(_guided_denoiser(m, prompt, g, []), x_T, m.schedule, steps, spacing="leading")
    assert (shifted - want).abs().max() > 1e-3


def test_stable_diffusion_scheduler_defaults_step_by_step(pipe_dir, tmp_path):
    """SD's own DDIM settings (steps_offset=1, set_alpha_to_one=False): every intermediate latent agrees."""
    folder = _variant(pipe_dir, tmp_path, set_alpha_to_one=False)
    m = load_pipeline_model(folder)
    ref = _reference_pipe(folder)
    steps, g = 4, 5.0
    ks = m.timesteps(steps)
    assert ks == [751, 501, 251, 1]
    x_T = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(4))
    seen = []
    ref(
        "the cat",
        latents=x_T.clone(),
        guidance_scale=g,
        num_inference_steps=steps,
        output_type="latent",
        callback_on_step_end=lambda p, i, t, kw: (seen.append(kw["latents"].clone()), kw)[1],
    )
    ours = []
    sampling.ddim(
        _guided_denoiser(m, "the cat", g, []), x_T, m.schedule, ks=ks, observer=lambda s: ours.append(s.x_prev)
    )
    # the last step differs by construction: diffusers ends at alpha_bar[0], diffmem's DDIM at alpha_bar = 1
    for a, b in zip(ours[:-1], seen[:-1]):
        torch.testing.assert_close(a, b, atol=2e-4, rtol=1e-4)


# ------------------------------------------------------------------------------------- pixels
def test_encode_decode_against_vae(pipe_dir):
    m = load_pipeline_model(pipe_dir)
    vae, sf = m.vae, m.vae.config.scaling_factor
    px = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(5))
    z = m.encode(px)
    assert z.shape == (3, 4, 8, 8) and z.dtype == torch.float32
    with torch.no_grad():
        want = vae.encode(px * 2 - 1).latent_dist.mean * sf
    torch.testing.assert_close(z, want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(m.encode(px), z)  # deterministic: the posterior mean, not a sample
    img = m.decode(z)
    assert img.shape == (3, 3, 16, 16) and img.min() >= 0 and img.max() <= 1
    with torch.no_grad():
        want_img = ((vae.decode(z / sf).sample + 1) / 2).clamp(0, 1)
    torch.testing.assert_close(img, want_img, atol=1e-5, rtol=1e-5)


def test_encode_grayscale_resize_and_crop(pipe_dir):
    m = load_pipeline_model(pipe_dir)
    gen = torch.Generator().manual_seed(6)
    gray = torch.rand(2, 1, 16, 16, generator=gen)
    torch.testing.assert_close(m.encode(gray), m.encode(gray.repeat(1, 3, 1, 1)))
    big = torch.rand(1, 3, 32, 32, generator=gen)
    small = torch.nn.functional.interpolate(big, size=(16, 16), mode="bilinear", align_corners=False, antialias=True)
    torch.testing.assert_close(m.encode(big), m.encode(small.clamp(0, 1)))
    wide = torch.rand(1, 3, 16, 40, generator=gen)  # centre 16x16 crop: columns 12..27
    torch.testing.assert_close(m.encode(wide), m.encode(wide[..., 12:28]))
    tall = torch.rand(1, 3, 40, 16, generator=gen)
    torch.testing.assert_close(m.encode(tall), m.encode(tall[..., 12:28, :]))
    with pytest.raises(ValueError, match=r"pixels must be finite and lie in \[0, 1\]"):
        m.encode(gray * 2)
    with pytest.raises(ValueError, match=r"pixels must have shape \(N, 1 or 3, H, W\), got \(1, 4, 16, 16\)"):
        m.encode(torch.rand(1, 4, 16, 16))


# ------------------------------------------------------------------------------------- manifests
def _png(path, arr):
    from PIL import Image

    Image.fromarray(arr).save(path)


@pytest.fixture
def images(tmp_path):
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (12, 10, 3), dtype=np.uint8)
    b = rng.integers(0, 256, (8, 8), dtype=np.uint8)  # grayscale file
    (tmp_path / "img").mkdir()
    _png(tmp_path / "img" / "a.png", a)
    _png(tmp_path / "img" / "b.png", b)
    return a, b


def _check_specs(specs, a, b):
    assert [s.prompt for s in specs] == ["a cat", "the dog, 'quoted'"]
    assert [s.label for s in specs] == ["memorized", None]
    assert all(isinstance(s, PromptSpec) for s in specs)
    np.testing.assert_array_equal(specs[0].image.numpy(), a.transpose(2, 0, 1).astype(np.float32) / 255)
    assert specs[1].image.shape == (3, 8, 8)
    for c in range(3):
        np.testing.assert_array_equal(specs[1].image[c].numpy(), b.astype(np.float32) / 255)
    assert specs[0].image.dtype == torch.float32


def test_manifest_formats(tmp_path, images):
    a, b = images
    entries = [
        {"prompt": "a cat", "image": "img/a.png", "label": "memorized"},
        {"prompt": "the dog, 'quoted'", "image": "img/b.png"},
    ]
    (tmp_path / "m.json").write_text(json.dumps(entries))
    _check_specs(read_manifest(tmp_path / "m.json"), a, b)
    (tmp_path / "m2.json").write_text(json.dumps({"prompts": entries}))
    _check_specs(read_manifest(tmp_path / "m2.json"), a, b)
    (tmp_path / "m.jsonl").write_text("\n".join(json.dumps(e) for e in entries) + "\n\n")
    _check_specs(read_manifest(tmp_path / "m.jsonl"), a, b)
    (tmp_path / "m.csv").write_text("prompt,image,label\na cat,img/a.png,Memorized\n\"the dog, 'quoted'\",img/b.png,\n")
    _check_specs(read_manifest(tmp_path / "m.csv"), a, b)
    # absolute paths work from anywhere
    sub = tmp_path / "elsewhere"
    sub.mkdir()
    abs_entries = [dict(e, image=str(tmp_path / e["image"])) for e in entries]
    (sub / "m.json").write_text(json.dumps(abs_entries))
    _check_specs(read_manifest(sub / "m.json"), a, b)


def test_manifest_downscales_large_images(tmp_path):
    _png(tmp_path / "big.png", np.full((40, 60, 3), 200, dtype=np.uint8))
    (tmp_path / "m.json").write_text(json.dumps([{"prompt": "p", "image": "big.png"}]))
    (s,) = read_manifest(tmp_path / "m.json", max_side=20)
    assert s.image.shape == (3, 20, 30)
    np.testing.assert_allclose(s.image.numpy(), 200 / 255, atol=1e-6)
    (s,) = read_manifest(tmp_path / "m.json", max_side=None)
    assert s.image.shape == (3, 40, 60)


def test_manifest_errors(tmp_path, images):
    def write(name, obj):
        p = tmp_path / name
        p.write_text(obj if isinstance(obj, str) else json.dumps(obj))
        return p

    with pytest.raises(FileNotFoundError, match="no such manifest"):
        read_manifest(tmp_path / "none.json")
    with pytest.raises(FileNotFoundError, match=r"entry 2 \(prompt 'b'\): image file .*missing\.png does not exist"):
        read_manifest(write("m.json", [{"prompt": "a", "image": "img/a.png"}, {"prompt": "b", "image": "missing.png"}]))
    (tmp_path / "bad.png").write_bytes(b"not an image at all")
    with pytest.raises(ValueError, match=r"entry 1 \(prompt 'a'\): .*bad\.png is not a readable image"):
        read_manifest(write("m.json", [{"prompt": "a", "image": "bad.png"}]))
    with pytest.raises(ValueError, match="lists no prompts"):
        read_manifest(write("m.json", []))
    with pytest.raises(ValueError, match="lists no prompts"):
        read_manifest(write("m.csv", "prompt,image,label\n"))
    with pytest.raises(ValueError, match="has no image while the manifest gives images"):
        read_manifest(write("m.json", [{"prompt": "a", "image": "img/a.png"}, {"prompt": "b"}]))
    with pytest.raises(ValueError, match=r"m\.csv line 2 \(prompt 'a'\): the prompt has no image"):
        read_manifest(write("m.csv", "prompt,image\na,\n"))
    with pytest.raises(ValueError, match="no prompt text"):
        read_manifest(write("m.jsonl", '{"image": "img/a.png"}\n'))
    with pytest.raises(ValueError, match="label must be one of"):
        read_manifest(write("m.json", [{"prompt": "a", "image": "img/a.png", "label": "copied"}]))
    with pytest.raises(ValueError, match="line 1 is not valid JSON"):
        read_manifest(write("m.jsonl", "{oops\n"))
    with pytest.raises(ValueError, match="header row"):
        read_manifest(write("m.csv", "text,file\na,img/a.png\n"))
    with pytest.raises(ValueError, match="unknown manifest type"):
        read_manifest(write("m.txt", "a cat"))
    dup = [{"prompt": "a", "image": "img/a.png"}, {"prompt": "a", "image": "img/b.png"}]
    with pytest.raises(ValueError, match=r"entry 2 \(prompt 'a'\): duplicate prompt \(also m\.json entry 1"):
        read_manifest(write("m.json", dup))
    keyed = read_manifest(write("m.json", [dict(e, key=f"a{i}") for i, e in enumerate(dup)]))
    assert [s.key for s in keyed] == ["a0", "a1"]
    with pytest.raises(ValueError, match="already used"):
        read_manifest(write("m.json", [dict(e, key="same") for e in dup]))
    with pytest.raises(ValueError, match="key 'a/b'"):
        read_manifest(write("m.json", [{"prompt": "a", "image": "img/a.png", "key": "a/b"}]))


# ------------------------------------------------------------------------------------- SSCD
class _ToyDescriptor(torch.nn.Module):
    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(7)
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.fc = torch.nn.Linear(8, 16)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).mean(dim=(2, 3)))


@pytest.fixture
def toy_sscd(tmp_path):
    net = _ToyDescriptor().eval()
    path = tmp_path / "toy.torchscript.pt"
    torch.jit.save(torch.jit.script(net), str(path))
    return net, path


def _manual_cosines(net, gen, ref):
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        d = net((torch.cat([gen, ref[None]]) - mean) / std).double().numpy()
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    return d[:-1] @ d[-1]


def test_sscd_severity_on_scripted_module(toy_sscd):
    net, path = toy_sscd
    sev = SSCDSeverity(path, size=16)
    assert sev.name == "sscd-cosine" and sev.threshold == 0.75 and sev.dim == 16
    gen = torch.rand(5, 3, 16, 16, generator=torch.Generator().manual_seed(8))
    ref = gen[2].clone()
    got = sev(gen, ref)
    assert got.shape == (5,) and got.dtype == np.float64
    np.testing.assert_allclose(got, _manual_cosines(net, gen, ref), atol=1e-6)
    assert abs(got[2] - 1) < 1e-6 and np.all(np.delete(got, 2) < 1 - 1e-4)
    # inputs are resized to size x size (bilinear, antialiased) and grayscale is repeated to RGB
    big = torch.rand(2, 3, 32, 24, generator=torch.Generator().manual_seed(9))
    small = torch.nn.functional.interpolate(big, size=(16, 16), mode="bilinear", align_corners=False, antialias=True)
    np.testing.assert_allclose(sev(big, ref), _manual_cosines(net, small.clamp(0, 1), ref), atol=1e-6)
    gray = gen[:, :1]
    np.testing.assert_allclose(sev(gray, ref), _manual_cosines(net, gray.repeat(1, 3, 1, 1), ref), atol=1e-6)


def test_sscd_errors(tmp_path, toy_sscd):
    with pytest.raises(FileNotFoundError, match="no SSCD model file"):
        SSCDSeverity(tmp_path / "missing.pt")
    weights = tmp_path / "sscd.torchvision.pt"
    torch.save(_ToyDescriptor().state_dict(), str(weights))
    with pytest.raises(ValueError, match="not a TorchScript model"):
        SSCDSeverity(weights)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"\x00garbage")
    with pytest.raises(ValueError, match="not a TorchScript model"):
        SSCDSeverity(junk)

    class Maps(torch.nn.Module):
        def forward(self, x):
            return x

    maps = tmp_path / "maps.pt"
    torch.jit.save(torch.jit.script(Maps()), str(maps))
    with pytest.raises(ValueError, match=r"shape \(N, D\)"):
        SSCDSeverity(maps, size=16)
    _, path = toy_sscd
    with pytest.raises(ValueError, match=r"threshold is a cosine similarity and must lie in \[-1, 1\], got 2\.0"):
        SSCDSeverity(path, threshold=2.0)
    with pytest.raises(ValueError, match="reference must be one image"):
        SSCDSeverity(path, size=16)(torch.rand(1, 3, 16, 16), torch.rand(1, 3, 16, 16))


# ------------------------------------------------------------------------------------- end to end
def _manifest_for(tmp_path, model):
    """Two prompts; the 'memorized' one is paired with an image the tiny model decodes from a fixed latent."""
    z = torch.randn(1, *model.latent_shape, generator=torch.Generator().manual_seed(11))
    img = (model.decode(z)[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    _png(tmp_path / "mem.png", img)
    _png(tmp_path / "norm.png", np.random.default_rng(1).integers(0, 256, (16, 16, 3), dtype=np.uint8))
    path = tmp_path / "manifest.json"
    path.write_text(
        json.dumps(
            [
                {"prompt": "the cat", "image": "mem.png", "label": "memorized"},
                {"prompt": "a dog and a tree", "image": "norm.png", "label": "normal"},
            ]
        )
    )
    return path


def test_run_audit_on_tiny_pipeline(pipe_dir, tmp_path, offline):
    run = pytest.importorskip("diffmem.audit.run")
    from diffmem.audit.recorder import prompt_seeds

    m = load_pipeline_model(pipe_dir)
    specs = read_manifest(_manifest_for(tmp_path, m))
    cfg = run.AuditConfig(steps=4, seeds=2, n_boot=20)
    res = run.run_audit(m, specs, cfg, tmp_path / "out", progress=False)
    for name in ("audit.json", "report.html"):
        assert (tmp_path / "out" / name).is_file()
    saved = json.loads((tmp_path / "out" / "audit.json").read_text())
    assert saved["model"]["kind"] == "diffusers" and saved["model"]["latent_shape"] == [4, 8, 8]
    assert saved == res.to_dict()
    assert saved["timesteps"] == res.timesteps == m.timesteps(4)
    assert [p["key"] for p in saved["prompts"]] == [s.key for s in specs]
    assert [p["label"] for p in saved["prompts"]] == ["memorized", "normal"]
    assert all(len(p["severity_per_seed"]) == 2 for p in saved["prompts"])
    # the recorded trajectory ends where the diffusers pipeline ends from the same noise
    ref = _reference_pipe(pipe_dir)
    x_T = sampling.randn_per_sample(prompt_seeds(cfg.seed, 2), m.latent_shape)
    want = ref(
        specs[0].prompt,
        num_images_per_prompt=2,
        latents=x_T.clone(),
        guidance_scale=cfg.guidance,
        num_inference_steps=4,
        output_type="latent",
    ).images
    traj = run.load_trajectory(tmp_path / "out", specs[0].key)
    torch.testing.assert_close(traj.x_final, want, atol=2e-4, rtol=1e-4)
    torch.testing.assert_close(traj.x_T, x_T)


def test_audit_cli_on_tiny_pipeline(pipe_dir, tmp_path, offline, toy_sscd, capsys):
    pytest.importorskip("diffmem.audit.run")
    pytest.importorskip("diffmem.audit.cli")
    from diffmem.cli import main

    man = _manifest_for(tmp_path, load_pipeline_model(pipe_dir))
    out = tmp_path / "cli"
    _, sscd_path = toy_sscd
    rc = main(
        [
            "audit",
            "--model",
            str(pipe_dir),
            "--manifest",
            str(man),
            "--steps",
            "3",
            "--seeds",
            "2",
            "--n-boot",
            "20",
            "--sscd",
            str(sscd_path),
            "--out",
            str(out),
            "--quiet",
        ]
    )
    assert rc == 0
    assert (out / "audit.json").is_file() and (out / "report.html").is_file()
    saved = json.loads((out / "audit.json").read_text())
    assert saved["severity_metric"] == {"name": "sscd-cosine", "threshold": 0.75}
    assert saved["timesteps"] == [667, 334, 1]  # DDIM, leading spacing + SD's steps_offset 1
    assert len(saved["prompts"]) == 2
    # a folder that is not a pipeline is a clear CLI error, not a traceback
    (tmp_path / "notpipe").mkdir()
    capsys.readouterr()
    rc = main(
        [
            "audit",
            "--model",
            str(tmp_path / "notpipe"),
            "--manifest",
            str(man),
            "--out",
            str(tmp_path / "o2"),
            "--quiet",
        ]
    )
    err = capsys.readouterr().err
    assert rc == 2 and "notpipe is not a diffusers pipeline folder: it has no model_index.json" in err


# ------------------------------------------------------------------------------------- public prompt lists
def test_manifest_reads_the_public_prompt_list_formats(tmp_path, images):
    a, _ = images
    # JSON lines with caption, index and url (images by index in a local folder; the url is never fetched)
    lines = [
        {"caption": "a cat", "index": 17, "url": "https://example.invalid/17.jpg"},
        {"caption": "the dog", "index": "42", "url": "https://example.invalid/42.jpg"},
    ]
    (tmp_path / "m.jsonl").write_text("\n".join(json.dumps(e) for e in lines) + "\n")
    folder = tmp_path / "by_index"
    folder.mkdir()
    shutil.copy(tmp_path / "img" / "a.png", folder / "17.png")
    shutil.copy(tmp_path / "img" / "b.png", folder / "42.png")
    specs = read_manifest(tmp_path / "m.jsonl", images=folder)
    assert [s.prompt for s in specs] == ["a cat", "the dog"] and [s.key for s in specs] == ["17", "42"]
    np.testing.assert_array_equal(specs[0].image.numpy(), a.transpose(2, 0, 1).astype(np.float32) / 255)
    # without the folder: the same prompts, audited without their training images
    blind = read_manifest(tmp_path / "m.jsonl")
    assert [s.image for s in blind] == [None, None] and [s.label for s in blind] == [None, None]
    # a CSV with a prompt and a label column, no images; the public lists' codes are read as labels
    (tmp_path / "l.csv").write_text("prompt,label\na cat,MV\nthe dog,N\na bird,TV\na fish,RV\na tree,\n")
    specs = read_manifest(tmp_path / "l.csv")
    assert [s.label for s in specs] == ["memorized", "normal", "partial", "memorized", None]
    assert all(s.image is None for s in specs)
    (tmp_path / "o.csv").write_text("prompt,overfit_type,group\na cat,TV,templates\nthe dog,n,\n")
    specs = read_manifest(tmp_path / "o.csv")
    assert [s.label for s in specs] == ["partial", "normal"] and [s.group for s in specs] == ["templates", None]
    (tmp_path / "b.csv").write_text("caption,memorized\na cat,true\nthe dog,False\n")
    assert [s.label for s in read_manifest(tmp_path / "b.csv")] == ["memorized", "normal"]


def test_manifest_refuses_unknown_columns_missing_images_and_duplicate_keys(tmp_path, images):
    def write(name, text):
        (tmp_path / name).write_text(text)
        return tmp_path / name

    with pytest.raises(ValueError, match=r"unknown field\(s\) \['caption_text'\]"):
        read_manifest(write("m.csv", "prompt,caption_text\na,b\n"))
    with pytest.raises(ValueError, match=r"unknown field\(s\) \['img'\]"):
        read_manifest(write("m.jsonl", '{"prompt": "a", "img": "img/a.png"}\n'))
    folder = tmp_path / "by_index"
    folder.mkdir()
    shutil.copy(tmp_path / "img" / "a.png", folder / "1.png")
    with pytest.raises(FileNotFoundError, match=r"no image for index '2' in .*by_index"):
        read_manifest(write("m.jsonl", '{"caption": "a", "index": 1}\n{"caption": "b", "index": 2}\n'), images=folder)
    with pytest.raises(ValueError, match="has no image while the manifest gives images"):
        read_manifest(write("m.jsonl", '{"caption": "a", "index": 1}\n{"caption": "b"}\n'), images=folder)
    with pytest.raises(FileNotFoundError, match="no such image folder"):
        read_manifest(write("m.jsonl", '{"caption": "a", "index": 1}\n'), images=tmp_path / "nowhere")
    with pytest.raises(ValueError, match="key '7' is already used"):
        read_manifest(write("m.jsonl", '{"caption": "a", "index": 7}\n{"caption": "b", "index": 7}\n'))
    with pytest.raises(ValueError, match="key 'k' is already used"):
        read_manifest(write("m.csv", "prompt,key\na,k\nb,k\n"))
    with pytest.raises(ValueError, match="the label columns disagree"):
        read_manifest(write("m.csv", "prompt,label,overfit_type\na,memorized,N\n"))
    with pytest.raises(ValueError, match="memorized must be true or false"):
        read_manifest(write("m.csv", "prompt,memorized\na,maybe\n"))
    with pytest.raises(ValueError, match="prompt and caption differ"):
        read_manifest(write("m.jsonl", '{"prompt": "a", "caption": "b"}\n'))


def test_sscd_defaults_follow_the_audit_protocol(toy_sscd):
    from diffmem.audit.sscd import PAPER_SIZE, PAPER_THRESHOLD

    _, path = toy_sscd
    sev = SSCDSeverity(path)
    assert (sev.size, sev.threshold, PAPER_SIZE, PAPER_THRESHOLD) == (288, 0.75, 288, 0.75)
    wide = torch.rand(2, 3, 64, 96, generator=torch.Generator().manual_seed(12))
    x = sev.preprocess(wide)
    assert x.shape == (2, 3, 288, 288)  # square resize, no crop: the whole image is kept
    want = torch.nn.functional.interpolate(wide, size=(288, 288), mode="bilinear", align_corners=False)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    torch.testing.assert_close(x, (want - mean) / std)


def test_sd_timesteps_give_the_0_076_gap_between_the_reference_curves(pipe_dir):
    from diffmem.audit import analysis

    m = load_pipeline_model(pipe_dir)
    ks = m.timesteps(50)  # diffusers' DDIMScheduler with SD's steps_offset 1
    ab = m.schedule.alphas_cumprod[ks].numpy()
    s0, _ = analysis.reference_curves(ab, "sqrt_ab")
    e0, _ = analysis.reference_curves(ab, "ddim_exact")
    assert ks[0] == 981 and np.abs(s0 - e0).max() == pytest.approx(0.0760, abs=5e-4)


def test_run_audit_on_tiny_pipeline_without_training_images(pipe_dir, tmp_path, offline):
    run = pytest.importorskip("diffmem.audit.run")
    m = load_pipeline_model(pipe_dir)
    (tmp_path / "blind.csv").write_text("prompt,label\nthe cat,memorized\na dog and a tree,normal\n")
    specs = read_manifest(tmp_path / "blind.csv")
    res = run.run_audit(m, specs, run.AuditConfig(steps=3, seeds=2, n_boot=20), tmp_path / "out", progress=False)
    assert res.decomposition["prompts_by_reference"] == {"training": 0, "final": 2}
    for p in res.prompts:
        assert p["severity"] is None and p["D1_final"] is not None and p["D1"] == p["D1_final"]
    # without a training image there is no severity to lower: nothing in the mitigation tables
    assert res.mitigation == {} and res.mitigation_outcome == {}
    assert all(set(p["mitigation"]) == {"constant"} for p in res.prompts)
