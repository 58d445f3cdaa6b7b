"""Sample-quality metrics against closed forms (sliced W2 and MMD of shifted Gaussians, ESS of known
weights and of AR(1) chains)."""
import math

import pytest
import torch

from diffpost.metrics import (autocorrelation_ess, effective_sample_size, integrated_autocorrelation_time, log_z_error, mmd,
                              mode_masses, sliced_wasserstein2)
from diffpost.random import make_generator, randn

pytestmark = pytest.mark.usefixtures("no_global_rng")

F64 = torch.float64


def _gauss(n, d, seed, shift=None):
    x = randn((n, d), make_generator(seed), dtype=F64)
    return x if shift is None else x + shift


def test_sliced_w2_of_a_shift_is_norm_over_sqrt_d():
    # y = x + δ point by point: every 1-D projection is shifted by θᵀδ, so W2(θ) = |θᵀδ| exactly and
    # SW2² = E_θ(θᵀδ)² = ‖δ‖²/d; only the projections are random (4096 of them: ~2% MC error)
    d = 4
    delta = torch.tensor([1.0, -2.0, 0.5, 1.5], dtype=F64)
    x = _gauss(500, d, 0)
    sw = sliced_wasserstein2(x, x + delta, n_projections=4096, generator=make_generator(1))
    assert float(sw) == pytest.approx(float(delta.norm()) / math.sqrt(d), rel=0.03)


def test_sliced_w2_same_law_small_shifted_law_matches_closed_form():
    d = 3
    delta = torch.tensor([1.5, 0.0, -1.0], dtype=F64)
    x, y, z = _gauss(4000, d, 0), _gauss(4000, d, 1), _gauss(4000, d, 2, delta)
    g = make_generator(3)
    same = float(sliced_wasserstein2(x, y, 512, g))
    shifted = float(sliced_wasserstein2(x, z, 512, g))
    exact = float(delta.norm()) / math.sqrt(d)  # ≈ 1.04
    assert same < 0.06
    assert shifted == pytest.approx(exact, abs=0.06)
    # unequal sample sizes go through quantile interpolation and agree
    assert float(sliced_wasserstein2(x, z[:1500], 512, make_generator(3))) == pytest.approx(exact, abs=0.08)


def test_sliced_w2_is_reproducible_with_a_generator_and_checks_input():
    x, y = _gauss(100, 2, 0), _gauss(100, 2, 1)
    a = sliced_wasserstein2(x, y, 16, make_generator(5))
    b = sliced_wasserstein2(x, y, 16, make_generator(5))
    assert torch.equal(a, b)
    with pytest.raises(ValueError, match="dimension"):
        sliced_wasserstein2(x, _gauss(100, 3, 0), 16, make_generator(0))
    with pytest.raises(ValueError, match="non-finite"):
        sliced_wasserstein2(x, torch.full((10, 2), float("nan"), dtype=F64), 16, make_generator(0))


def test_mmd_against_closed_form_for_shifted_gaussians():
    # RBF kernel, x ~ N(a, I), x' ~ N(b, I): x − x' ~ N(a − b, 2I) and
    # E exp(−‖z‖²/(2h²)) = (h²/(h² + 2))^{d/2} exp(−‖a − b‖²/(2(h² + 2))), hence
    # MMD² = 2 (h²/(h² + 2))^{d/2} (1 − exp(−‖δ‖²/(2(h² + 2)))).
    d, h = 2, 1.5
    delta = torch.tensor([1.0, 0.5], dtype=F64)
    x, y, z = _gauss(2000, d, 0), _gauss(2000, d, 1), _gauss(2000, d, 2, delta)
    c = (h**2 / (h**2 + 2)) ** (d / 2)
    exact = 2 * c * (1 - math.exp(-float(delta @ delta) / (2 * (h**2 + 2))))
    assert float(mmd(x, z, bandwidth=h)) == pytest.approx(exact, abs=0.01)  # exact ≈ 0.13
    assert abs(float(mmd(x, y, bandwidth=h))) < 0.005


def test_mmd_median_heuristic_and_imq_kernel_separate_laws():
    x, y, z = _gauss(800, 3, 0), _gauss(800, 3, 1), _gauss(800, 3, 2, 1.0)
    for kernel in ("rbf", "imq"):
        same, diff = float(mmd(x, y, kernel=kernel)), float(mmd(x, z, kernel=kernel))
        assert abs(same) < 0.01 and diff > 0.1, (kernel, same, diff)
    with pytest.raises(ValueError, match="kernel"):
        mmd(x, y, kernel="cosine")


def test_mode_masses_nearest_mode():
    modes = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]], dtype=F64)
    x = torch.tensor([[0.5, 0.2], [9.0, 1.0], [11.0, -1.0], [1.0, 8.0]], dtype=F64)
    assert torch.equal(mode_masses(x, modes), torch.tensor([0.25, 0.5, 0.25], dtype=F64))
    with pytest.raises(ValueError, match="modes"):
        mode_masses(x, torch.zeros(3, 3, dtype=F64))


def test_effective_sample_size_known_values():
    n = 100
    assert float(effective_sample_size(torch.zeros(n, dtype=F64))) == pytest.approx(1.0)
    # invariant to a common offset (log-weights far from 0 do not overflow)
    assert float(effective_sample_size(torch.full((n,), 5000.0, dtype=F64))) == pytest.approx(1.0)
    one = torch.full((n,), -1e3, dtype=F64)
    one[7] = 0.0
    assert float(effective_sample_size(one)) == pytest.approx(1.0 / n)
    # half the weights 1, half 3: (Σw)²/(n Σw²) = (2n)² / (n · 5n) = 0.8
    lw = torch.log(torch.tensor([1.0, 3.0] * (n // 2), dtype=F64))
    assert float(effective_sample_size(lw)) == pytest.approx(0.8)
    # batched over rows; zero weights (−inf) allowed
    batched = torch.stack([torch.zeros(4, dtype=F64), torch.tensor([0.0, 0.0, float("-inf"), float("-inf")], dtype=F64)])
    assert torch.allclose(effective_sample_size(batched), torch.tensor([1.0, 0.5], dtype=F64))
    with pytest.raises(ValueError, match="NaN"):
        effective_sample_size(torch.tensor([0.0, float("nan")]))


def _ar1(n_steps, n_chains, rho, seed):
    g = make_generator(seed)
    eps = randn((n_steps, n_chains, 1), g, dtype=F64)
    x = torch.empty_like(eps)
    x[0] = eps[0] / math.sqrt(1 - rho**2)  # stationary start: Var = 1/(1 − ρ²)
    for t in range(1, n_steps):
        x[t] = rho * x[t - 1] + eps[t]
    return x


def test_autocorrelation_ess_iid_and_ar1():
    n, m = 5000, 4
    iid = randn((n, m, 2), make_generator(0), dtype=F64)
    ess = autocorrelation_ess(iid)
    assert ess.shape == (2,)
    assert torch.all((ess > 0.85 * n * m) & (ess < 1.2 * n * m)), ess
    # AR(1) with coefficient ρ: integrated autocorrelation time (1 + ρ)/(1 − ρ) = 3 for ρ = 0.5
    ar = _ar1(n, m, 0.5, 1)
    assert float(autocorrelation_ess(ar)[0]) == pytest.approx(n * m / 3, rel=0.15)
    # single-chain and 1-D input shapes
    assert float(autocorrelation_ess(ar[:, 0, 0])) == pytest.approx(n / 3, rel=0.25)


def test_integrated_autocorrelation_time_is_batched_and_flags_constant_chains():
    # AR(1), ρ = 0.5 and 0.8: τ = (1 + ρ)/(1 − ρ) = 3 and 9, in one call with a leading batch dimension;
    # each batch entry equals the unbatched result (catches a reduction over the wrong axis)
    n, m = 4000, 4
    chains = torch.stack([_ar1(n, m, 0.5, 2), _ar1(n, m, 0.8, 3)])  # (2, n, m, 1)
    tau = integrated_autocorrelation_time(chains)
    assert tau.shape == (2, 1)
    assert float(tau[0, 0]) == pytest.approx(3.0, rel=0.15) and float(tau[1, 0]) == pytest.approx(9.0, rel=0.2)
    assert torch.allclose(tau[1], integrated_autocorrelation_time(chains[1]), rtol=1e-12)
    flat = torch.cat([chains[0], torch.ones(n, m, 1, dtype=F64)], -1)
    assert integrated_autocorrelation_time(flat)[1] == math.inf


def test_log_z_error():
    assert float(log_z_error(1.5, 1.2)) == pytest.approx(0.3)
    assert torch.allclose(log_z_error(torch.tensor([0.0, 2.0]), 1.0), torch.tensor([1.0, 1.0], dtype=F64))
    with pytest.raises(ValueError):
        log_z_error(float("nan"), 0.0)


# ---------------------------------------------------------------- image quality (core, no torchmetrics)
@pytest.mark.parametrize("channels", [1, 3])
def test_psnr_ssim_match_scikit_image(channels):
    """``diffpost.image_quality`` keeps its own PSNR/SSIM (torchmetrics imports torchvision, which the
    core must not); scikit-image is the independent oracle. Catches a wrong data range or [-1, 1] →
    [0, 1] map, a missing clamp of overshooting reconstructions, a wrong window, and SSIM averaged over
    a padded border."""
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    from diffpost.image_quality import psnr, ssim

    g = make_generator(0)
    x = 2 * torch.rand((3, channels, 24, 20), generator=g, dtype=F64) - 1
    x_hat = x + 0.4 * randn(x.shape, g, dtype=F64)  # overshoots [-1, 1]: both sides clamp
    a, b = (((t + 1) / 2).clamp(0, 1).permute(0, 2, 3, 1).numpy() for t in (x_hat, x))
    expected_psnr = [peak_signal_noise_ratio(t, e, data_range=1.0) for t, e in zip(b, a)]
    expected_ssim = [structural_similarity(t, e, data_range=1.0, gaussian_weights=True, sigma=1.5,
                                           use_sample_covariance=False, channel_axis=-1) for t, e in zip(b, a)]
    assert psnr(x_hat, x).tolist() == pytest.approx(expected_psnr, abs=1e-9)
    assert ssim(x_hat, x).tolist() == pytest.approx(expected_ssim, abs=1e-9)
