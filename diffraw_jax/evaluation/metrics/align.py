"""GT-to-output alignment for the "Align GT with result" protocol (LiteISPNet / DiffRAW Table 2).

LiteISPNet estimates optical flow from the network output to the DSLR ground truth
with a pretrained PWC-Net, backward-warps the GT with it (``grid_sample``: bilinear,
zero padding, ``align_corners=True``, i.e. pixel coordinates ``x + flow(x)``), warps a
ones image the same way to get a validity mask (1 where the warped ones are > 0.999,
else 0), multiplies the warped GT by the mask, and scores ``(output * mask,
warped_gt)``.

**Deviation:** we have no PWC-Net weights offline, so the flow is classical: OpenCV's
DIS optical flow (``cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)``,
variational refinement on) on the two images' grayscale uint8 versions (BT.601 luma).
DIS, like PWC-Net, assumes brightness constancy (its patch search is mean-normalised,
which absorbs a local brightness offset but not larger colour/tone differences), and
the two flows differ in detail, so numbers under this protocol are close to but not
identical with LiteISPNet's. The warp and the mask follow LiteISPNet exactly; a
PWC-Net (or any) flow can be passed in via ``flow=``.
"""
from __future__ import annotations

import numpy as np

from diffraw_jax import color

__all__ = ["dis_flow", "backward_warp", "align_gt_to_output", "to_gray_u8"]


def to_gray_u8(img01) -> np.ndarray:
    """``[H, W, 3]`` RGB (or ``[H, W]``) in [0, 1] -> ``[H, W]`` uint8 luma (BT.601, ``color.luma``)."""
    x = np.asarray(img01, np.float64)
    if x.ndim == 3:
        x = color.luma(x[..., :3]) if x.shape[-1] == 3 else x[..., 0]
    return np.round(np.clip(x, 0.0, 1.0) * 255.0).astype(np.uint8)


def dis_flow(src01, dst01, *, preset: str = "medium") -> np.ndarray:
    """Dense flow ``[H, W, 2]`` (dx, dy) with ``src(x) ~ dst(x + flow(x))``.

    ``preset``: ``"ultrafast"``, ``"fast"`` or ``"medium"`` (OpenCV DIS presets).
    """
    import cv2  # opencv-python-headless

    presets = {"ultrafast": cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST,
               "fast": cv2.DISOPTICAL_FLOW_PRESET_FAST,
               "medium": cv2.DISOPTICAL_FLOW_PRESET_MEDIUM}
    dis = cv2.DISOpticalFlow_create(presets[preset])
    a, b = to_gray_u8(src01), to_gray_u8(dst01)
    if a.shape != b.shape:
        raise ValueError(f"image sizes differ: {a.shape} vs {b.shape}")
    return dis.calc(a, b, None).astype(np.float32)


def backward_warp(image, flow) -> tuple[np.ndarray, np.ndarray]:
    """Samples ``image`` at ``x + flow(x)`` bilinearly with zero padding.

    ``image``: ``[H, W, C]``; ``flow``: ``[H, W, 2]`` (dx, dy) in pixels. Returns
    ``(warped * mask, mask)``, ``mask`` ``[H, W, 1]`` float32 0/1: 1 where a warped ones
    image exceeds 0.999 (all four bilinear neighbours in frame, up to 1e-3), as
    LiteISPNet's ``get_backwarp``.
    """
    img = np.asarray(image, np.float32)
    h, w = img.shape[:2]
    flow = np.asarray(flow, np.float32)
    gy, gx = np.mgrid[0:h, 0:w].astype(np.float32)
    x = gx + flow[..., 0]
    y = gy + flow[..., 1]
    x0 = np.floor(x).astype(np.int64)
    y0 = np.floor(y).astype(np.int64)
    fx = (x - x0)[..., None]
    fy = (y - y0)[..., None]
    src = np.concatenate([img, np.ones((h, w, 1), np.float32)], axis=-1)
    out = np.zeros_like(src)
    for dy, dx, wgt in ((0, 0, (1 - fy) * (1 - fx)), (0, 1, (1 - fy) * fx),
                        (1, 0, fy * (1 - fx)), (1, 1, fy * fx)):
        yy, xx = y0 + dy, x0 + dx
        inside = ((yy >= 0) & (yy < h) & (xx >= 0) & (xx < w))[..., None]
        vals = src[np.clip(yy, 0, h - 1), np.clip(xx, 0, w - 1)]
        out += np.where(inside, vals, 0.0) * wgt
    mask = (out[..., -1:] > 0.999).astype(np.float32)
    return out[..., :-1] * mask, mask


def align_gt_to_output(output, gt, *, flow=None, preset: str = "medium"):
    """Warps ``gt`` onto ``output``: ``(warped_gt, mask)``.

    ``output``, ``gt``: ``[H, W, 3]`` (-> ``[H, W, 3]``, ``[H, W, 1]``) or ``[B, H, W, 3]``
    (-> batched), RGB in [0, 1]. ``flow``: an optional precomputed flow from output to
    GT (``[.., H, W, 2]``, e.g. from PWC-Net); by default DIS flow (module docstring).
    Score ``(output * mask, warped_gt)`` to follow LiteISPNet.
    """
    out = np.asarray(output, np.float32)
    g = np.asarray(gt, np.float32)
    if out.shape != g.shape:
        raise ValueError(f"image shapes differ: {out.shape} vs {g.shape}")
    if out.ndim == 4:
        res = [align_gt_to_output(o, t, flow=None if flow is None else flow[i], preset=preset)
               for i, (o, t) in enumerate(zip(out, g))]
        return np.stack([r[0] for r in res]), np.stack([r[1] for r in res])
    f = dis_flow(out, g, preset=preset) if flow is None else np.asarray(flow, np.float32)
    return backward_warp(g, f)
