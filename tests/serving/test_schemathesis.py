"""A bounded schemathesis run against `ember serve`: property-based requests generated from the server's own OpenAPI
document (valid ones, edge values and invalid ones), every check on but one: no 5xx, every status and response body
as documented, invalid input rejected, 405s with `Allow`. Left out: "schema-valid input accepted" — the document
bounds what it can (token ids to the vocabulary, image parts only for image models), but some 400s depend on the
request as a whole and are documented, not expressible in a schema: more rows (prompts × n) than one request may
hold, prompt + max_tokens over the context. The response-time limit is set past any answer of the tiny model: timings belong in bench/, not in tests."""

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
            [exe, "run", f"{url}/openapi.json", "-H", f"Authorization: Bearer {KEY}", "--checks", "all", "--exclude-checks", "positive_data_acceptance", "--max-response-time", "120",
             "--phases", "coverage,fuzzing", "--max-time", "30", "--workers", "1", "--request-timeout", "60",
             "--seed", "1", "--suppress-health-check", "all", "--generation-database", "none", "--no-color"],
            capture_output=True, text=True, timeout=180, cwd=tmp_path)
    report = run.stdout[-8000:] + run.stderr[-2000:]
    assert run.returncode == 0, report
    generated = re.search(r"(\d+) generated, (\d+) passed", run.stdout)
    assert generated and int(generated.group(1)) == int(generated.group(2)) >= 50, report
