"""Benchmark: Ember's data path side by side with LLaMA-Factory's preprocessing and TRL's SFTTrainer preparation.

The same inputs for all: the real multi-turn ShareGPT-zh set (sft/medicalgpt/sharegpt_zh_1K_format.jsonl, 1,000
conversations) and the single-turn alpaca_zh_demo set (sft/llamafactory/alpaca_zh_demo.json, 1,000 records) from
../shared/data ($EMBER_SHARED_DATA), the same SmolLM2 tokenizer (the embedded default: the directory Ember converts
its GGUF into, $EMBER_CACHE/gguf/<hash>/, handed to every tool) and the same length limit (1024, then 512):
- Ember: `ember data prepare CFG` (on_error=skip, an empty cache folder: everything is processed, then written as
  the Arrow cache `ember train` reads), run through `ember.cli.main`;
- LLaMA-Factory 0.9.5: `get_dataset` with `tokenized_path` (what `llamafactory-cli train` runs first), template
  `smollm2`, `overwrite_cache: true`;
- TRL 1.16.0: `SFTTrainer(...)` construction, which prepares the dataset (ChatML conversion, chat template,
  tokenisation, labels, truncation to `max_length`); the trainer gets a 2-layer model built before the clock starts.
Each tool's timed section starts after its imports and includes loading the tokenizer, reading the file, converting
the format, tokenising, labelling, truncating and writing the result (Ember: its Arrow cache; LLaMA-Factory: Arrow via
save_to_disk; TRL: the datasets Arrow cache files). Workers: each tool's default unless `--num-proc N` sets all.
Tokens/s divide ONE count per set by each tool's seconds: the tokens of every conversation rendered whole with
SmolLM2's own chat template (default system prompt), before any length limit — the input all tools are given.
Each tool's own kept count is printed beside it (they differ: different truncation rules and templates).

A last section gives Ember's cost per token for long conversations: conversations of 160 rounds vs 4 rounds built
from the same ShareGPT-zh rounds (concatenated in file order), at the first length limit and with no limit.

Runs are interleaved (A, B, C, A, B, C, ...) from one driver, each in its own process (bench/peers.py: venvs,
OMP_WAIT_POLICY=PASSIVE, a fresh datasets cache per run, peak RSS, load average beside every run).

Peer quirks met: LLaMA-Factory's `smollm2` template ends the default system prompt with a period that SmolLM2's own
template lacks (`--lf-template` none would parse the tokenizer's template instead) and also labels the newline after
each `<|im_end|>`; TRL's own ShareGPT conversion keeps the roles `human`/`gpt` (rendered as `<|im_start|>human`), so
its child converts to ChatML `messages` itself (inside its clock); TRL trains every token by default (SmolLM2's
template has no `{% generation %}` markers for `assistant_only_loss`).

    python bench/data_vs_peers.py --quick      # smoke test: 40 records per set, 1024 only, 1 round (~3 min)
    python bench/data_vs_peers.py              # full: both sets, 1024 and 512, 3 rounds
    python bench/data_vs_peers.py --record     # the same, also written to bench/results/data_vs_peers.txt
    python bench/data_vs_peers.py --num-proc 2 # every tool with 2 worker processes

The first run builds the peer venvs (bench/peers.py; ~6 + ~4 minutes, needs the package index); later runs reuse them.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

import peers  # noqa: E402  (stdlib only: children in the peer venvs import it too)

SETS = {
    "sharegpt_zh": ("sft/medicalgpt/sharegpt_zh_1K_format.jsonl", "sharegpt"),
    "alpaca_zh": ("sft/llamafactory/alpaca_zh_demo.json", "alpaca"),
}
ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}
TOOLS = ("ember", "llamafactory", "trl")
NO_LIMIT = 1 << 20  # a max_length no conversation reaches


def limit_name(limit: int) -> str:
    return "none" if limit == NO_LIMIT else str(limit)


# ------------------------------------------------------------------------------- records → messages (all tools)


def read_records(path: Path) -> list[dict]:
    text = path.read_text(encoding="utf-8")
    if text.lstrip().startswith("["):
        return json.loads(text)
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def write_records(records: list[dict], path: Path, fmt: str) -> None:
    if fmt == "alpaca":
        path.write_text(json.dumps(records, ensure_ascii=False), encoding="utf-8")
    else:
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")


def to_messages(record: dict, fmt: str) -> list[dict] | None:
    """The conversation as chat messages; None when it has no final answer (every tool drops or skips those)."""
    if fmt == "alpaca":
        prompt = record["instruction"] + (f"\n{record['input']}" if record.get("input") else "")
        msgs = [{"role": "user", "content": prompt}, {"role": "assistant", "content": record["output"]}]
    else:
        msgs = [{"role": ROLES[t["from"]], "content": t["value"]} for t in record["conversations"]]
    return msgs if msgs and msgs[-1]["role"] == "assistant" else None


def reference_tokens(records: list[dict], fmt: str, tokenizer) -> dict:
    """Tokens of every conversation rendered whole with the tokenizer's own chat template: the shared count."""
    convs = [m for m in (to_messages(r, fmt) for r in records) if m]
    texts = [tokenizer.apply_chat_template(m, tokenize=False) for m in convs]
    lengths = [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]
    rounds = [sum(1 for m in c if m["role"] == "assistant") for c in convs]
    return {"records": len(records), "conversations": len(convs), "tokens": sum(lengths),
            "rounds": sum(rounds) / max(1, len(convs)), "max_rounds": max(rounds, default=0),
            "multi": sum(n > 1 for n in rounds),
            "over_1024": sum(n > 1024 for n in lengths), "over_512": sum(n > 512 for n in lengths)}


def synth_sets(records: list[dict], long_rounds: int, conversations: int, short_rounds: int, work: Path) -> dict:
    """The same rounds twice: as `conversations` conversations of `long_rounds`, and as ones of `short_rounds`."""
    pairs = []
    for record in records:
        msgs = to_messages(record, "sharegpt") or []
        msgs = [m for m in msgs if m["role"] != "system"]
        pairs += [(a["content"], b["content"]) for a, b in zip(msgs[::2], msgs[1::2], strict=False)
                  if a["role"] == "user" and b["role"] == "assistant"]
    needed = long_rounds * conversations
    if len(pairs) < needed:
        raise SystemExit(f"only {len(pairs)} rounds in the set; {needed} needed")
    pairs = pairs[:needed]
    out = {}
    for n in (short_rounds, long_rounds):
        convs = [{"conversations": [turn for q, a in pairs[i:i + n] for turn in ({"from": "human", "value": q},
                                                                                 {"from": "gpt", "value": a})]}
                 for i in range(0, needed, n)]
        path = work / f"synth_{n}_rounds.jsonl"
        write_records(convs, path, "sharegpt")
        out[n] = path
    return out


# -------------------------------------------------------------------------------------------------- children


def child_ember(a) -> None:
    tmp = peers.child_tmp()
    cfg = tmp / "data.yaml"
    cfg.write_text(json.dumps({  # JSON is YAML
        "stage": "sft", "model": {"name_or_path": a.model},
        "data": {"datasets": [{"path": a.data}], "max_length": a.max_length, "on_error": "skip",
                 "cache_dir": str(tmp / "cache"), **({"num_proc": a.num_proc} if a.num_proc else {})},
        "output": {"dir": str(tmp / "run")},
    }))
    from ember import cli
    from ember.config import load_config, validate

    import ember.training.prepare  # noqa: F401

    cli.build_parser()  # imports the command modules, as the imports of the other tools happen before their clocks
    peers.warm_imports()
    start = time.perf_counter()
    code = cli.main(["data", "prepare", str(cfg)])  # a fresh cache folder: everything is processed and written
    seconds = time.perf_counter() - start
    if code:
        raise SystemExit(code)
    config = validate(load_config(str(cfg), []))
    data = ember.training.prepare.prepare_data(config, progress=False).data  # the cache just written, as train reads it
    lengths = data.train.lengths() + data.eval.lengths()
    workers = config.data.num_proc  # None: Ember decides (the machine's cores, one for small sets)
    peers.child_result(seconds=seconds, samples=len(lengths), tokens=sum(lengths), workers=workers)


def lf_dataset_dir(tmp: Path, data: str, fmt: str) -> Path:
    """LLaMA-Factory reads datasets by name from a folder with a dataset_info.json; this one names the file `bench`."""
    data_dir = tmp / "lf-data"
    data_dir.mkdir()
    name = "bench" + Path(data).suffix
    (data_dir / name).symlink_to(data)
    info = {"file_name": name, "formatting": fmt}
    if fmt == "sharegpt":
        info["columns"] = {"messages": "conversations"}
    (data_dir / "dataset_info.json").write_text(json.dumps({"bench": info}))
    return data_dir


def child_llamafactory(a) -> None:
    tmp = peers.child_tmp()
    data_dir = lf_dataset_dir(tmp, a.data, a.format)
    from llamafactory.data import get_dataset, get_template_and_fix_tokenizer
    from llamafactory.hparams import get_train_args
    from llamafactory.model import load_tokenizer

    peers.warm_imports()
    start = time.perf_counter()
    model_args, data_args, training_args, _, _ = get_train_args({
        "model_name_or_path": a.model, "stage": "sft", "do_train": True, "finetuning_type": "lora",
        "dataset": "bench", "dataset_dir": str(data_dir), "cutoff_len": a.max_length,
        "template": None if a.template == "none" else a.template,
        "overwrite_cache": True, "preprocessing_num_workers": a.num_proc, "tokenized_path": str(tmp / "tokenized"),
        "output_dir": str(tmp / "out"), "report_to": "none", "use_cpu": True,
    })
    tokenizer_module = load_tokenizer(model_args)
    template = get_template_and_fix_tokenizer(tokenizer_module["tokenizer"], data_args)
    module = get_dataset(template, model_args, data_args, training_args, stage="sft", **tokenizer_module)
    seconds = time.perf_counter() - start
    ids = module["train_dataset"]["input_ids"]
    peers.child_result(seconds=seconds, samples=len(ids), tokens=sum(map(len, ids)), workers=a.num_proc or 1)


def tiny_model(model_dir: str):
    """A 2-layer model with SmolLM2's vocabulary: SFTTrainer needs a model, the preparation does not use it."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(model_dir)
    config.update({"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
                   "num_key_value_heads": 2, "head_dim": 16})
    return AutoModelForCausalLM.from_config(config)


def child_trl(a) -> None:
    tmp = peers.child_tmp()
    from datasets import load_dataset
    from transformers import AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    model = tiny_model(a.model)
    fmt = a.format
    peers.warm_imports()

    def convert(record):  # TRL reads ChatML `messages`; its own ShareGPT conversion keeps the roles human/gpt
        return {"messages": to_messages(record, fmt) or []}

    start = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(a.model)
    raw = load_dataset("json", data_files=a.data, split="train")
    dataset = raw.map(convert, remove_columns=raw.column_names, num_proc=a.num_proc)
    dataset = dataset.filter(lambda r: len(r["messages"]) > 0, num_proc=a.num_proc)
    args = SFTConfig(output_dir=str(tmp / "out"), max_length=a.max_length, dataset_num_proc=a.num_proc,
                     report_to="none", use_cpu=True, bf16=False, gradient_checkpointing=False)
    trainer = SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer)
    seconds = time.perf_counter() - start
    ids = trainer.train_dataset["input_ids"]
    peers.child_result(seconds=seconds, samples=len(ids), tokens=sum(map(len, ids)), workers=a.num_proc or 1)


CHILDREN = {"ember": child_ember, "llamafactory": child_llamafactory, "trl": child_trl}


# ---------------------------------------------------------------------------------------------------- driver


def child_argv(tool: str, data: Path, fmt: str, max_length: int, args, model: str) -> list[str]:
    argv = [str(Path(__file__).resolve()), "--child", tool, "--data", str(data), "--format", fmt,
            "--max-length", str(max_length), "--model", model, "--template", args.lf_template]
    return argv + (["--num-proc", str(args.num_proc)] if args.num_proc else [])


def report(rows: list[dict], refs: dict, runs, args, synth: dict | None) -> str:
    label = {"ember": "Ember", "llamafactory": "LLaMA-Factory", "trl": "TRL"}
    lines = [
        "# data_vs_peers: Ember vs LLaMA-Factory preprocessing vs TRL SFTTrainer preparation (bench/data_vs_peers.py)",
        *peers.machine_lines(),
        "# tools:",
        *peers.versions_lines(list(TOOLS)),
        f"# settings: tokenizer SmolLM2-135M-Instruct (embedded GGUF, converted); LLaMA-Factory template "
        f"'{args.lf_template}'; workers: {args.num_proc or 'each tool default'}; {args.repeats} interleaved round(s); "
        f"median timed seconds{'; QUICK (smoke test sizes)' if args.quick else ''}",
        "#",
        "# inputs (ref tokens = every conversation rendered whole with SmolLM2's chat template, before any limit):",
    ]
    for name, ref in refs.items():
        lines.append(f"#   {name:16s} {ref['records']:>5} records, {ref['conversations']:>5} with a final answer, "
                     f"{ref['rounds']:.1f} rounds avg (max {ref['max_rounds']}, {ref['multi']} multi-round), "
                     f"{ref['tokens']:>9,} ref tokens; "
                     f"{ref['over_1024']} conversations over 1024 tokens, {ref['over_512']} over 512")
    lines += ["", f"{'set @ max_length':22} {'tool':14} {'workers':>7} {'samples':>7} {'own tokens':>10} "
              f"{'timed s':>8} {'wall s':>7} {'ref tok/s':>10} {'peak RSS':>9} {'vs fastest peer':>15}"]
    for r in rows:
        if r["group"].startswith("synth"):
            continue
        res, ref = r["result"], refs[r["group"].split("@")[0]]
        workers = "auto" if res["workers"] is None else res["workers"]
        lines.append(f"{r['group']:22} {label[r['tool']]:14} {workers:>7} {res['samples']:>7} "
                     f"{res['tokens']:>10,} {r['seconds']:>8.2f} {r['wall_s']:>7.1f} "
                     f"{ref['tokens'] / r['seconds']:>10,.0f} "
                     f"{r['rss_gb']:>7.2f}GB {r['vs_peer']:>14.2f}x")
    if synth:
        lines += ["", f"# Ember cost per token, one worker process: {synth['conversations']} conversation(s) of "
                  f"{synth['long']} rounds vs "
                  f"{synth['conversations'] * synth['long'] // synth['short']} of {synth['short']} rounds, the same "
                  "ShareGPT-zh rounds", f"{'max_length':>10} {'rounds':>6} {'ref tokens':>10} {'timed s':>8} "
                  f"{'µs/token':>9} {'per-token cost vs ' + str(synth['short']) + ' rounds':>30}"]
        for limit in synth["limits"]:
            group = f"synth@{limit_name(limit)}"
            short = next(r for r in rows if r["group"] == group and r["label"].endswith(f" {synth['short']}-round"))
            for n in (synth["short"], synth["long"]):
                r = next(r for r in rows if r["group"] == group and r["label"].endswith(f" {n}-round"))
                tokens = refs[f"synth {n}-round"]["tokens"]
                cost, base = r["seconds"] / tokens, short["seconds"] / refs[f"synth {synth['short']}-round"]["tokens"]
                lines.append(f"{limit_name(limit):>10} {n:>6} {tokens:>10,} {r['seconds']:>8.2f} "
                             f"{cost * 1e6:>9.2f} {cost / base:>29.2f}x")
    lines += [
        "",
        "timed s: median over rounds of each tool's timed section (after imports: tokenizer load, read, convert, "
        "tokenise, label, truncate, write). wall s: the whole child process, imports included.",
        "ref tok/s: the set's ref tokens / timed s (one count for every tool). own tokens: the ids the tool kept "
        "(after its own truncation). vs fastest peer: the fastest peer's timed s / this row's (>1: faster).",
        *peers.runs_section(runs),
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke test: 40 records per set, 1024 only, 1 round, "
                        "16- vs 4-round synthetic conversations")
    parser.add_argument("--record", action="store_true", help="also write bench/results/data_vs_peers.txt")
    parser.add_argument("--repeats", type=int, help="interleaved rounds (default 3; --quick 1)")
    parser.add_argument("--max-lengths", type=int, nargs="+", help="length limits (default 1024 512; --quick 1024)")
    parser.add_argument("--sets", nargs="+", choices=list(SETS), default=list(SETS))
    parser.add_argument("--records", type=int, help="use the first N records of each set (default all; --quick 40)")
    parser.add_argument("--num-proc", type=int, help="worker processes for every tool (default: each tool's default)")
    parser.add_argument("--lf-template", default="smollm2",
                        help="LLaMA-Factory template (default smollm2; none: it parses the tokenizer's own)")
    parser.add_argument("--synth-rounds", type=int, nargs=2, metavar=("LONG", "SHORT"),
                        help="rounds per synthetic conversation (default 160 4; --quick 16 4)")
    parser.add_argument("--synth-conversations", type=int, help="long synthetic conversations (default 2; --quick 1)")
    parser.add_argument("--no-synth", action="store_true", help="skip the per-token cost of long conversations")
    parser.add_argument("--child", choices=TOOLS, help=argparse.SUPPRESS)
    for name in ("--data", "--format", "--model", "--template"):
        parser.add_argument(name, help=argparse.SUPPRESS)
    parser.add_argument("--max-length", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        CHILDREN[args.child](args)
        return
    if args.quick and args.record:
        parser.error("--quick runs are smoke tests: they are not recorded")
    args.repeats = args.repeats or (1 if args.quick else 3)
    args.max_lengths = args.max_lengths or ([1024] if args.quick else [1024, 512])
    args.records = args.records or (40 if args.quick else None)
    long_rounds, short_rounds = args.synth_rounds or ((16, 4) if args.quick else (160, 4))
    n_long = args.synth_conversations or (1 if args.quick else 2)

    sys.path.insert(0, str(peers.ROOT))
    from common import shared_data
    from transformers import AutoTokenizer

    from ember.models.loading import resolve_source

    base = shared_data()
    model = resolve_source("smollm2-135m-instruct")
    tokenizer = AutoTokenizer.from_pretrained(model)
    for tool in TOOLS[1:]:
        peers.ensure_venv(tool)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="ember-data-vs-peers-") as work_dir:
        work = Path(work_dir)
        inputs, refs, jobs = {}, {}, []
        for name in args.sets:
            rel, fmt = SETS[name]
            path = base / rel
            records = read_records(path)
            if args.records:
                records = records[:args.records]
                path = work / f"{name}{Path(rel).suffix}"
                write_records(records, path, fmt)
            inputs[name] = (path, fmt)
            refs[name] = reference_tokens(records, fmt, tokenizer)
        for limit in args.max_lengths:
            for name, (path, fmt) in inputs.items():
                for tool in TOOLS:
                    argv = child_argv(tool, path, fmt, limit, args, model)
                    jobs.append(peers.Job(tool, tool, argv, f"{name}@{limit}"))
        synth = None
        if not args.no_synth:
            source = read_records(base / SETS["sharegpt_zh"][0])
            paths = synth_sets(source, long_rounds, n_long, short_rounds, work)
            for n, path in paths.items():
                refs[f"synth {n}-round"] = reference_tokens(read_records(path), "sharegpt", tokenizer)
            synth = {"long": long_rounds, "short": short_rounds, "conversations": n_long,
                     "limits": [args.max_lengths[0], NO_LIMIT]}
            for limit in synth["limits"]:
                for n, path in paths.items():
                    # One worker for both: the few long conversations would otherwise run in one process and the
                    # many short ones in all of them, and the ratio would measure the pool, not the cost per token.
                    argv = child_argv("ember", path, "sharegpt", limit, args, model)
                    argv = argv[:argv.index("--num-proc")] if "--num-proc" in argv else argv
                    jobs.append(peers.Job(f"ember {n}-round", "ember", argv + ["--num-proc", "1"],
                                          f"synth@{limit_name(limit)}"))
        runs, rows = peers.measure("data-vs-peers", jobs, args.repeats)
    peers.publish("data_vs_peers", report(rows, refs, runs, args, synth), start, args.record)


if __name__ == "__main__":
    main()
