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
           "detail_statistics", "estimate_shift", "register", "fit_tone_curves", "apply_tone_curves", "texture_map",
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


# ---------------------------------------------------------------------- the 100%-view statistics
# (issue 28): noise and detail of a rendering against a reference rendering of the same RAW file.

#: Gaussian sigma (px) of the high-pass of the noise statistics (image minus its blur).
NOISE_SIGMA = 3.0
#: Share of the pixels (the flattest, by the reference's smoothed L* gradient) the noise is measured in.
FLAT_SHARE = 0.30
#: Sigmas (px) of the difference of Gaussians of the detail statistics (band-pass L*).
DETAIL_SIGMAS = (0.7, 2.5)
#: Share of the pixels (the most textured, by the same gradient) the detail is measured in.
TEXTURED_SHARE = 0.20
#: Gaussian sigma (px) of the L* gradient magnitude (the texture map, then blurred by NOISE_SIGMA).
GRADIENT_SIGMA = 1.5
#: Largest shift (px, each axis) the registration looks for; the border it crops.
MAX_SHIFT = 8
#: Gaussian sigma (px) of the blur both images get before the tone-curve fit (noise out of the fit).
TONE_FIT_SIGMA = 4.0
#: Bins (equal widths over the range of the rendering's blurred values) of the tone-curve fit.
TONE_BINS = 32


def estimate_shift(img01, ref01, max_shift: int = MAX_SHIFT) -> tuple:
    """The translation (dy, dx) in px (floats) with ``img(p) ~ ref(p - (dy, dx))``: phase correlation.

    ``img01``, ``ref01``: [H, W, 3] sRGB (or [H, W] grey) of one shape. Both lumas (BT.601) are
    blurred (sigma 1 px, against noise), Hann-windowed and mean-removed; the normalised cross-power
    spectrum's inverse FFT peaks at the shift. Only |dy|, |dx| <= ``max_shift`` are searched; the
    sub-pixel part is a parabola through the peak and its two neighbours on each axis (clamped to
    +-0.5). Returns floats; (0.0, 0.0) for identical images.
    """
    a, b = _luma_of(img01), _luma_of(ref01)
    if a.shape != b.shape:
        raise ValueError(f"image shapes differ: {a.shape} vs {b.shape}")
    h, w = a.shape
    if min(h, w) < 4 * max_shift + 8:
        raise ValueError(f"images of {h}x{w} are too small to register within +-{max_shift} px")
    win = np.hanning(h)[:, None] * np.hanning(w)[None, :]
    fa = np.fft.rfft2((_gaussian(a, 1.0) - a.mean()) * win)
    fb = np.fft.rfft2((_gaussian(b, 1.0) - b.mean()) * win)
    cross = fa * np.conj(fb)
    cross /= np.maximum(np.abs(cross), 1e-12)
    r = np.fft.irfft2(cross, s=(h, w))
    # only the shifts within +-max_shift: rows/columns 0..max_shift and -max_shift..-1 (wrapped)
    idx_y = np.r_[0:max_shift + 1, h - max_shift:h]
    idx_x = np.r_[0:max_shift + 1, w - max_shift:w]
    sub = r[np.ix_(idx_y, idx_x)]
    iy, ix = np.unravel_index(int(np.argmax(sub)), sub.shape)
    py, px = int(idx_y[iy]), int(idx_x[ix])

    def parabola(m1, c0, p1):
        den = m1 - 2 * c0 + p1
        return 0.0 if den >= 0 else float(np.clip(0.5 * (m1 - p1) / den, -0.5, 0.5))

    fy = parabola(r[(py - 1) % h, px], r[py, px], r[(py + 1) % h, px])
    fx = parabola(r[py, (px - 1) % w], r[py, px], r[py, (px + 1) % w])
    dy = (py if py <= h // 2 else py - h) + fy
    dx = (px if px <= w // 2 else px - w) + fx
    return float(dy), float(dx)


def register(img01, ref01, max_shift: int = MAX_SHIFT, shift=None) -> tuple:
    """``img01`` moved onto ``ref01``: (img [h, w, C], ref [h, w, C]) float64, both cropped by
    ``max_shift`` px on every side.

    The shift is ``shift`` (dy, dx) when given (already estimated), else :func:`estimate_shift`'s; its whole-pixel part moves the image exactly (a slice),
    a fractional part (|f| > 1e-3) is applied as a Fourier phase ramp (``scipy.ndimage.fourier_shift``,
    all-pass: the noise power is kept, unlike an interpolation) on the image reflect-padded by 16 px.
    """
    from scipy.ndimage import fourier_shift

    img = np.asarray(img01, np.float64)
    ref = np.asarray(ref01, np.float64)
    dy, dx = estimate_shift(img, ref, max_shift) if shift is None else shift
    iy, ix = int(np.round(dy)), int(np.round(dx))
    fy, fx = dy - iy, dx - ix
    if abs(fy) > 1e-3 or abs(fx) > 1e-3:
        pad = 16
        widths = ((pad, pad), (pad, pad)) + ((0, 0),) * (img.ndim - 2)
        padded = np.pad(img, widths, mode="reflect")
        spec = np.fft.fftn(padded, axes=(0, 1))
        shifted = fourier_shift(spec, (-fy, -fx) + (0,) * (img.ndim - 2), n=-1)
        img = np.real(np.fft.ifftn(shifted, axes=(0, 1)))[pad:-pad, pad:-pad]
    m = int(max_shift)
    h, w = ref.shape[:2]
    # img(p) ~ ref(p - d): ref's pixel q pairs with img's q + d
    return img[m + iy:h - m + iy, m + ix:w - m + ix], ref[m:h - m, m:w - m]


def _luma_of(img) -> np.ndarray:
    x = np.asarray(img, np.float64)
    if x.ndim == 3 and x.shape[-1] == 3:
        return color.luma(x)
    if x.ndim == 2:
        return x
    raise ValueError(f"expected [H, W, 3] or [H, W], got shape {x.shape}")


def fit_tone_curves(img01, ref01, sigma: float = TONE_FIT_SIGMA, bins: int = TONE_BINS) -> list:
    """Per channel, a monotone non-decreasing curve from the rendering's values onto the reference's.

    ``img01``, ``ref01``: [H, W, 3] of one shape (registered). Both are blurred (Gaussian
    ``sigma`` px) so that noise does not flatten the fit; per channel the range of the blurred
    rendering's values is cut into ``bins`` bins of equal width (not quantiles: a large flat area
    would fill many narrow quantile bins whose means follow the noise, and the curve would then
    squash or stretch exactly that noise); in each non-empty bin, the mean of the rendering and of
    the reference; the reference means are made non-decreasing by isotonic regression (weights: the
    bin counts, ``scipy.optimize.isotonic_regression``). Returns a list of 3 (knots_x, knots_y) pairs of
    float64 arrays; :func:`apply_tone_curves` interpolates them.
    """
    from scipy.optimize import isotonic_regression

    a = _gaussian(np.asarray(img01, np.float64), sigma)
    b = _gaussian(np.asarray(ref01, np.float64), sigma)
    curves = []
    for ch in range(a.shape[-1]):
        x, y = a[..., ch].ravel(), b[..., ch].ravel()
        lo, hi = float(x.min()), float(x.max())
        k = np.clip(((x - lo) / max(hi - lo, 1e-12) * bins).astype(np.int64), 0, bins - 1)
        counts = np.bincount(k, minlength=bins).astype(np.float64)
        keep = counts > 0
        sx = np.bincount(k, weights=x, minlength=bins)[keep] / counts[keep]
        sy = np.bincount(k, weights=y, minlength=bins)[keep] / counts[keep]
        curves.append((sx, isotonic_regression(sy, weights=counts[keep]).x))
    return curves


def apply_tone_curves(img01, curves) -> np.ndarray:
    """``img01`` [H, W, 3] through :func:`fit_tone_curves`' curves: linear interpolation between the
    knots (increasing x), continued beyond the end knots with slope 1 (so the identity stays the
    identity; one knot: a constant offset). float64."""
    x = np.asarray(img01, np.float64)
    out = np.empty_like(x)
    for ch, (kx, ky) in enumerate(curves):
        v = x[..., ch]
        r = np.interp(v, kx, ky)
        r = np.where(v < kx[0], v - kx[0] + ky[0], r)
        out[..., ch] = np.where(v > kx[-1], v - kx[-1] + ky[-1], r)
    return out


def texture_map(lab_l) -> np.ndarray:
    """The reference's smoothed L* gradient [H, W] (float64; low = flat, high = textured): the
    gradient magnitude of L* at a Gaussian scale of ``GRADIENT_SIGMA`` px
    (``scipy.ndimage.gaussian_gradient_magnitude``), then blurred by a Gaussian of ``NOISE_SIGMA``
    px (reflect borders). The blur spreads an edge's gradient over the pixels whose high-pass
    (image minus its sigma-3 blur) it reaches, so the flattest pixels are flat in the whole
    neighbourhood the noise statistic looks at, not only at their own position."""
    from scipy.ndimage import gaussian_gradient_magnitude

    g = gaussian_gradient_magnitude(np.asarray(lab_l, np.float64), GRADIENT_SIGMA, mode="reflect")
    return _gaussian(g, NOISE_SIGMA)


def detail_statistics(img01, ref01, *, register_images: bool = True, match_tone: bool = True,
                      max_shift: int = MAX_SHIFT) -> dict:
    """The 100%-view statistics of issue 28: noise and detail of a rendering against a reference.

    ``img01``, ``ref01``: sRGB renderings [H, W, 3] of one RAW file, one shape, values in [0, 1]
    (numpy or JAX, any float dtype). Definition:

    1. Register (``register_images``): ``img01`` is moved onto ``ref01`` (:func:`register`:
       phase correlation within +-``max_shift`` px); both lose a ``max_shift`` px border.
    2. Match tone curves (``match_tone``): per channel a monotone curve from the rendering onto the
       reference (:func:`fit_tone_curves`, fitted on sigma-4 blurs), applied to the rendering, which
       is then clipped to [0, 1]. Exposure and tone-curve slope do not count as noise or detail.
    3. CIELAB (D65) of both (``color.srgb_to_lab``). The texture map is the reference's smoothed L*
       gradient (:func:`texture_map`: gradient magnitude at 1.5 px, blurred by 3 px); the flat set is its lowest ``FLAT_SHARE`` (30%) of pixels,
       the textured set its highest ``TEXTURED_SHARE`` (20%).
    4. Noise: the high-pass of each of L*, a*, b* (the channel minus its Gaussian blur of
       ``NOISE_SIGMA`` = 3 px); over the flat set, ``luma_noise`` = std(L*_hp of img) /
       std(L*_hp of ref); ``chroma_noise`` = sqrt(var(a*_hp) + var(b*_hp)) of img over that of ref.
    5. Detail: the band-pass of L* (Gaussian 0.7 px minus Gaussian 2.5 px: ``DETAIL_SIGMAS``); over
       the textured set, ``detail_energy`` = sum(bp_img**2) / sum(bp_ref**2) (a ratio of energies,
       i.e. of squared amplitudes), ``detail_correlation`` = the Pearson correlation of bp_img and
       bp_ref.

    Identical images give 1 / 1 / 1 / 1. Returns a dict of floats: ``chroma_noise``,
    ``luma_noise``, ``detail_energy``, ``detail_correlation``, ``shift`` ((dy, dx) px, (0, 0) when
    not registered) and the reference's own ``ref_luma_noise``, ``ref_chroma_noise`` (L*/a*b* units).
    Raises ``ValueError`` for shapes that are not [H, W, 3], differ, or non-finite values.
    """
    o, r = _rgb(img01, "img01"), _rgb(ref01, "ref01")
    if o.shape != r.shape:
        raise ValueError(f"image shapes differ: {o.shape} vs {r.shape}")
    shift = (0.0, 0.0)
    if register_images:
        shift = estimate_shift(o, r, max_shift)
        o, r = register(o, r, max_shift, shift)  # one phase correlation, not two
    if match_tone:
        o = np.clip(apply_tone_curves(o, fit_tone_curves(o, r)), 0.0, 1.0)
    lab_o, lab_r = color.srgb_to_lab(o), color.srgb_to_lab(r)
    tex = texture_map(lab_r[..., 0])
    flat = tex <= np.quantile(tex, FLAT_SHARE)
    textured = tex >= np.quantile(tex, 1.0 - TEXTURED_SHARE)
    hp_o = lab_o - _gaussian(lab_o, NOISE_SIGMA)
    hp_r = lab_r - _gaussian(lab_r, NOISE_SIGMA)
    std = lambda v: float(np.std(v[flat]))  # noqa: E731
    luma_o, luma_r = std(hp_o[..., 0]), std(hp_r[..., 0])
    chroma_o = float(np.hypot(std(hp_o[..., 1]), std(hp_o[..., 2])))
    chroma_r = float(np.hypot(std(hp_r[..., 1]), std(hp_r[..., 2])))
    s0, s1 = DETAIL_SIGMAS
    bp_o = (_gaussian(lab_o[..., 0], s0) - _gaussian(lab_o[..., 0], s1))[textured]
    bp_r = (_gaussian(lab_r[..., 0], s0) - _gaussian(lab_r[..., 0], s1))[textured]
    e_r = float(bp_r @ bp_r)
    return {"chroma_noise": _ratio(chroma_o, chroma_r), "luma_noise": _ratio(luma_o, luma_r),
            "detail_energy": _ratio(float(bp_o @ bp_o), e_r),
            "detail_correlation": float(np.corrcoef(bp_o, bp_r)[0, 1]) if e_r > 0 and bp_o.std() > 0 else 0.0,
            "shift": [float(shift[0]), float(shift[1])],
            "ref_luma_noise": luma_r, "ref_chroma_noise": chroma_r}


def _ratio(a: float, b: float) -> float:
    if b == 0:
        return 1.0 if a == 0 else float("inf")
    return a / b
