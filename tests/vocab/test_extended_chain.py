"""The whole chain on a tiny scale: `ember vocab train` → `ember vocab extend` (a tied 2-layer random Llama with
SmolLM2's tokenizer) → `ember train` at stage pt with LoRA + embed_tokens/lm_head as modules_to_save → chat and
serve → merge and export. The new rows must really train, at their own learning rate, and survive the merge."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from transformers import TrainerCallback

PROMPT = "北京是中国的首都，我们今天去图书馆学习。"
EMBED, HEAD = "embed_tokens.modules_to_save.default.weight", "lm_head.modules_to_save.default.weight"


class Snapshot(TrainerCallback):
    """Copies of every trainable parameter when training starts and when it ends, plus the optimizer's groups."""

    def on_train_begin(self, args, state, control, model=None, optimizer=None, **kwargs):
        self.before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
        self.group_lrs = sorted(g["initial_lr"] if "initial_lr" in g else g["lr"] for g in optimizer.param_groups)

    def on_train_end(self, args, state, control, model=None, **kwargs):
        self.after = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}

    def one(self, suffix: str) -> tuple[torch.Tensor, torch.Tensor]:
        (name,) = [n for n in self.before if n.endswith(suffix)]
        return self.before[name], self.after[name]

    def lora(self) -> list[str]:
        return [n for n in self.before if "lora_" in n]


@dataclasses.dataclass
class Chain:
    corpus: Path
    extended: Path
    summary: dict  # ember_vocab.json


@pytest.fixture(scope="module")
def chain(tmp_path_factory, tiny_llm_dir, zh_docs) -> Chain:
    from ember.cli import main

    root = tmp_path_factory.mktemp("chain")
    corpus = root / "corpus.txt"
    corpus.write_text("\n".join(d.replace("\n", " ") for d in zh_docs) + "\n", encoding="utf-8")
    assert main(["vocab", "train", "--corpus", str(corpus), "--vocab-size", "560", "--base", tiny_llm_dir,
                 "--out", str(root / "pieces")]) == 0
    assert main(["vocab", "extend", "--base", tiny_llm_dir, "--pieces", str(root / "pieces"),
                 "--out", str(root / "extended")]) == 0
    summary = json.loads((root / "extended" / "ember_vocab.json").read_text())
    assert summary["new_tokens"] >= 100 and summary["model"]
    return Chain(corpus, root / "extended", summary)


def pt_config(chain: Chain, out: Path, *overrides: str):
    from ember.config import apply_override, from_dict, validate
    from ember.config.schema import EmberConfig

    raw = {
        "stage": "pt",
        "model": {"name_or_path": str(chain.extended), "dtype": "float32"},
        "data": {"datasets": [{"path": str(chain.corpus), "format": "text"}], "max_length": 32, "cache": False,
                 "shuffle": False},
        "method": {"type": "lora", "rank": 4, "alpha": 8, "dropout": 0.0,
                   "modules_to_save": ["embed_tokens", "lm_head"], "embedding_learning_rate": 1e-2},
        "train": {"max_steps": 3, "per_device_train_batch_size": 4, "learning_rate": 1e-3,
                  "lr_scheduler_type": "constant", "logging_steps": 1, "bf16": False, "save_strategy": "no",
                  "report_to": "none", "seed": 0},
        "output": {"dir": str(out)},
    }
    for item in overrides:
        apply_override(raw, item)
    return validate(from_dict(EmberConfig, raw, "test"))


def train_watched(cfg) -> tuple[Path, Snapshot]:
    from ember.training.run import train

    snap = Snapshot()
    return train(cfg, callbacks=[snap]).output_dir, snap


@pytest.fixture(scope="module")
def trained(chain, tmp_path_factory) -> tuple[Path, Snapshot]:
    return train_watched(pt_config(chain, tmp_path_factory.mktemp("pt") / "run"))


def new_ids_in(chain: Chain, texts: list[str]) -> set[int]:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(chain.extended)
    return {i for t in texts for i in tok(t, add_special_tokens=False).input_ids if i >= chain.summary["first_new_id"]}


def test_pt_trains_the_new_rows_of_embed_tokens_and_lm_head(chain, trained):
    _, snap = trained
    first, tokens, rows = chain.summary["first_new_id"], chain.summary["base_vocab"] + chain.summary["new_tokens"], \
        chain.summary["padded_vocab"]
    seen = new_ids_in(chain, chain.corpus.read_text(encoding="utf-8").splitlines())
    assert len(seen) >= 30  # the extended tokenizer really uses its new tokens on this text
    embed_before, embed_after = snap.one(EMBED)
    head_before, head_after = snap.one(HEAD)
    assert embed_before.shape[0] == head_before.shape[0] == rows
    changed = (embed_after != embed_before).any(dim=1)
    assert changed[sorted(seen)].all()  # every new token the data holds moved
    unseen = [i for i in range(first, rows) if i not in seen]  # incl. the padding rows: no gradient, no step
    assert unseen and not changed[unseen].any()
    assert (head_after[first:tokens] != head_before[first:tokens]).any(dim=1).all()  # softmax reaches every row
    assert not torch.equal(embed_after, head_after)  # tied in the base; trained as two copies
    assert any(not torch.equal(snap.before[n], snap.after[n]) for n in snap.lora())


def test_embedding_learning_rate_is_its_own_param_group(chain, trained, tmp_path):
    assert trained[1].group_lrs == [1e-3, 1e-2]
    _, snap = train_watched(pt_config(chain, tmp_path / "run", "train.learning_rate=0"))
    assert snap.group_lrs == [0.0, 1e-2]
    assert all(torch.equal(snap.before[n], snap.after[n]) for n in snap.lora())  # LoRA at lr 0: untouched
    for suffix in (EMBED, HEAD):
        before, after = snap.one(suffix)
        assert not torch.equal(before, after)


def test_the_output_chats_and_serves_with_the_new_tokens(chain, trained):
    from openai import OpenAI

    from ember.inference.engine import Engine, GenerationOptions
    from ember.serving.api import create_app
    from ember.serving.background import serve_in_thread

    engine = Engine.load(str(trained[0]))
    assert len(engine.tokenizer) == chain.summary["base_vocab"] + chain.summary["new_tokens"]
    messages = [{"role": "user", "content": PROMPT}]
    ids = engine.prompt_ids(messages)
    assert any(i >= chain.summary["first_new_id"] for i in ids)
    reply = engine.generate(messages, GenerationOptions(max_new_tokens=6))
    assert reply.completion_tokens > 0

    with serve_in_thread(create_app(engine, "zh")) as url:
        client = OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0, timeout=60)
        served = client.chat.completions.create(model="zh", messages=messages, max_tokens=6, temperature=0)
    assert served.usage.prompt_tokens == len(ids)  # the server tokenizes with the extended tokenizer
    assert served.choices[0].message.content == reply.text


def logits(model, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].float()


def test_merge_and_export_keep_the_extended_vocabulary(chain, trained, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ember.inference.loading import load_for_inference
    from ember.export.merge import export, merge

    out = str(trained[0])
    loaded = load_for_inference(out, dtype="float32")
    ids = loaded.tokenizer(PROMPT).input_ids
    assert any(i >= chain.summary["first_new_id"] for i in ids)
    want = logits(loaded.model, ids)
    rows = chain.summary["padded_vocab"]

    merged = merge(out).model
    assert merged.get_input_embeddings().weight.shape[0] == merged.get_output_embeddings().weight.shape[0] == rows
    assert (logits(merged, ids) - want).abs().max().item() <= 1e-4

    hf = export(out, str(tmp_path / "hf"))  # reloaded by plain transformers: the untied head must come back
    model = AutoModelForCausalLM.from_pretrained(hf, dtype=torch.float32)
    assert model.config.vocab_size == rows and model.config.tie_word_embeddings is False
    assert AutoTokenizer.from_pretrained(hf)(PROMPT).input_ids == ids
    assert (logits(model, ids) - want).abs().max().item() <= 1e-4

    gguf_file = export(out, str(tmp_path / "zh.gguf"), fmt="gguf", gguf_type="f32")
    from_gguf = AutoTokenizer.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name)
    assert from_gguf(PROMPT).input_ids == ids  # the new merges travel in the GGUF metadata
