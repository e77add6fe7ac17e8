"""The installed console script and module entry points answer as README.md and docs/ show."""
import os
import subprocess
import sys


def _script(name):
    path = os.path.join(os.path.dirname(sys.executable), name)
    assert os.path.exists(path), f"{name} is not installed next to {sys.executable} (pip install -e .)"
    return path


def test_diffraw_console_script(tmp_path):
    r = subprocess.run([_script("diffraw"), "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "--checkpoint" in r.stdout and "--tile" in r.stdout
    # A workdir that is not a training workdir: one error line, exit 2.
    r = subprocess.run([_script("diffraw"), "--checkpoint", str(tmp_path / "nope"), "--input", str(tmp_path),
                        "--output", str(tmp_path / "out")], capture_output=True, text=True)
    assert r.returncode == 2, r.stderr
    errors = [l for l in r.stderr.splitlines() if l.startswith("error:")]
    assert len(errors) == 1, r.stderr


def test_main_requires_config_and_workdir():
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    r = subprocess.run([sys.executable, "main.py"], capture_output=True, text=True, cwd=repo)
    assert r.returncode != 0 and "--config" in r.stderr
