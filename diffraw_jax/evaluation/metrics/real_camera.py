"""The two statistics of a rendering of a real camera file (issue 21): low-pass colour against a
reference rendering, and the strength of a periodic lattice.

* :func:`low_pass_color_difference` -- how far the colour of ``out01`` is from ``ref01`` once
  detail and overall exposure are taken out: CIEDE2000 between Gaussian low-passes, after
  one exposure gain. A colour cast shows here; texture and noise do not.
* :func:`lattice_statistic` -- how much stronger the image's row/column-coherent energy is at
  one period (16 px: three Haar levels of 2x2-packed planes) than at its neighbouring periods.
  A natural photograph has no line in its profile spectra (values ~1-5); a lattice drawn
  over the whole frame, even at 1/255 of amplitude, gives tens to thousands.

numpy and scipy only (float64 inside); inputs may be numpy or JAX arrays.
"""
from __future__ import annotations

import numpy as np

from diffraw_jax import color

__all__ = ["LOWPASS_SIGMA", "LATTICE_SIGMA", "low_pass_color_difference", "exposure_gain",
           "lattice_statistic", "lattice_ratios", "periodic_peak_ratio", "check_lattice_size"]

#: Default Gaussian sigma (pixels of the compared images) of :func:`low_pass_color_difference`.
LOWPASS_SIGMA = 8.0
#: Gaussian sigma (pixels) of the blur :func:`lattice_statistic` subtracts from the luma.
LATTICE_SIGMA = 6.0


def _gaussian(img: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur over the first two axes of [H, W] or [H, W, C] (reflect borders, 4 sigma)."""
    from scipy.ndimage import gaussian_filter

    sig = (sigma, sigma) + (0,) * (img.ndim - 2)
    return gaussian_filter(img, sigma=sig, mode="reflect", truncate=4.0)


def _rgb(img01, name: str) -> np.ndarray:
    x = np.asarray(img01, np.float64)
    if x.ndim != 3 or x.shape[-1] != 3:
        raise ValueError(f"{name} must be an RGB image [H, W, 3], got shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{name} has non-finite values")
    return x


def exposure_gain(out_lin, ref_lin) -> float:
    """The one gain g minimising ``sum((g * out_lin - ref_lin) ** 2)`` over every pixel and
    channel (least squares through the origin): ``<out, ref> / <out, out>``. Arrays of one
    shape, linear light (float); 1.0 when ``out_lin`` is all zero."""
    o = np.asarray(out_lin, np.float64).ravel()
    r = np.asarray(ref_lin, np.float64).ravel()
    oo = float(o @ o)
    return float(o @ r) / oo if oo > 0 else 1.0


def low_pass_color_difference(out01, ref01, sigma: float = LOWPASS_SIGMA, *,
                              match_exposure: bool = True) -> dict:
    """Low-pass colour difference of a rendering ``out01`` against a reference ``ref01``.

    Both are sRGB-encoded images [H, W, 3] of one shape, values in [0, 1] (clipped to it),
    numpy or JAX, any float dtype. Definition:

    1. Linearise both with the inverse sRGB curve (``color.srgb_to_linear``).
    2. Low-pass both: a Gaussian blur of sigma ``sigma`` pixels (default 8 px of the
       given images; reflect borders, truncated at 4 sigma), per channel, in linear light.
    3. Match exposure with ONE gain applied to the output: g = least squares
       (:func:`exposure_gain`) of ``g * out_lp`` against ``ref_lp`` over all pixels and
       channels. ``match_exposure=False`` keeps g = 1.
    4. CIELAB (D65, white Y = 1) of ``g * out_lp`` and ``ref_lp`` (``color.xyz_to_lab``; a
       gained value above 1 gives L > 100, not clipped), then CIEDE2000
       (``color.delta_e_2000``) per pixel.

    Returns a dict of floats: ``mean``, ``median``, ``p95`` (95th percentile) of the
    per-pixel CIEDE2000 map, and ``gain`` (g). Raises ``ValueError`` for shapes that are not
    [H, W, 3], differ, or non-finite values.
    """
    o, r = _rgb(out01, "out01"), _rgb(ref01, "ref01")
    if o.shape != r.shape:
        raise ValueError(f"image shapes differ: {o.shape} vs {r.shape}")
    if not sigma > 0:
        raise ValueError(f"sigma must be > 0, got {sigma}")
    lo = _gaussian(color.srgb_to_linear(np.clip(o, 0.0, 1.0)), sigma)
    lr = _gaussian(color.srgb_to_linear(np.clip(r, 0.0, 1.0)), sigma)
    g = exposure_gain(lo, lr) if match_exposure else 1.0
    lab_o = color.xyz_to_lab(color.linear_srgb_to_xyz(g * lo))
    lab_r = color.xyz_to_lab(color.linear_srgb_to_xyz(lr))
    de = color.delta_e_2000(lab_o, lab_r)
    return {"mean": float(np.mean(de)), "median": float(np.median(de)),
            "p95": float(np.percentile(de, 95)), "gain": float(g)}


def _bins(n: int, period: float, rel_band: float = 0.25):
    """(peak bins, neighbour bins) of an rfft of n samples (see :func:`periodic_peak_ratio`)."""
    f = n / float(period)
    peak_bins = sorted({int(np.floor(f)), int(np.ceil(f))})
    k = np.arange(1, n // 2 + 1)
    periods = n / k
    near = (periods >= period * (1 - rel_band)) & (periods <= period * (1 + rel_band))
    near &= ~np.isin(k, peak_bins)
    if near.sum() < 4 or peak_bins[0] < 1 or peak_bins[-1] > n // 2:
        raise ValueError(f"a profile of {n} samples is too short to measure a period of {period} "
                         f"(needs at least 4 neighbouring frequencies within +-{rel_band:.0%})")
    return peak_bins, k[near]


def check_lattice_size(height: int, width: int, period: float = 16) -> None:
    """ValueError (saying why) when an image of height x width is too small for
    :func:`lattice_statistic` at ``period`` (each side needs ~10 periods: 160 px for 16)."""
    _bins(int(width), period)
    _bins(int(height), period)


def periodic_peak_ratio(profile, period: float, rel_band: float = 0.25) -> float:
    """Power of a 1-D ``profile`` [N] at ``period`` samples over the median power of its
    neighbouring frequencies.

    The power spectrum is ``|rfft(profile - mean)|**2`` (no window); bin k has period N / k.
    The peak is the largest power among the bins floor(N / period) and ceil(N / period) (one
    bin when N / period is an integer). The neighbours are every other bin whose period lies
    within ``period * (1 -+ rel_band)`` (+-25% by default). Returns peak / median(neighbours)
    (float >= 0; ``inf`` when the neighbours have zero power and the peak does not, 0 for a
    constant profile). Raises ``ValueError`` when fewer than 4 neighbour bins exist (a
    profile too short for the period).
    """
    p = np.asarray(profile, np.float64)
    if p.ndim != 1:
        raise ValueError(f"profile must be 1-D, got shape {p.shape}")
    power = np.abs(np.fft.rfft(p - p.mean())) ** 2
    peak_bins, near = _bins(p.shape[0], period, rel_band)
    peak = float(power[peak_bins].max())
    ref = float(np.median(power[near]))
    if ref == 0:
        return float("inf") if peak > 0 else 0.0
    return peak / ref


def lattice_ratios(img01, period: float = 16, sigma: float = LATTICE_SIGMA) -> dict:
    """The two profile ratios behind :func:`lattice_statistic`: ``{"columns": ..., "rows": ...}``.

    ``img01``: sRGB image [H, W, 3] (or a luma/grey image [H, W]) in [0, 1], numpy or JAX.
    The luma (``color.luma``, BT.601 of the encoded values) minus its Gaussian blur of
    sigma ``sigma`` px (reflect borders) is averaged over the rows (-> the column profile,
    [W]; a lattice of vertical lines) and over the columns (-> the row profile, [H];
    horizontal lines); each profile's :func:`periodic_peak_ratio` at ``period`` px.
    """
    x = np.asarray(img01, np.float64)
    if x.ndim == 3 and x.shape[-1] == 3:
        y = color.luma(x)
    elif x.ndim == 2:
        y = x
    else:
        raise ValueError(f"img01 must be [H, W, 3] or [H, W], got shape {x.shape}")
    if not np.all(np.isfinite(y)):
        raise ValueError("img01 has non-finite values")
    check_lattice_size(*y.shape, period)
    hp = y - _gaussian(y, sigma)
    return {"columns": periodic_peak_ratio(hp.mean(axis=0), period),
            "rows": periodic_peak_ratio(hp.mean(axis=1), period)}


def lattice_statistic(img01, period: float = 16, sigma: float = LATTICE_SIGMA) -> float:
    """The lattice statistic of issue 21: the MAX over the column and row profiles of
    :func:`lattice_ratios` (see there for the exact definition).

    ``img01``: sRGB [H, W, 3] (or grey [H, W]) in [0, 1]; both sides at least ~5 periods
    long. Returns a float: ~1-5 for an image without a lattice at ``period`` (a photograph,
    a classical ISP's rendering), >> 10 with one; e.g. a 1/255 grid of 16-px period over a
    768x512 image of 1/f noise gives hundreds.
    """
    r = lattice_ratios(img01, period, sigma)
    return float(max(r["columns"], r["rows"]))
