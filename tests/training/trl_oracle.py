"""TRL 1.16's losses on batches Ember built: run in a subprocess whose PYTHONPATH starts with a pip --target install of
trl (never the project venv); everything else (torch, transformers, peft, datasets) is the project venv's.

    python trl_oracle.py SPEC.json OUT.json

SPEC names the saved models (a tiny base, a LoRA adapter whose B matrices are not zero, a perturbed full model), the
tokenizer, the padded token batches (input_ids, attention_mask, labels with -100 off the answers) and the cases. Each
case builds the TRL trainer of its loss on a one-record dataset (TRL insists on one) and evaluates TRL's own loss
code on the given batch; OUT holds each case's loss and the metrics TRL recorded.
"""

from __future__ import annotations

import json
import sys
import tempfile

import torch


def _tensors(batch: dict) -> dict[str, torch.Tensor]:
    return {k: torch.tensor(v) for k, v in batch.items()}


def _dataset(kind: str):
    from datasets import Dataset

    prompt = [{"role": "user", "content": "Name a colour."}]
    if kind == "kto":
        return Dataset.from_list([{"prompt": prompt, "completion": [{"role": "assistant", "content": "Blue."}],
                                   "label": True},
                                  {"prompt": prompt, "completion": [{"role": "assistant", "content": "Car."}],
                                   "label": False}])
    if kind == "strings":  # ORPO / CPO tokenise plain strings
        return Dataset.from_list([{"prompt": "Name a colour.", "chosen": " Blue.", "rejected": " Car."}])
    return Dataset.from_list([{"prompt": prompt, "chosen": [{"role": "assistant", "content": "Blue."}],
                               "rejected": [{"role": "assistant", "content": "Car."}]}])


def _metrics(trainer) -> dict[str, float]:
    return {k: sum(v) / len(v) for k, v in trainer._metrics["train"].items() if v}


def run(spec: dict) -> dict:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(spec["tokenizer"])
    out_dir = tempfile.mkdtemp(prefix="trl-oracle-")
    common = dict(output_dir=out_dir, use_cpu=True, bf16=False, report_to="none", gradient_checkpointing=False,
                  save_strategy="no")

    def lora():
        base = AutoModelForCausalLM.from_pretrained(spec["base"], dtype=torch.float32)
        return PeftModel.from_pretrained(base, spec["adapter"], is_trainable=True)

    def base():
        # TRL would take the adapter's starting copy as the reference of an adapter it is given; Ember's LoRA
        # reference is the base with the adapter disabled, so TRL gets that base as its explicit reference.
        return AutoModelForCausalLM.from_pretrained(spec["base"], dtype=torch.float32)

    def full():
        return AutoModelForCausalLM.from_pretrained(spec["full"], dtype=torch.float32)

    pairs, kto = spec["pair_batch"], spec["kto_batch"]
    results = {}
    for case in spec["cases"]:
        name, options = case["name"], case["options"]
        if name.startswith("dpo"):
            from trl import DPOConfig, DPOTrainer

            config = DPOConfig(**common, loss_type=[options["loss_type"]], beta=options["beta"],
                               label_smoothing=options.get("label_smoothing", 0.0), max_length=None)
            trainer = DPOTrainer(model=lora(), ref_model=base(), args=config, train_dataset=_dataset("pairs"), processing_class=tok)
            trainer.model.train()
            losses = []
            for batch in case["batches"]:  # one batch, or (aot as conservative DPO) one pair at a time
                b = _tensors(batch)
                inputs = {"input_ids": b["input_ids"], "attention_mask": b["attention_mask"],
                          "completion_mask": (b["labels"] != -100).long()}
                with torch.no_grad():
                    losses.append(float(trainer._compute_loss(trainer.model, inputs, False)))
            results[name] = {"loss": sum(losses) / len(losses), "metrics": _metrics(trainer)}
        elif name == "kto":
            from trl import KTOConfig, KTOTrainer

            config = KTOConfig(**common, beta=options["beta"], desirable_weight=options["kto_desirable_weight"],
                               undesirable_weight=options["kto_undesirable_weight"], max_length=None,
                               per_device_train_batch_size=2, train_sampling_strategy="sequential")
            trainer = KTOTrainer(model=lora(), ref_model=base(), args=config, train_dataset=_dataset("kto"), processing_class=tok)
            trainer.model.train()
            b = _tensors(kto)
            n = len(b["kto_label"])
            completion = (b["labels"] != -100).long()
            inputs = {"input_ids": b["input_ids"][:n], "attention_mask": b["attention_mask"][:n],
                      "completion_mask": completion[:n], "KL_input_ids": b["input_ids"][n:],
                      "KL_attention_mask": b["attention_mask"][n:], "KL_completion_mask": completion[n:],
                      "label": b["kto_label"].bool()}
            with torch.no_grad():
                loss = float(trainer._compute_loss(trainer.model, inputs, False))
            results[name] = {"loss": loss, "metrics": _metrics(trainer)}
        else:  # orpo / simpo: TRL's ORPOTrainer and CPOTrainer (loss_type simpo), no reference model
            b = _tensors(pairs)
            n = b["input_ids"].shape[0] // 2
            batch = {"chosen_input_ids": b["input_ids"][:n], "chosen_attention_mask": b["attention_mask"][:n],
                     "chosen_labels": b["labels"][:n], "rejected_input_ids": b["input_ids"][n:],
                     "rejected_attention_mask": b["attention_mask"][n:], "rejected_labels": b["labels"][n:]}
            if name == "orpo":
                from trl.experimental.orpo import ORPOConfig, ORPOTrainer

                config = ORPOConfig(**common, beta=options["beta"], max_length=4096)
                trainer = ORPOTrainer(model=full(), args=config, train_dataset=_dataset("strings"),
                                      processing_class=tok)
            else:
                from trl.experimental.cpo import CPOConfig, CPOTrainer

                config = CPOConfig(**common, loss_type="simpo", cpo_alpha=0.0, beta=options["beta"],
                                   simpo_gamma=options["simpo_gamma"], label_smoothing=options["label_smoothing"],
                                   max_length=4096)
                trainer = CPOTrainer(model=full(), args=config, train_dataset=_dataset("strings"),
                                     processing_class=tok)
            trainer.model.train()
            with torch.no_grad():
                loss, metrics = trainer.get_batch_loss_metrics(trainer.model, batch)
            results[name] = {"loss": float(loss), "metrics": metrics}
    return results


if __name__ == "__main__":
    with open(sys.argv[1], encoding="utf-8") as f:
        spec = json.load(f)
    import trl

    result = {"trl_version": trl.__version__, "cases": run(spec)}
    with open(sys.argv[2], "w", encoding="utf-8") as f:
        json.dump(result, f)
