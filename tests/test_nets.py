"""Networks: shapes, errors, gradient flow, batch independence, EDM zero-init, FNO grid transfer.

Network construction uses torch's global RNG by design (Lightning seeds it), so this module does not
use the ``no_global_rng`` fixture except for tests that build no network; inputs come from generators.
"""
import math

import pytest
import torch

from diffpost.nets import FNO, MLP, FourierNoiseEmbedding, NoiseEmbedding, SpectralConv2d, UNet, positional_features
from diffpost.precond import EDMDenoiser
from diffpost.random import make_generator, randn


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """On a shared, oversubscribed CPU, OpenMP with 2 threads ran these small convolutions 10-40x
    slower than 1 thread (spin-waiting); tests only check values, so run them single-threaded."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _n_params(net):
    return sum(p.numel() for p in net.parameters())


def _randomise_zero_layers(net, g):
    """Give zero-initialised layers random values so that gradients reach every layer."""
    for p in net.parameters():
        if not p.detach().abs().sum():
            with torch.no_grad():
                p.copy_(0.1 * randn(p.shape, g))


def _assert_all_grads(net):
    dead = [n for n, p in net.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all() or not p.grad.abs().sum()]
    assert not dead, f"no gradient reached: {dead}"


# ----------------------------------------------------------------------------------------- UNet


@pytest.mark.parametrize("size", [(16, 16), (32, 32), (64, 64), (32, 64)])
@pytest.mark.parametrize("channels", [(1, 1), (3, 3), (2, 1)])
def test_unet_shapes(size, channels):
    g = make_generator(0)
    net = UNet(in_channels=channels[0], out_channels=channels[1], base_channels=16, num_res_blocks=1)
    x = randn((2, channels[0], *size), g)
    out = net(x, randn((2,), g))
    assert out.shape == (2, channels[1], *size)


def test_unet_deep_config_runs_at_256():
    g = make_generator(1)
    net = UNet(base_channels=8, channel_mult=[1, 1, 2, 2, 2], num_res_blocks=1, attn_levels=[3, 4], num_heads=2)
    with torch.no_grad():
        assert net(randn((1, 1, 256, 256), g), torch.zeros(1)).shape == (1, 1, 256, 256)


def test_unet_quickstart_size():
    net = UNet()
    assert 1_000_000 <= _n_params(net) <= 2_000_000


@pytest.mark.parametrize(
    "kwargs,size,factor",
    [({}, (30, 32), 4), ({}, (32, 18), 4), ({"channel_mult": [1, 1, 2, 2]}, (36, 36), 8)],
)
def test_unet_rejects_indivisible_sizes(kwargs, size, factor):
    net = UNet(base_channels=8, num_res_blocks=1, attn_levels=[], **kwargs)
    with pytest.raises(ValueError, match=f"divisible by {factor}"):
        net(torch.zeros(1, 1, *size), torch.zeros(1))


def test_unet_config_errors():
    with pytest.raises(ValueError, match="attn_levels"):
        UNet(channel_mult=[1, 2], attn_levels=[2])
    with pytest.raises(ValueError, match="num_heads"):
        UNet(base_channels=32, channel_mult=[1, 2, 2], attn_levels=[2], num_heads=5)
    with pytest.raises(ValueError, match="channel_mult"):
        UNet(channel_mult=[])
    net = UNet(base_channels=8, num_res_blocks=1)
    with pytest.raises(ValueError, match=r"\(B, 1, H, W\)"):
        net(torch.zeros(1, 3, 16, 16), torch.zeros(1))
    with pytest.raises(ValueError, match="c_noise"):
        net(torch.zeros(2, 1, 16, 16), torch.zeros(3))


def test_unet_zero_init_gives_c_skip_denoiser():
    """Zero output conv ⇒ F ≡ 0 ⇒ D(x, σ) = σ_d²/(σ² + σ_d²) x exactly."""
    g = make_generator(2)
    net = UNet(base_channels=16)
    x = randn((3, 1, 16, 16), g)
    sigma = torch.tensor([0.01, 0.5, 40.0])
    assert torch.equal(net(x, sigma), torch.zeros_like(x))
    den = EDMDenoiser(net, sigma_data=0.5)
    expected = (0.25 / (sigma**2 + 0.25)).view(-1, 1, 1, 1) * x
    torch.testing.assert_close(den(x, sigma), expected, rtol=1e-6, atol=0)


# ------------------------------------------------------------------------------- all networks

_NETS = {
    "unet": (lambda: UNet(base_channels=16, num_res_blocks=1, dropout=0.0), (3, 1, 16, 16)),
    "unet_rgb": (
        lambda: UNet(in_channels=3, out_channels=3, base_channels=16, channel_mult=[1, 2], attn_levels=[1]),
        (3, 3, 16, 16),
    ),
    "fno": (lambda: FNO(width=8, modes=6, n_layers=3), (3, 1, 16, 16)),
    "fno_channels": (lambda: FNO(in_channels=2, out_channels=3, width=8, modes=4, n_layers=2), (3, 2, 12, 20)),
    "mlp": (lambda: MLP(dim=5, hidden=32, depth=3), (3, 5)),
}


@pytest.mark.parametrize("name", list(_NETS))
def test_gradients_reach_every_parameter_and_the_input(name):
    factory, shape = _NETS[name]
    g = make_generator(3)
    net = factory()
    _randomise_zero_layers(net, g)
    x = randn(shape, g).requires_grad_(True)
    out = net(x, randn((shape[0],), g))
    (out * randn(out.shape, g)).sum().backward()
    _assert_all_grads(net)
    assert x.grad is not None and x.grad.abs().sum() > 0


@pytest.mark.parametrize("name", list(_NETS))
def test_samples_are_processed_independently_and_depend_on_c_noise(name):
    """Sample i's output depends only on (x_i, c_i): no mixing across the batch (norms, attention
    reshapes), and the noise level is actually used."""
    factory, shape = _NETS[name]
    g = make_generator(4)
    net = factory().double().eval()
    _randomise_zero_layers(net, g)
    x = randn(shape, g, dtype=torch.float64)
    c = torch.tensor([-1.5, 0.0, 1.0], dtype=torch.float64)
    with torch.no_grad():
        full = net(x, c)
        for i in range(shape[0]):
            torch.testing.assert_close(net(x[i : i + 1], c[i : i + 1]), full[i : i + 1], rtol=1e-10, atol=1e-12)
        other = net(x, c + 0.5)
        scalar = net(x, torch.tensor(0.25, dtype=torch.float64))
        torch.testing.assert_close(scalar, net(x, torch.full((shape[0],), 0.25, dtype=torch.float64)))
    assert (other - full).abs().max() > 1e-6 * full.abs().max()


def test_float64_forward():
    g = make_generator(5)
    x = randn((2, 1, 16, 16), g, dtype=torch.float64)
    for net in (UNet(base_channels=8, num_res_blocks=1).double(), FNO(width=8, modes=4).double()):
        assert net(x, torch.zeros(2, dtype=torch.float64)).dtype == torch.float64


# ----------------------------------------------------------------------------------------- FNO


def _smooth_field(n: int) -> torch.Tensor:
    """A band-limited (|k| ≤ 3) periodic function sampled on an n×n grid of [0, 1)²."""
    grid = torch.arange(n, dtype=torch.float64) / n
    X, Y = torch.meshgrid(grid, grid, indexing="ij")
    f = torch.sin(2 * math.pi * X) + 0.5 * torch.cos(2 * math.pi * (2 * X + Y)) + 0.3 * torch.sin(2 * math.pi * (X - 3 * Y) + 0.4)
    return f[None, None]


@pytest.mark.parametrize("modes", [8, 12, 16])
def test_fno_transfers_across_resolutions(modes):
    """The same smooth field at 32² and 64² maps to outputs that agree at the shared grid points.
    The remaining gap is aliasing of GELU harmonics at 32² (measured ~1e-5 relative for modes 16)."""
    net = FNO(width=16, modes=modes, n_layers=4).double()
    c = torch.tensor([0.3], dtype=torch.float64)
    with torch.no_grad():
        coarse = net(_smooth_field(32), c)
        fine = net(_smooth_field(64), c)
    assert fine.shape == (1, 1, 64, 64)
    spread = coarse.std()
    assert spread > 1e-4  # the output is a non-trivial field
    assert (fine[..., ::2, ::2] - coarse).abs().max() < 1e-3 * spread


def test_fno_runs_on_grids_coarser_than_its_modes():
    g = make_generator(6)
    net = FNO(modes=12, width=8)
    for size in [(8, 8), (16, 16), (5, 7)]:
        assert net(randn((2, 1, *size), g), torch.zeros(2)).shape == (2, 1, *size)


def test_fno_is_equivariant_to_circular_shifts():
    """Spectral and pointwise maps commute with periodic translations; so must the whole FNO."""
    g = make_generator(7)
    net = FNO(width=8, modes=6).double()
    x = randn((2, 1, 16, 24), g, dtype=torch.float64)
    c = torch.zeros(2, dtype=torch.float64)
    with torch.no_grad():
        shifted = net(torch.roll(x, shifts=(3, -5), dims=(-2, -1)), c)
        torch.testing.assert_close(shifted, torch.roll(net(x, c), shifts=(3, -5), dims=(-2, -1)), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize(
    "k1,k2,kept",
    [(0, 0, True), (3, 2, True), (-3, 3, True), (4, 0, False), (-4, 1, False), (1, 4, False), (5, 5, False)],
)
def test_spectral_conv_keeps_exactly_the_low_modes(k1, k2, kept):
    """A pure Fourier mode passes iff |k1| < modes and |k2| < modes; it comes out at the same frequency."""
    modes, n = 4, 16
    conv = SpectralConv2d(2, 3, modes).double()
    grid = torch.arange(n, dtype=torch.float64) / n
    X, Y = torch.meshgrid(grid, grid, indexing="ij")
    phase = 2 * math.pi * (k1 * X + k2 * Y)
    x = torch.stack([torch.cos(phase), torch.sin(phase)])[None]
    with torch.no_grad():
        out = conv(x)
    if not kept:
        assert out.abs().max() < 1e-12
        return
    assert out.abs().max() > 1e-3
    spec = torch.fft.fft2(out, norm="forward").abs().sum(dim=(0, 1))
    support = {(int(a), int(b)) for a, b in torch.nonzero(spec > 1e-10).tolist()}
    assert support <= {(k1 % n, k2 % n), (-k1 % n, -k2 % n)}


# ----------------------------------------------------------------------------------------- MLP


def test_mlp_shapes_and_errors():
    g = make_generator(8)
    assert MLP()(randn((4, 2), g), torch.zeros(4)).shape == (4, 2)
    assert MLP(dim=10, out_dim=3, depth=1)(randn((4, 10), g), torch.zeros(4)).shape == (4, 3)
    with pytest.raises(ValueError, match=r"\(B, 2\)"):
        MLP()(torch.zeros(4, 3), torch.zeros(4))
    with pytest.raises(ValueError):
        MLP(depth=0)


# ----------------------------------------------------------------------------------- embedding


@pytest.mark.usefixtures("no_global_rng")
def test_positional_features_formula():
    c = torch.tensor([-1.0, 0.0, 0.7], dtype=torch.float64)
    feats = positional_features(c, 6, min_freq=0.5, max_freq=8.0)
    freqs = torch.tensor([0.5, 2.0, 8.0], dtype=torch.float64)
    expected = torch.cat([torch.cos(c[:, None] * freqs), torch.sin(c[:, None] * freqs)], dim=1)
    torch.testing.assert_close(feats, expected)
    with pytest.raises(ValueError, match="even"):
        positional_features(c, 5)


@pytest.mark.usefixtures("no_global_rng")
def test_fourier_embedding_is_seeded_privately():
    a, b = FourierNoiseEmbedding(16, scale=2.0, seed=3), FourierNoiseEmbedding(16, scale=2.0, seed=3)
    assert torch.equal(a.freqs, b.freqs)
    assert not torch.equal(a.freqs, FourierNoiseEmbedding(16, scale=2.0, seed=4).freqs)
    c = torch.tensor([0.1, -0.4])
    out = a(c)
    torch.testing.assert_close(out[:, :8], torch.cos(2 * math.pi * c[:, None] * a.freqs))
    assert "freqs" in a.state_dict()


def test_noise_embedding_kinds():
    c = torch.linspace(-1.6, 1.1, 5)
    for kind in ("positional", "fourier"):
        emb = NoiseEmbedding(32, kind=kind)(c)
        assert emb.shape == (5, 32) and torch.isfinite(emb).all()
    with pytest.raises(ValueError, match="kind"):
        NoiseEmbedding(32, kind="sinusoid")


# ------------------------------------------------------------------------------ config schema


@pytest.mark.parametrize(
    "cls,args",
    [
        (UNet, ["--net.base_channels=8", "--net.channel_mult=[1, 2]", "--net.attn_levels=[1]", "--net.num_heads=2"]),
        (FNO, ["--net.width=8", "--net.modes=4"]),
        (MLP, ["--net.dim=3", "--net.out_dim=1"]),
    ],
)
def test_signatures_are_a_jsonargparse_schema(cls, args):
    """LightningCLI builds nets from their typed __init__; the schema must parse and instantiate."""
    jsonargparse = pytest.importorskip("jsonargparse")
    parser = jsonargparse.ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(cls, "net")
    instantiate = getattr(parser, "instantiate", None) or parser.instantiate_classes
    net = instantiate(parser.parse_args(args)).net
    assert isinstance(net, cls)
    assert parser.get_defaults().net is not None
