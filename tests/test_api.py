"""The public Python API: `import ember` is light, and train → load_run → generate works as the docs show."""

from __future__ import annotations

import subprocess
import sys

import yaml


def test_importing_ember_loads_no_torch():
    code = "import sys, ember; print('torch' in sys.modules, sorted(ember.__all__))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.startswith("False ")


def test_train_then_load_run_then_generate(tiny_run_config, tmp_path):
    import dataclasses

    import ember

    cfg = tiny_run_config("train.max_steps=2")
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(dataclasses.asdict(cfg)), encoding="utf-8")
    result = ember.train(str(path), ["train.max_steps=1"])
    assert result.output_dir == cfg_output(cfg) and result.metrics["train_loss"] > 0
    assert ember.load_config(str(path), ["train.max_steps=1"]).train.max_steps == 1
    engine = ember.load_run(str(result.output_dir))
    assert isinstance(engine, ember.Engine)
    messages = [{"role": "user", "content": "List 3 colours."}]
    answer = engine.generate(messages)
    assert answer.text == engine.generate_batch([messages])[0].text  # greedy: the same path, the same answer
    prepared = ember.prepare_data(ember.load_config(str(path)), progress=False)
    assert engine.prompt_ids(messages) == prepared.renderer.prompt_ids(messages)


def cfg_output(cfg):
    from pathlib import Path

    return Path(cfg.output.dir)
