"""A bounded schemathesis run against `ember serve`: property-based requests generated from the server's own OpenAPI
document (valid ones, edge values and invalid ones), every check on: no 5xx, every status and response body as
documented, invalid input rejected, schema-valid input accepted, 405s with `Allow`."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ember.inference.completion import GenerationOptions

KEY = "sk-schemathesis"


@pytest.mark.slow
def test_schemathesis_finds_no_server_error_and_no_schema_violation(tiny_engine, tmp_path):
    from ember.serving.api import create_app
    from ember.serving.background import serve_in_thread

    exe = shutil.which("schemathesis", path=str(Path(sys.executable).parent))
    assert exe, "schemathesis is in the dev extra: pip install -e '.[dev]'"
    app = create_app(tiny_engine, "tiny", api_key=KEY, defaults=GenerationOptions(max_new_tokens=8))
    with serve_in_thread(app) as url:
        run = subprocess.run(
            [exe, "run", f"{url}/openapi.json", "-H", f"Authorization: Bearer {KEY}", "--checks", "all",
             "--phases", "coverage,fuzzing", "--max-time", "30", "--workers", "1", "--request-timeout", "60",
             "--seed", "1", "--suppress-health-check", "all", "--generation-database", "none", "--no-color"],
            capture_output=True, text=True, timeout=180, cwd=tmp_path)
    report = run.stdout[-8000:] + run.stderr[-2000:]
    assert run.returncode == 0, report
    generated = re.search(r"(\d+) generated, (\d+) passed", run.stdout)
    assert generated and int(generated.group(1)) == int(generated.group(2)) >= 50, report
