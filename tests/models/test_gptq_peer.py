"""Runs tests/models/test_gptq.py and test_awq.py for real in CI, where the project venv has no `gptq` extra.

gptqmodel 7.6.0 pins numpy==2.2.6, so installing it into the project venv would downgrade numpy. Instead
gptqmodel, optimum and exactly the packages they need that the venv lacks are installed once with
`pip install --no-deps --target` into $EMBER_CACHE/peers/gptq-7.6.0 (never the venv), and put first on PYTHONPATH
of a pytest subprocess whose torch, transformers, peft, accelerate, datasets and numpy (2.4.x: test_gptq.py passes
with it, so the pin is not honoured) come from the project venv. The subprocess collects those two files only.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
NAME = "gptq-7.6.0"
# gptqmodel + optimum, then gptqmodel's requirements that the dev venv does not have (versions of the scratch venv
# the tests were first run in). maturin (a build tool gptqmodel lists) is never imported at run time.
PEER_PACKAGES = ("gptqmodel==7.6.0", "optimum==2.3.0", "defuser==0.0.28", "device-smi==0.5.7", "logbar==0.4.15",
                 "pypcre==0.6.4", "tokenicer==0.0.14", "threadpoolctl==3.8.0", "torchao==0.18.0")
# Must keep coming from the project venv: a copy in the peer folder would shadow the tested versions.
VENV_ONLY = ("torch", "transformers", "peft", "accelerate", "datasets", "numpy", "safetensors", "huggingface_hub")
TESTS = ("tests/models/test_gptq.py", "tests/models/test_awq.py")
EXPECTED_PASSED = 7 + 9  # every test in those files, parametrizations included


def peer_gptq() -> Path:
    """gptqmodel 7.6.0 + optimum 2.3.0 in their own folder (created once, reused): pip --target, never the venv."""
    from ember.core.paths import cache_root, file_lock

    peers = cache_root() / "peers"
    target = peers / NAME
    with file_lock(peers / f"{NAME}.lock"):
        if not (target / "gptqmodel" / "__init__.py").is_file():
            partial = peers / f"{NAME}.partial"
            shutil.rmtree(partial, ignore_errors=True)
            # --no-deps + an explicit list: pip would otherwise pull numpy 2.2.6 (and torch/transformers upgrades)
            run = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target",
                                  str(partial), *PEER_PACKAGES], capture_output=True, text=True, timeout=900)
            assert run.returncode == 0, f"pip install {' '.join(PEER_PACKAGES)} failed:\n{run.stderr[-2000:]}"
            shutil.rmtree(partial / "test")  # torchao's own test suite, a top-level `test` that shadows the stdlib's
            shadowing = [n for n in VENV_ONLY if (partial / n).exists()]
            assert not shadowing, f"{shadowing} landed in {partial}: they must come from the project venv"
            partial.rename(target)
    return target


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("gptqmodel") is not None,
                    reason="gptqmodel is installed here: tests/models/test_gptq.py and test_awq.py run directly")
def test_gptq_tests_pass_with_gptqmodel_from_the_peer_folder():
    """Slow (~50 s of tests; the first run also pip-installs gptqmodel 7.6.0, built from its sdist, ~1.5 min)."""
    from ember.core.paths import cache_root

    target = peer_gptq()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}  # no xdist worker / addopts
    env.update(PYTHONPATH=f"{target}{os.pathsep}{REPO}", EMBER_CACHE=str(cache_root()), HF_HUB_OFFLINE="1")
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs", *TESTS],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    out = run.stdout + run.stderr
    assert run.returncode == 0, out[-4000:]
    summary = out.strip().splitlines()[-1]
    # a silent importorskip (gptqmodel not importable from the peer folder) would read "1 skipped"
    assert re.search(rf"\b{EXPECTED_PASSED} passed\b", summary) and not re.search(
        r"skipped|failed|error|deselected", summary), out[-4000:]
