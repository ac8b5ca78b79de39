"""Uploads: exactly which files reach the hub and the exact model card, for a tiny run (every sealed checkpoint,
then the finished run) and for `ember export --push-to-hub`. The network call (`UPLOADERS[hub]`) is replaced by a
recorder: huggingface_hub's and modelscope's own calls are not exercised offline."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ember.hub import upload


@pytest.fixture
def recorder(monkeypatch):
    """Replaces both hubs' upload call; keeps (hub, repo, folder name, files, private, message, card text)."""
    calls = []

    def make(hub):
        def record(repo_id, folder, files, private, message):
            calls.append({"hub": hub, "repo": repo_id, "folder": Path(folder).name, "files": list(files),
                          "private": private, "message": message,
                          "card": (Path(folder) / "README.md").read_text(encoding="utf-8")})
        return record

    for hub in ("huggingface", "modelscope"):
        monkeypatch.setitem(upload.UPLOADERS, hub, make(hub))
    return calls


ADAPTER_FILES = ["README.md", "adapter_config.json", "adapter_model.safetensors", "chat_template.jinja",
                 "ember_run.yaml", "ember_template.json", "tokenizer.json", "tokenizer_config.json"]


def test_every_sealed_checkpoint_then_the_run(tiny_run_config, recorder, capsys):
    from ember.training import checkpoints
    from ember.training.run import train

    cfg = tiny_run_config("train.save_strategy=steps", "train.save_steps=1", "output.push_to_hub=alice/tiny-lora",
                          "output.push_strategy=every_save", "output.hub_private=true")
    out = train(cfg).output_dir
    assert [(c["folder"], c["message"], c["private"], c["repo"]) for c in recorder] == [
        ("checkpoint-1", "Upload checkpoint-1 with Ember", True, "alice/tiny-lora"),
        ("checkpoint-2", "Upload checkpoint-2 with Ember", True, "alice/tiny-lora"),
        ("run", "Upload the finished run with Ember", True, "alice/tiny-lora")]
    # checkpoints: the model files and the log, none of what only resuming reads
    assert recorder[0]["files"] == ADAPTER_FILES[:4] + ["ember_run.yaml", "ember_template.json", "tokenizer.json",
                                                        "tokenizer_config.json", "trainer_state.json"]
    assert recorder[2]["files"] == ["README.md", "adapter_config.json", "adapter_model.safetensors",
                                    "chat_template.jinja", "data_report.json", "ember_run.yaml", "ember_template.json",
                                    "loss.png", "metrics.json", "tokenizer.json", "tokenizer_config.json",
                                    "trainer_state.json"]
    for name in ("checkpoint-1", "checkpoint-2"):  # uploaded through hard links; the card never writes into them
        assert checkpoints.problem(out / name) is None
        assert (out / name / "README.md").read_text(encoding="utf-8") != recorder[0]["card"]  # peft's own stays
    assert not (out / ".ember-upload").exists()
    assert (out / "README.md").read_text(encoding="utf-8") == recorder[2]["card"] == expected_card(out)
    assert "uploaded checkpoint-1 to huggingface:alice/tiny-lora" in capsys.readouterr().out


def expected_card(run: Path, evals: str = "") -> str:
    state = json.loads((run / "trainer_state.json").read_text())
    metrics = json.loads((run / "metrics.json").read_text())
    report = json.loads((run / "data_report.json").read_text())
    config = (run / "ember_run.yaml").read_text()
    dataset = str(run.parent / "dialogues.jsonl")
    last = [h for h in state["log_history"] if "loss" in h][-1]
    return f"""---
library_name: peft
pipeline_tag: text-generation
tags:
- ember
- sft
- lora
---

# alice/tiny-lora

Fine-tuned `sft` (lora) with Ember from `llama`.

This repository holds a LoRA adapter: load it on top of the base model (peft), or merge it with `ember export`.

## Data

| dataset | format | split | samples |
|---|---|---|---|
| `{dataset}` | auto | train | all |

From the run's data report (`data_report.json`):

| count | value |
|---|---:|
| records read | 8 |
| train samples | 8 |
| eval samples | 0 |
| trained tokens | {report['trained_tokens']} |
| truncated | 2 |
| skipped records | 0 |
| dropped (too long) | 0 |

## Training results

| metric | value |
|---|---:|
| final train loss (step 2) | {last['loss']:.4f} |
| mean train loss over the run | {metrics['train_loss']:.4f} |
| train runtime (s) | {metrics['train_runtime']:.4f} |
{evals}
## Configuration

The exact configuration of the run (`ember_run.yaml`):

```yaml
{config.rstrip()}
```
"""


def test_a_failed_upload_loses_nothing(tiny_run_config, monkeypatch, capsys):
    from ember.training.run import train

    def refuse(*args):
        raise ConnectionError("hub unreachable\nmore detail")

    monkeypatch.setitem(upload.UPLOADERS, "huggingface", refuse)
    cfg = tiny_run_config("train.save_strategy=steps", "train.save_steps=1", "output.push_to_hub=alice/tiny-lora",
                          "output.push_strategy=every_save")
    with pytest.raises(upload.UploadFailed) as err:
        train(cfg)
    out = Path(cfg.output.dir)
    assert str(err.value) == (
        f"upload of {out} to huggingface:alice/tiny-lora failed (ConnectionError: hub unreachable); every file is still "
        f"in {out}: log in (hf auth login / modelscope login) and retry with `hf upload alice/tiny-lora {out} "
        "--exclude 'checkpoint-*' --exclude '*.pt'`")
    printed = capsys.readouterr().out
    assert printed.count("warning: upload of ") == 2 and "training goes on" in printed  # both checkpoints: warned
    assert (out / "adapter_model.safetensors").is_file() and (out / "metrics.json").is_file()
    assert [p.name for p in sorted(out.glob("checkpoint-*"))] == ["checkpoint-1", "checkpoint-2"]


def test_export_push_card_has_the_eval_table(tiny_run_config, recorder, tmp_path):
    from ember.cli import main
    from ember.evaluation.outputs import write_run
    from ember.training.run import train

    run = train(tiny_run_config()).output_dir
    write_run(run / "eval" / "gen", {"bleu-4": 12.5, "rouge-l": 30.25, "n": 8, "meta": {"kind": "gen"}}, [])
    assert main(["export", "--model", str(run), "--to", str(tmp_path / "merged"), "--push-to-hub", "alice/tiny",
                 "--hub", "modelscope", "--private"]) == 0
    [call] = recorder
    assert (call["hub"], call["repo"], call["private"], call["message"]) == (
        "modelscope", "alice/tiny", True, "Upload an export with Ember")
    assert call["files"] == ["README.md", "chat_template.jinja", "config.json", "configuration.json",
                             "ember_export.json", "ember_template.json", "generation_config.json",
                             "model.safetensors", "tokenizer.json", "tokenizer_config.json"]
    evals = ("\n## Evaluation\n\nScores written by `ember eval` into the run directory (0-100 scale).\n\n"
             "`eval/gen/scores.json` (kind: gen)\n\n| metric | value |\n|---|---:|\n| bleu-4 | 12.5000 |\n"
             "| rouge-l | 30.2500 |\n| n | 8 |\n")
    want = expected_card(run, evals).replace("library_name: peft", "library_name: transformers").replace(
        "# alice/tiny-lora", "# alice/tiny").replace(
        "This repository holds a LoRA adapter: load it on top of the base model (peft), or merge it with "
        "`ember export`.\n\n", "")
    assert call["card"] == want
    assert json.loads((tmp_path / "merged" / "configuration.json").read_text()) == {
        "framework": "pytorch", "task": "text-generation"}


def test_export_push_is_checked_before_the_merge(tmp_path):
    from ember.cli import main

    assert main(["export", "--model", "nowhere", "--to", str(tmp_path / "x"), "--push-to-hub", "tiny"]) == 2
    assert main(["export", "--model", "nowhere", "--to", str(tmp_path / "x"), "--format", "gguf",
                 "--push-to-hub", "alice/tiny"]) == 2
    assert not (tmp_path / "x").exists()


def test_upload_files_leave_out_resume_state_and_checkpoints(tmp_path):
    for name in ("model.safetensors", "optimizer.pt", "scheduler.pt", "rng_state_0.pth", "training_args.bin",
                 "checkpoint-3/model.safetensors", ".ember-staging/x", "global_step3/shard.pt", "runs/events.out",
                 "sub/tokenizer.json"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("x")
    assert upload.upload_files(tmp_path) == ["model.safetensors", "runs/events.out", "sub/tokenizer.json"]
