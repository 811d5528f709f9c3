"""The README's Python examples run as written: each ```python block, verbatim, in a fresh interpreter, in a
folder where the README's own setup command (``duo train --profile tiny``) ran first."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
SETUP = "duo train --profile tiny"


def python_blocks(text: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.S | re.M)


def fresh_env(tmp: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", HF_MODULES_CACHE=str(tmp / "hf_modules"), MPLBACKEND="Agg",
               OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    return env


def test_readme_blocks_are_found():
    blocks = python_blocks(README.read_text())
    assert len(blocks) >= 3 and any("from_pretrained" in b for b in blocks)
    assert f"`{SETUP}`" in README.read_text(), "the README no longer gives the setup command this test runs"


@pytest.mark.slow
def test_every_readme_python_block_runs_verbatim(tmp_path):
    env = fresh_env(tmp_path)
    duo = Path(sys.executable).with_name("duo")
    setup = subprocess.run([str(duo), *shlex.split(SETUP)[1:], "--no-progress"], cwd=tmp_path, env=env,
                           capture_output=True, text=True, timeout=600)
    assert setup.returncode == 0, setup.stderr[-3000:]
    failures = []
    for i, block in enumerate(python_blocks(README.read_text())):
        # stdin closed: transformers' "run the custom code? [y/N]" question would fail the block, not wait
        run = subprocess.run([sys.executable, "-c", block], cwd=tmp_path, env=env, capture_output=True, text=True,
                             timeout=600, stdin=subprocess.DEVNULL)
        if run.returncode != 0 or "Do you wish to run the custom code" in run.stdout + run.stderr:
            failures.append(f"block {i}:\n{block}\n--- stderr:\n{run.stderr[-2000:]}")
    assert not failures, "\n\n".join(failures)
