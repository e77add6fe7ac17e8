"""A camera RAW file's noise against the training generators' noise (issue 28, item 3).

    python scripts/raw_noise.py --input FILE [--draws 20000]

Measures the file's noise (``raw.noise_profile`` of its normalised planes: variance = shot x signal
+ read**2, from its flattest blocks) and puts it on the generators' scale (10-bit codes, white -
black = 957) and on the scale that matters for the rendering: the relative noise (std / signal) of
a mid-grey output (linear 0.18 of the green channel) at the EV the file is rendered at
(``calibration.inference_exposure``). The same figure for the generators' draws: the shipped data's
(``synthetic_zrr.unprocess``: shot log-U(SHOT_RANGE), read log-U(READ_RANGE), its exposure draw)
and the photograph set's (``photos.draw_noise`` with the same exposure draw): percentiles and the
share of pairs at most as noisy as the file. Prints a Markdown summary; numpy only, seconds.
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

CODES = 957.0  # synthetic_zrr.WHITE_LEVEL - BLACK_LEVEL


def exposure_draw(rng) -> float:
    """The exposure ``synthetic_zrr.unprocess`` draws (dark / bright / normal)."""
    from diffraw_jax.data import synthetic_zrr as sz

    u = rng.uniform()
    if u < sz.DARK_SHARE:
        return float(np.exp(rng.uniform(np.log(sz.DARK_EXPOSURE[0]), np.log(sz.DARK_EXPOSURE[1]))))
    return float(rng.uniform(0.85, 1.0) if u < sz.DARK_SHARE + 0.2 else rng.uniform(0.3, 0.85))


def relative_mid_grey(shot_codes, read_codes, exposure) -> np.ndarray:
    """std / signal of a mid-grey (linear 0.18, green) target pixel in a pair drawn with these
    parameters: its RAW signal is 0.18 x exposure x 957 codes."""
    x = 0.18 * np.asarray(exposure) * CODES
    return np.sqrt(np.asarray(shot_codes) * x + np.asarray(read_codes) ** 2) / x


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--input", required=True)
    p.add_argument("--draws", type=int, default=20000)
    a = p.parse_args(argv)
    from diffraw_jax import calibration, raw
    from diffraw_jax.data import photos
    from diffraw_jax.data import synthetic_zrr as sz
    from diffraw_jax.inference import camera

    if not os.path.isfile(a.input):
        print(f"raw_noise.py: error: no such file: {a.input}", file=sys.stderr)
        return 2
    frame = camera.read_camera_raw(a.input)
    prepared = camera.prepare_frame(frame)
    prof = raw.noise_profile(prepared.planes)
    wb = frame.wb_gains if frame.wb_gains is not None else np.ones(3, np.float32)
    ev = calibration.inference_exposure(prepared.planes, wb, float(frame.baseline_exposure or 0.0))
    x = 0.18 / 2.0 ** ev
    rel_file = float(np.sqrt(prof["shot"] * x + prof["read"] ** 2) / x)
    rng = np.random.default_rng(0)
    lu = lambda lo, hi, n: np.exp(rng.uniform(np.log(lo), np.log(hi), n))  # noqa: E731
    exp_old = np.array([exposure_draw(rng) for _ in range(a.draws)])
    old = relative_mid_grey(lu(*sz.SHOT_RANGE, a.draws), lu(*sz.READ_RANGE, a.draws), exp_old)
    exp_new = np.array([exposure_draw(rng) for _ in range(a.draws)])
    new = relative_mid_grey(*np.array([photos.draw_noise(rng) for _ in range(a.draws)]).T, exp_new)
    print(f"# Noise of {os.path.basename(a.input)} against the generators\n")
    print(f"- file: shot {prof['shot']:.3g}, read {prof['read']:.3g} (normalised); "
          f"{prof['shot'] * CODES:.3f} codes per code and {prof['read'] * CODES:.3f} codes on the "
          f"generators' 10-bit scale")
    print(f"- rendered at {ev:+.2f} EV: mid-grey comes from {x:.4f} of white; relative noise there "
          f"{rel_file:.4f} (SNR {1 / rel_file:.0f}); condition noise at mid-grey "
          f"{calibration.condition_noise(prepared.planes, ev):.4f} (sRGB)\n")
    print("| generator | relative noise at mid-grey: p5 / p25 / median / p75 / p95 | pairs at most as noisy as "
          "the file | within 2x of it |")
    print("|---|---|---|---|")
    for name, r in (("synthetic_zrr (the shipped models' data)", old), ("photos.draw_noise (the new set)", new)):
        q = np.percentile(r, [5, 25, 50, 75, 95])
        print(f"| {name} | {' / '.join(f'{v:.4f}' for v in q)} | {100 * np.mean(r <= rel_file):.1f}% | "
              f"{100 * np.mean(r <= 2 * rel_file):.1f}% |")
    print("\nthe file's points (signal, std), normalised: "
          + ", ".join(f"({s:.4f}, {np.sqrt(v):.5f})" for s, v in prof["points"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
