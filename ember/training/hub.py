"""`output.push_to_hub`: the finished run (and, with `push_strategy: every_save`, each sealed checkpoint) goes to a
model hub with its model card. Rank 0 alone uploads; an upload never reads a checkpoint before it is sealed."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from transformers import TrainerCallback

from ember.config.schema import EmberConfig
from ember.hub.publish import publish, publish_checkpoint
from ember.hub.upload import UploadFailed
from ember.models.loading import hub_model_id
from ember.training import checkpoints


def _base(cfg: EmberConfig) -> dict[str, Optional[str]]:
    local = Path(cfg.model.name_or_path).expanduser()
    return {"base_model": None if cfg.model.random_init else hub_model_id(cfg.model),
            "base_dir": str(local) if local.is_dir() else None}


class CheckpointUpload(TrainerCallback):
    """Uploads each checkpoint once `EmberTrainer` has sealed and renamed it (`on_save` runs after that); a failed
    upload is a warning and training goes on (the end of the run uploads again)."""

    def __init__(self, cfg: EmberConfig, say=print):
        self.cfg = cfg
        self.say = say
        self.uploaded: list[str] = []  # checkpoint names, in order

    def on_save(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        why = checkpoints.problem(folder) if folder.is_dir() else "it was not written"
        if why is not None:
            self.say(f"warning: {folder.name} is not uploaded: {why}")
            return
        out = self.cfg.output
        try:
            publish_checkpoint(folder, out.push_to_hub, out.hub, out.hub_private, run_dir=Path(args.output_dir),
                               **_base(self.cfg))
        except UploadFailed as exc:
            self.say(f"warning: {exc}; training goes on")
            return
        self.uploaded.append(folder.name)
        self.say(f"uploaded {folder.name} to {out.hub}:{out.push_to_hub}")


def push_run(cfg: EmberConfig, out: Path) -> list[str]:
    """Upload the finished output directory (weights or adapter, tokenizer, config, reports; no checkpoints).

    Raises:
        UploadFailed: the run is complete on disk, but the hub did not take it (the message says how to retry).
    """
    files = publish(out, cfg.output.push_to_hub, cfg.output.hub, cfg.output.hub_private, **_base(cfg),
                    message="Upload the finished run with Ember")
    return files
