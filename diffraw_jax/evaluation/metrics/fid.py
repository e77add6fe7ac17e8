"""FID: the Fréchet distance between Gaussian fits of Inception pool3 features.

``d^2 = |mu1 - mu2|^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2))``.

:func:`frechet_distance` follows pytorch-fid's ``calculate_frechet_distance``
(``scipy.linalg.sqrtm`` of ``S1 @ S2``; if that is not finite, ``eps * I`` is added to
both covariances; a small imaginary part from round-off is dropped, a large one is an
error), and falls back to / can be asked for an eigenvalue route that is exact for
symmetric PSD inputs and robust when the covariances are singular (fewer images than
feature dimensions, as on ZRR's test split): ``tr((S1 S2)^(1/2)) = sum sqrt(eig(
S1^(1/2) S2 S1^(1/2)))``.

The Inception network itself needs weights that are not available offline, so
:func:`compute_fid` refuses to run without ``fid_inception_weights`` (see
:mod:`diffraw_jax.evaluation.metrics.inception`); it never returns a placeholder value.
"""
from __future__ import annotations

import numpy as np
import scipy.linalg

__all__ = ["frechet_distance", "feature_stats", "fid_from_features", "compute_fid", "FIDAccumulator",
           "FIDWeightsMissing"]


class FIDWeightsMissing(RuntimeError):
    """Raised when FID is requested without Inception weights."""


_NO_WEIGHTS = ("FID needs Inception weights: pass fid_inception_weights=PATH to an .npz of the "
               "pytorch-fid Inception-v3 (pt_inception-2015-12-05) state dict or of our Flax layout "
               "(see diffraw_jax.evaluation.metrics.inception). They are not shipped with any installed package "
               "and are not downloaded.")


def feature_stats(features) -> tuple[np.ndarray, np.ndarray]:
    """``(mu [D], sigma [D, D])`` of ``[N, D]`` features (float64, unbiased covariance)."""
    f = np.asarray(features, np.float64)
    if f.ndim != 2 or f.shape[0] < 2:
        raise ValueError(f"need [N, D] features with N >= 2, got {f.shape}")
    return f.mean(0), np.cov(f, rowvar=False)


def _psd_sqrt(s):
    w, v = np.linalg.eigh((s + s.T) / 2.0)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def _trace_sqrt_product_eigh(s1, s2):
    r = _psd_sqrt(s1)
    m = r @ s2 @ r
    w = np.linalg.eigvalsh((m + m.T) / 2.0)
    return float(np.sum(np.sqrt(np.clip(w, 0.0, None))))


def _trace_sqrt_product_sqrtm(s1, s2, eps):
    covmean = scipy.linalg.sqrtm(s1 @ s2)
    if not np.isfinite(covmean).all():
        offset = np.eye(s1.shape[0]) * eps
        covmean = scipy.linalg.sqrtm((s1 + offset) @ (s2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise ValueError(f"imaginary component {np.max(np.abs(covmean.imag))} in sqrtm(S1 S2)")
        covmean = covmean.real
    return float(np.trace(covmean))


def frechet_distance(mu1, sigma1, mu2, sigma2, *, eps: float = 1e-6, method: str = "sqrtm") -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2) (the squared one, as FID).

    ``method``: ``"sqrtm"`` (pytorch-fid; falls back to ``"eigh"`` if sqrtm fails or is
    not finite) or ``"eigh"`` (symmetric eigendecompositions only).
    """
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    s1, s2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != (mu1.size, mu1.size):
        raise ValueError(f"shape mismatch: mu {mu1.shape}/{mu2.shape}, sigma {s1.shape}/{s2.shape}")
    diff = mu1 - mu2
    if method == "eigh":
        tr = _trace_sqrt_product_eigh(s1, s2)
    elif method == "sqrtm":
        try:
            tr = _trace_sqrt_product_sqrtm(s1, s2, eps)
            if not np.isfinite(tr):
                raise ValueError("non-finite trace")
        except (ValueError, np.linalg.LinAlgError):
            tr = _trace_sqrt_product_eigh(s1, s2)
    else:
        raise ValueError(f"unknown method {method!r}")
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * tr)


def fid_from_features(features1, features2, *, method: str = "auto", eps: float = 1e-6) -> float:
    """FID of two ``[N, D]`` feature sets.

    ``method``: ``"sqrtm"`` / ``"eigh"`` (see :func:`frechet_distance`), or ``"svd"``: with
    centred features ``A1 [n1, D]``, ``A2 [n2, D]``, ``tr((S1 S2)^(1/2)) = ||A1 A2^T||_* /
    sqrt((n1 - 1)(n2 - 1))`` (nuclear norm: the nonzero eigenvalues of ``S1 S2`` are the
    squared singular values of ``A1 A2^T`` over ``(n1 - 1)(n2 - 1)``), exact and cheap
    when there are fewer images than dimensions, where the D x D routes are both slow
    and ill-conditioned. ``"auto"``: ``"svd"`` if ``min(n1, n2) <= D``, else ``"sqrtm"``.
    """
    f1 = np.asarray(features1, np.float64)
    f2 = np.asarray(features2, np.float64)
    for f in (f1, f2):
        if f.ndim != 2 or f.shape[0] < 2:
            raise ValueError(f"need [N, D] features with N >= 2, got {f.shape}")
    if f1.shape[1] != f2.shape[1]:
        raise ValueError(f"feature dimensions differ: {f1.shape} vs {f2.shape}")
    if method == "auto":
        method = "svd" if min(f1.shape[0], f2.shape[0]) <= f1.shape[1] else "sqrtm"
    if method == "svd":
        mu1, mu2 = f1.mean(0), f2.mean(0)
        a1, a2 = f1 - mu1, f2 - mu2
        n1, n2 = f1.shape[0] - 1, f2.shape[0] - 1
        nuc = np.linalg.svd(a1 @ a2.T, compute_uv=False).sum()
        diff = mu1 - mu2
        return float(diff @ diff + np.sum(a1 * a1) / n1 + np.sum(a2 * a2) / n2
                     - 2.0 * nuc / np.sqrt(n1 * n2))
    mu1, s1 = feature_stats(f1)
    mu2, s2 = feature_stats(f2)
    return frechet_distance(mu1, s1, mu2, s2, method=method, eps=eps)


def _load_weights(fid_inception_weights):
    if fid_inception_weights is None or fid_inception_weights == "":
        raise FIDWeightsMissing(_NO_WEIGHTS)
    from diffraw_jax.evaluation.metrics import inception

    if isinstance(fid_inception_weights, dict):
        return fid_inception_weights
    return inception.load_inception_params(str(fid_inception_weights))


class FIDAccumulator:
    """Collects Inception features of two image streams batch by batch; ``result()`` is the FID.

    ``fid_inception_weights``: a path (see :mod:`~diffraw_jax.evaluation.metrics.inception`) or an
    already-loaded ``{'params': ...}``; ``None`` raises :class:`FIDWeightsMissing` here,
    before any work is done.
    """

    def __init__(self, fid_inception_weights=None, *, batch_size: int = 16, resize: bool = True):
        self.variables = _load_weights(fid_inception_weights)
        self.batch_size = batch_size
        self.resize = resize
        self._a: list[np.ndarray] = []
        self._b: list[np.ndarray] = []

    def features(self, images) -> np.ndarray:
        from diffraw_jax.evaluation.metrics import inception

        return inception.inception_features(images, self.variables, batch_size=self.batch_size,
                                            resize=self.resize)

    def update(self, images_a, images_b) -> None:
        """Adds a batch of each set (``[B, H, W, 3]`` in [0, 1]; ``None`` to skip one)."""
        if images_a is not None:
            self._a.append(self.features(images_a))
        if images_b is not None:
            self._b.append(self.features(images_b))

    @property
    def counts(self) -> tuple[int, int]:
        return sum(len(f) for f in self._a), sum(len(f) for f in self._b)

    def result(self, **kw) -> float:
        if not self._a or not self._b:
            raise ValueError("FIDAccumulator: no images added")
        return fid_from_features(np.concatenate(self._a), np.concatenate(self._b), **kw)


def compute_fid(images_a, images_b, *, fid_inception_weights=None, batch_size: int = 16,
                resize: bool = True, **kw) -> float:
    """FID between two image sets ``[N, H, W, 3]`` in [0, 1] (N >= 2 each).

    Raises :class:`FIDWeightsMissing` ("FID needs Inception weights: ...") without
    ``fid_inception_weights``. ``resize=False`` skips pytorch-fid's 299x299 resize (tests).
    """
    acc = FIDAccumulator(fid_inception_weights, batch_size=batch_size, resize=resize)
    acc.update(images_a, images_b)
    return acc.result(**kw)
