"""The paper's DDPM U-Net: parameter counts, shapes, time input, dropout, gradients, training, CLI."""

from __future__ import annotations

import pytest
import torch

from diffmem import cli
from diffmem.dynamics.training import TrainConfig, list_checkpoints, load_checkpoint
from diffmem.metrics.losses import eps_loss
from diffmem.models import build, sinusoidal
from diffmem.models.unet import UNet, _Attention, unet_param_count
from diffmem.schedule import linear

PAPER_P = {8: 0.26e6, 16: 1.03e6, 32: 4.06e6, 48: 9.09e6, 64: 16.1e6}  # Bonnaire et al. (2025): published counts


@pytest.mark.parametrize("width", sorted(PAPER_P))
def test_param_count_matches_paper(width):
    p = unet_param_count(width)
    assert abs(p / PAPER_P[width] - 1) < 0.03, (width, p)
    # the frozen table is exactly T x W of the count
    assert p - unet_param_count(width, include_time_table=False) == 1000 * width


def test_param_count_is_the_module_count():
    model = UNet(in_channels=3, width=16)
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert unet_param_count(16, in_channels=3) == total
    assert unet_param_count(16, in_channels=3, include_time_table=False) == trainable == total - 16_000
    assert unet_param_count(16, in_channels=3) != unet_param_count(16, in_channels=1)


@pytest.mark.parametrize("shape", [(1, 8, 8), (1, 32, 32), (3, 8, 12)])
def test_output_shape(shape):
    torch.manual_seed(0)
    model = build("unet", shape, 8).eval()
    x = torch.randn(3, *shape)
    out = model(x, torch.tensor([1.0, 500.0, 999.0]))
    assert out.shape == x.shape
    assert torch.isfinite(out).all()


def test_attention_matches_torch_multihead_attention():
    torch.manual_seed(0)
    attn = _Attention(16, heads=4)
    ref = torch.nn.MultiheadAttention(16, 4, batch_first=True)
    with torch.no_grad():
        ref.in_proj_weight.copy_(attn.qkv.weight)
        ref.in_proj_bias.copy_(attn.qkv.bias)
        ref.out_proj.weight.copy_(attn.proj.weight)
        ref.out_proj.bias.copy_(attn.proj.bias)
        x = torch.randn(2, 16, 4, 3)
        seq = attn.norm(x).flatten(2).transpose(1, 2)
        expected = x + ref(seq, seq, seq, need_weights=False)[0].transpose(1, 2).reshape(x.shape)
        torch.testing.assert_close(attn(x), expected, rtol=1e-5, atol=1e-5)


def test_time_table_and_interpolation():
    model = UNet(width=16)
    torch.testing.assert_close(model.time_table, sinusoidal(torch.arange(1000.0), 16))
    e = model.time_embedding(torch.tensor([0.0, 10.0, 10.25, 998.5, 999.9]), 5)
    torch.testing.assert_close(e[1], sinusoidal(torch.tensor([10.0]), 16)[0])
    torch.testing.assert_close(e[2], 0.75 * model.time_table[10] + 0.25 * model.time_table[11])
    torch.testing.assert_close(e[3], 0.5 * (model.time_table[998] + model.time_table[999]))
    torch.testing.assert_close(e[4], model.time_table[999])
    # a single value is broadcast over the batch
    torch.testing.assert_close(model.time_embedding(torch.tensor(7.0), 3), model.time_table[[7, 7, 7]])


def test_time_changes_the_output_and_scalar_t_broadcasts():
    torch.manual_seed(0)
    model = UNet(width=8).eval()
    x = torch.randn(4, 1, 8, 8)
    with torch.no_grad():
        a = model(x, torch.full((4,), 10.0))
        b = model(x, torch.full((4,), 700.0))
        c = model(x, torch.tensor(10.0))
    assert (a - b).abs().max() > 1e-3
    torch.testing.assert_close(a, c)
    # per-sample t: each row depends only on its own step
    with torch.no_grad():
        mixed = model(x, torch.tensor([10.0, 700.0, 10.0, 700.0]))
    torch.testing.assert_close(mixed[0::2], a[0::2], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(mixed[1::2], b[1::2], rtol=1e-5, atol=1e-6)


def test_eval_deterministic_train_uses_dropout():
    torch.manual_seed(0)
    model = UNet(width=8)
    x, t = torch.randn(4, 1, 8, 8), torch.tensor([5.0, 50.0, 500.0, 900.0])
    with torch.no_grad():
        model.eval()
        e1, e2 = model(x, t), model(x, t)
        model.train()
        r1, r2 = model(x, t), model(x, t)
    torch.testing.assert_close(e1, e2, rtol=0, atol=0)
    assert (r1 - r2).abs().max() > 1e-4
    # with dropout 0 the train-mode output is the eval-mode output (GroupNorm keeps no running stats)
    torch.manual_seed(0)
    plain = UNet(width=8, dropout=0.0)
    plain.load_state_dict(model.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(plain.train()(x, t), e1, rtol=1e-5, atol=1e-6)


def test_gradients_reach_every_trainable_parameter_not_the_table():
    torch.manual_seed(0)
    model = UNet(width=8).train()
    x = torch.randn(4, 1, 8, 8)
    loss = (model(x, torch.tensor([1.0, 30.0, 300.0, 998.0])) ** 2).mean()
    loss.backward()
    assert not model.time_table.requires_grad and model.time_table.grad is None
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert len(trainable) == len(list(model.parameters())) - 1
    for name, p in trainable:
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_adam_steps_reduce_the_eps_loss():
    torch.manual_seed(0)
    model = UNet(width=8)
    sched = linear(1000, 1e-4, 2e-2)
    g = torch.Generator().manual_seed(1)
    x0 = torch.randn(8, 1, 8, 8, generator=g)
    k = torch.randint(1, 1000, (8,), generator=g)
    eps = torch.randn(x0.shape, generator=g)
    with torch.no_grad():
        before = eps_loss(model.eval(), x0, k, eps, sched).mean().item()
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=2e-3)
    model.train()
    for _ in range(25):
        opt.zero_grad()
        eps_loss(model, x0, k, eps, sched).mean().backward()
        opt.step()
    with torch.no_grad():
        after = eps_loss(model.eval(), x0, k, eps, sched).mean().item()
    assert after < 0.7 * before, (before, after)


@pytest.mark.parametrize("width", [0, 4, 12, 20])
def test_bad_width(width):
    with pytest.raises(ValueError, match="multiple of 8"):
        UNet(width=width)


def test_bad_inputs():
    model = UNet(width=8)
    with pytest.raises(ValueError, match="divisible by 4"):
        model(torch.randn(2, 1, 10, 10), torch.tensor([1.0, 2.0]))
    with pytest.raises(ValueError, match="divisible by 4"):
        model(torch.randn(2, 1, 8, 6), torch.tensor([1.0, 2.0]))
    with pytest.raises(ValueError, match=r"\(B, 1, H, W\)"):
        model(torch.randn(2, 3, 8, 8), torch.tensor([1.0, 2.0]))
    with pytest.raises(ValueError, match=r"\(B, 1, H, W\)"):
        model(torch.randn(2, 64), torch.tensor([1.0, 2.0]))
    with pytest.raises(ValueError, match="shape"):
        model(torch.randn(2, 1, 8, 8), torch.tensor([1.0, 2.0, 3.0]))
    for bad in (-1.0, 1000.0, float("nan")):
        with pytest.raises(ValueError, match=r"\[0, 1000\)"):
            model(torch.randn(2, 1, 8, 8), torch.tensor([1.0, bad]))
    with pytest.raises(ValueError, match="image data"):
        build("unet", (64,), 8)


def test_cli_train_unet_end_to_end(tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["train", "--model", "unet", "--width", "8", "--n", "16", "--steps", "30", "--out", str(out)]
    argv += ["--checkpoints", "2", "--first-checkpoint", "10", "--log-every", "10", "--quiet"]
    assert cli.main(argv) == 0
    cfg = TrainConfig(
        model="unet", width=8, n=16, steps=30, checkpoints=2, first_checkpoint=10, log_every=10
    ).resolved()
    ckpts = list_checkpoints(out)
    assert [s for s, _ in ckpts] == [10, 30]
    model = load_checkpoint(ckpts[-1][1], cfg, (1, 8, 8))
    assert isinstance(model, UNet)
    # training moved the weights but never the frozen table
    init = UNet(width=8)
    torch.testing.assert_close(model.time_table, init.time_table, rtol=0, atol=0)
    assert (model.inp.weight - load_checkpoint(ckpts[0][1], cfg, (1, 8, 8)).inp.weight).abs().max() > 0
    with torch.no_grad():
        assert torch.isfinite(model(torch.randn(2, 1, 8, 8), torch.tensor(5.0))).all()
