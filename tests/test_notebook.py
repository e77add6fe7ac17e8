"""The Colab TPU notebook runs end to end (SMOKE mode, CPU) and is committed clean.

Executes ``notebooks/diffraw_colab_tpu.ipynb`` headless with nbclient in a
"python3" kernel running this interpreter (ipykernel), with ``DIFFRAW_SMOKE=1``:
tiny synthetic data, the ``configs/test.py`` model for a few steps, 2-step
sampling and a 64x64 DNG through the tiled pipeline (about a minute on 2 cores).
"""
import os
import re
import sys

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK = os.path.join(REPO, "notebooks", "diffraw_colab_tpu.ipynb")

nbformat = pytest.importorskip("nbformat")


def _load():
    with open(NOTEBOOK, encoding="utf-8") as f:
        return nbformat.read(f, as_version=4)


def test_notebook_is_clean_and_valid():
    nb = _load()
    nbformat.validate(nb)
    assert nb.metadata.get("kernelspec", {}).get("name") == "python3"
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and "SMOKE" in code[0].source and "DIFFRAW_SMOKE" in code[0].source
    for i, c in enumerate(code):
        assert c.get("outputs") == [], f"code cell {i} has stored outputs"
        assert c.get("execution_count") is None, f"code cell {i} has an execution count"
    # no widget state or other execution leftovers in the notebook metadata
    assert "widgets" not in nb.metadata


def test_notebook_runs_in_smoke_mode(tmp_path, monkeypatch):
    pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    from nbclient import NotebookClient

    work = tmp_path / "nb"
    work.mkdir()
    # The kernel inherits this environment (conftest.py: JAX on the CPU, a
    # persistent compile cache, cheap XLA backend passes).
    monkeypatch.setenv("DIFFRAW_SMOKE", "1")
    monkeypatch.setenv("DIFFRAW_NOTEBOOK_DIR", str(work))
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in (REPO, os.environ.get("PYTHONPATH")) if p))
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")

    nb = _load()
    # "python3" is ipykernel's native kernel: jupyter_client starts it with sys.executable.
    client = NotebookClient(nb, timeout=600, kernel_name="python3", allow_errors=False,
                            resources={"metadata": {"path": str(tmp_path)}})
    client.execute()  # raises CellExecutionError on the first failing cell

    text = []
    for c in nb.cells:
        if c.cell_type != "code":
            continue
        for o in c.get("outputs", []):
            assert o.output_type != "error", o
            if o.output_type == "stream" and o.name == "stdout":
                text.append(o.text)
            elif o.output_type in ("execute_result", "display_data"):
                text.append(o.get("data", {}).get("text/plain", ""))
    out = "".join(text)
    assert "SMOKE=True" in out
    assert f"python {sys.executable}" in out  # the kernel runs this interpreter
    assert "trained to step 3" in out
    # matplotlib figures were displayed (samples and the pipeline output)
    pngs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
            if o.output_type == "display_data" and "image/png" in o.get("data", {})]
    assert len(pngs) >= 2

    from PIL import Image

    wd = work / "workdir"
    samples = wd / "notebook_samples.png"
    assert samples.is_file() and samples.stat().st_size > 0
    assert min(Image.open(samples).size) > 0
    assert (wd / "checkpoints").is_dir()
    assert (work / "tfds").is_dir() and (work / "synthetic_zrr" / "test" / "huawei_raw" / "0.png").is_file()
    assert (work / "synthetic.dng").is_file()
    m = re.search(r"pipeline output shape \((\d+), (\d+), (\d+)\)", out)
    assert m, out[-2000:]
    assert tuple(int(v) for v in m.groups()) == (64, 64, 3)
    img = np.asarray(Image.open(wd / "notebook_pipeline.png"))
    assert img.shape == (64, 64, 3)
    assert img.std() > 0  # not a blank frame
