"""The photograph data command (diffraw_jax.data.photos, issue 28 item 2) on a tiny fake Debian
package built here with dpkg-deb -b (no network): extraction, the explicit file list, the licences,
the pairs (their calibration inverts them; a photograph pair's target is a crop of the photograph),
reproducibility, skipped small photographs, and the one-line errors."""
import json
import os
import shutil
import subprocess

import numpy as np
import pytest
from PIL import Image

from diffraw_jax.data import photos

pytestmark = pytest.mark.skipif(shutil.which("dpkg-deb") is None, reason="needs dpkg-deb")

BIG = "usr/share/wallpapers/Test/contents/images/big.png"
SMALL = "usr/share/wallpapers/Test/contents/images/small.png"


def fake_deb(tmp_path, pkg="plasma-workspace-wallpapers"):
    """A .deb of ``pkg`` holding a 120x100 photograph-like PNG, a 40x40 one and a copyright file."""
    src = tmp_path / "src"
    rng = np.random.default_rng(0)
    for rel, (h, w) in ((BIG, (100, 120)), (SMALL, (40, 40))):
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        yy, xx = np.mgrid[0:h, 0:w]
        img = np.stack([xx / w, yy / h, 0.5 + 0.2 * np.sin(xx / 3.0)], -1) * 200 + rng.integers(0, 20, (h, w, 3))
        Image.fromarray(img.astype(np.uint8)).save(src / rel)
    (src / "usr/share/wallpapers/Test/metadata.json").write_text(
        json.dumps({"KPlugin": {"License": "LGPLv3", "Authors": [{"Name": "A. Photographer"}]}}))
    doc = src / "usr/share/doc" / pkg
    doc.mkdir(parents=True)
    (doc / "copyright").write_text("Files: *\nLicense: LGPL-3\n")
    (src / "DEBIAN").mkdir()
    (src / "DEBIAN/control").write_text(f"Package: {pkg}\nVersion: 1.0-1\nArchitecture: all\n"
                                        "Maintainer: test <t@example.com>\nDescription: test\n")
    debs = tmp_path / "debs"
    debs.mkdir()
    subprocess.run(["dpkg-deb", "-b", "--root-owner-group", str(src), str(debs / f"{pkg}_1.0-1_all.deb")],
                   check=True, capture_output=True)
    return debs


def test_fake_package_to_pairs(tmp_path, monkeypatch):
    debs = fake_deb(tmp_path)
    pkgs = ("plasma-workspace-wallpapers",)
    found = photos.download(str(debs), pkgs)  # already there: no apt-get
    root = str(debs / "root")
    assert photos.extract(found, root) == {"plasma-workspace-wallpapers": "1.0-1"}
    out = tmp_path / "out"
    assert photos.copy_licences(root, str(out), pkgs) == [str(out / "LICENSES/plasma-workspace-wallpapers.copyright")]
    assert "LGPL-3" in (out / "LICENSES/plasma-workspace-wallpapers.copyright").read_text()
    res = photos.generate(str(out), root, 6, 2, size=32, seed=3, photo_share=0.5, workers=1, photos=(BIG, SMALL))
    s = res["summary"]
    assert s["photographs_skipped"] == 1 and s["photographs"] == 2  # 40 px < a 48-px crop
    assert s["photo_pairs"] + s["dead_leaves_pairs"] == 8 and s["photo_pairs"] >= 1
    assert res["photos"][1]["skipped_smaller_than_crop"] and res["photos"][1]["pairs"] == 0
    assert res["photos"][0]["pairs"] == s["photo_pairs"]
    assert res["photos"][0]["licence"] == "LGPLv3" and res["photos"][0]["authors"] == ["A. Photographer"]
    for split, n in (("train", 6), ("test", 2)):
        for i in range(n):
            assert (out / split / "huawei_raw" / f"{i}.png").is_file()
            cal = json.loads((out / split / "calibration" / f"{i}.json").read_text())
            assert set(cal) == {"wb_gains", "ccm", "baseline_exposure"} and cal["wb_gains"][1] == 1.0
    # reproducible: the same (seed, split, index) gives the same pair and the same source
    big = photos.load_photo(os.path.join(root, BIG))
    a = photos.make_example(3, "train", 0, 32, [big, None], 1.0)
    b = photos.make_example(3, "train", 0, 32, [big, None], 1.0)
    assert a[3] == 0 and np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    # the target of a photograph pair is a (downscaled, flipped/rotated) crop of it: its colours
    # lie within the photograph's range (here its blue channel's sinusoid of 0.3..0.7 x 200 + noise)
    tgt = a[1].astype(float)
    assert tgt[..., 2].min() >= 0.3 * 200 - 2 and tgt[..., 2].max() <= 0.7 * 200 + 22


def test_noise_draws_cover_clean_and_high_iso():
    rng = np.random.default_rng(0)
    draws = np.array([photos.draw_noise(rng) for _ in range(4000)])
    clean = draws[:, 0] < photos.NOISY_SHOT[0]
    assert abs(clean.mean() - photos.CLEAN_SHARE) < 0.03
    assert draws[:, 0].min() >= photos.CLEAN_SHOT[0] and draws[:, 0].max() <= photos.NOISY_SHOT[1]
    assert draws[:, 1].min() >= photos.CLEAN_READ[0] and draws[:, 1].max() <= photos.NOISY_READ[1]


def test_bad_input_ends_in_one_line(tmp_path, capsys, monkeypatch):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(photos.DataError, match="is empty"):
        photos.find_photos(str(empty))
    debs = fake_deb(tmp_path)
    root = str(debs / "root")
    photos.extract(photos.download(str(debs), ("plasma-workspace-wallpapers",)), root)
    with pytest.raises(photos.DataError, match="1 of the 2 listed photographs are missing"):
        photos.find_photos(root, (BIG, "usr/share/none.jpg"))
    with pytest.raises(photos.DataError, match="none of the 1 photographs"):
        photos.generate(str(tmp_path / "o"), root, 1, 1, size=64, photos=(SMALL,), workers=1)
    # a package apt-get cannot find: one line, exit 2 (a stand-in apt-get on PATH answers as
    # Debian's does for an unknown name, without the network)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "apt-get").write_text('#!/bin/sh\necho "E: Unable to locate package $2" >&2\nexit 100\n')
    (bin_dir / "apt-get").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setattr(photos, "PACKAGES", ("no-such-package-diffraw-test",))
    monkeypatch.setattr(photos.download, "__defaults__", (photos.PACKAGES,))
    rc = photos.main(["--out", str(tmp_path / "o2"), "--num_train", "1", "--num_test", "1",
                      "--debs", str(tmp_path / "d2")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "no-such-package-diffraw-test" in err[0]
    assert "Unable to locate package" in err[0]


def test_blur_range_sets_the_optics_blur(tmp_path, capsys):
    """--blur LOW,HIGH: the optics blur's sigma drawn in that range; a sharper range leaves more
    high-frequency energy in the RAW of the same scene and noise draw; a bad range is one line."""
    rng = np.random.default_rng(5)
    scene = np.clip(0.5 + 0.4 * rng.standard_normal((64, 64, 3)), 0, 1)  # white texture: all frequencies
    big = (np.kron(scene, np.ones((2, 2, 1))) * 255).astype(np.uint8)

    def hf(blur):
        raw = photos.make_example(1, "train", 0, 64, [big], 1.0, blur=blur)[0].astype(float)
        g = raw[0::2, 1::2]  # one colour plane
        return np.mean(np.diff(g, axis=0) ** 2)

    sharp, soft = hf((0.0, 0.0)), hf((1.8, 1.8))
    assert sharp > 3 * soft, (sharp, soft)
    a = photos.make_example(1, "train", 0, 64, [big], 1.0, blur=(0.3, 1.0))
    b = photos.make_example(1, "train", 0, 64, [big], 1.0, blur=(0.3, 1.0))
    assert np.array_equal(a[0], b[0])  # deterministic per (seed, split, index)
    for bad in ("1", "a,b", "1.0,0.5"):
        rc = photos.main(["--out", str(tmp_path / bad.replace(",", "_")), "--num_train", "1", "--num_test", "1",
                          "--blur", bad, "--debs", str(tmp_path / "none")])
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 2 and len(err) == 1 and "--blur" in err[0], err
