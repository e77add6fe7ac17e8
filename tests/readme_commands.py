"""The commands of the documentation (README.md and every page of docs/), read from the pages
themselves: ```bash blocks (continuation
lines joined, comments dropped), ```python blocks, and `python -m ...` / `python main.py ...` /
`make ...` quoted inline; each classified by the kind of command it is. Used by
tests/test_readme.py (which runs or checks every one) and tests/test_gcs.py (the pod command)."""
from __future__ import annotations

import os
import re
import shlex

from tests.helpers import REPO

# Tiny-model overrides appended to the README's training commands.
TINY = ["--config.model.name=tiny", "--config.color_net.name=tiny", "--config.model.dtype=float32",
        "--config.data.crop_size=32", "--config.data.global_batch_size=4", "--config.data.eval_batch_size=2",
        "--config.diffusion.num_timesteps=200", "--config.diffusion.s=20", "--config.optim.warmup_steps=1",
        "--config.train.num_train_steps=2", "--config.train.log_every_steps=1",
        "--config.train.checkpoint_every_steps=2", "--config.eval.crop_size=32", "--config.eval.num_images=2",
        "--config.eval.ddim_steps=2", "--config.eval.grid_images=2", "--config.data.worker_count=0"]


def documentation_files() -> list[str]:
    """README.md, then every docs/*.md page (sorted): the files whose commands are run."""
    docs = os.path.join(REPO, "docs")
    return [os.path.join(REPO, "README.md")] + sorted(
        os.path.join(docs, n) for n in os.listdir(docs) if n.endswith(".md"))


def readme_text() -> str:
    """README.md of the repository (the front page alone)."""
    with open(os.path.join(REPO, "README.md")) as f:
        return f.read()


def documentation_text() -> str:
    """README.md and every docs/*.md page, one after the other (blank lines between)."""
    texts = []
    for path in documentation_files():
        with open(path) as f:
            texts.append(f.read())
    return "\n\n".join(texts)


def fenced_blocks(text: str) -> list[tuple[str, str]]:
    """(language, body) of every fenced code block."""
    return re.findall(r"^```(\w*)\n(.*?)^```", text, flags=re.S | re.M)


def shell_commands(text: str) -> list[str]:
    """Commands of the ```bash blocks: continuations joined, comments and blank lines dropped."""
    cmds = []
    for lang, body in fenced_blocks(text):
        if lang != "bash":
            continue
        joined = re.sub(r"\\\n\s*", " ", body)
        for line in joined.splitlines():
            line = re.sub(r"\s+#.*$", "", line).strip()
            if line and not line.startswith("#"):
                cmds.append(line)
    return cmds


def inline_commands(text: str) -> list[str]:
    """`python -m ...`, `python main.py ...` and `make ...` quoted in the prose."""
    prose = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)
    return [c.strip() for c in re.findall(r"`((?:python -m|python main\.py|make) [^`]+)`", prose)]


def script_blocks(text: str) -> list[str]:
    """Bodies of the ```sh blocks: shell scripts run whole (by tests/test_readme.py), not line by line."""
    return [body for lang, body in fenced_blocks(text) if lang == "sh"]


def python_blocks(text: str) -> list[str]:
    """Bodies of the ```python blocks."""
    return [body for lang, body in fenced_blocks(text) if lang == "python"]


def classify(cmd: str) -> str:
    """A README command -> the rule that exercises it (a KeyError-like 'unknown' otherwise)."""
    toks = shlex.split(cmd)
    if toks[0] == "make":
        return "make " + toks[1]
    if toks[0] == "gcloud":
        return "gcloud"
    if toks[0] == "diffraw":
        if toks[1:2] == ["export-weights"]:
            return "diffraw export-weights"
        checkpoint = toks[toks.index("--checkpoint") + 1] if "--checkpoint" in toks else ""
        return "diffraw shipped" if checkpoint.startswith("pretrained/") else "diffraw"
    if toks[:2] == ["tfds", "build"]:
        return "tfds build"
    if toks[:2] == ["python", "-c"]:
        return "python -c"
    if toks[:2] == ["python", "-m"]:
        return "python -m " + toks[2]
    if toks[:2] == ["python", "main.py"]:
        opts = dict(t.split("=", 1) for t in toks[2:] if t.startswith("--") and "=" in t)
        return f"main.py {opts.get('--config', '?')} {opts.get('--mode', 'train')}"
    return "unknown"


def all_commands() -> list[str]:
    """Every documented command: the ```bash blocks' first, then those quoted in the prose."""
    text = documentation_text()
    return shell_commands(text) + inline_commands(text)


def substitute(tokens: list[str], mapping: dict) -> list[str]:
    """``tokens`` with each token, or the value of each ``--flag=value``, replaced by ``mapping``'s."""
    out = []
    for t in tokens:
        if t.startswith("--") and "=" in t:
            k, v = t.split("=", 1)
            out.append(f"{k}={mapping.get(v, v)}")
        else:
            out.append(mapping.get(t, t))
    return out


def find_commands(kind: str) -> list[str]:
    """The documented commands of ``kind`` (a ``classify`` result); at least one, or the test fails."""
    found = [c for c in all_commands() if classify(c) == kind]
    assert found, f"the documentation has no {kind!r} command any more; update tests/test_readme.py"
    return found
