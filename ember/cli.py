"""`ember <command>`: a table of commands. Each handler takes parsed args and returns an exit code.

User mistakes (EmberError) print one readable line and exit 2 (3: training stopped itself, e.g. diverged); they
never show a traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable

from ember.errors import EmberError


def _load_run_config(args):
    from ember.config import load_config, validate

    return validate(load_config(args.config, args.overrides))


def cmd_data_preview(args) -> int:
    from ember.training.prepare import new_token_warning, prepare_data
    from ember.data.preview import print_preview

    cfg = _load_run_config(args)
    prepared = prepare_data(cfg)
    print_preview(prepared.data, prepared.tokenizer, n=args.n)
    if prepared.from_cache:
        print("(loaded from the processed-data cache)")
    if warning := new_token_warning(prepared, cfg):
        print(f"warning: {warning}")
    return 0


def cmd_data_export(args) -> int:
    from ember.training.prepare import export_samples

    count, report, summary = export_samples(_load_run_config(args), args.out, args.report)
    for line in summary:
        print(line)
    print(f"wrote {count} samples to {args.out} (data report: {report})")
    return 0


def cmd_data_prepare(args) -> int:
    from ember.training.prepare import prepare_cache

    entry, cached, summary = prepare_cache(_load_run_config(args))
    for line in summary:
        print(line)
    print(f"{'found' if cached else 'wrote'} the processed data in {entry} (the cache `ember train` reads with "
          "this config's data section, tokenizer and template)")
    return 0


def cmd_templates(args) -> int:
    from ember.data.templates import load_template, template_names

    for name in template_names():
        print(f"{name:12s} {load_template(name).description}")
    return 0


def cmd_config(args) -> int:
    from ember.config.reference import annotated_yaml, section_yaml

    print(section_yaml(args.section) if args.section else annotated_yaml(), end="")
    return 0


def _add_run_config(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="run config YAML (model / data / method / train / output)")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. data.max_length=512 train.learning_rate=1e-4")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ember", description="Tune, serve and measure LLMs from one YAML file.")
    parser.add_argument("-v", "--verbose", action="store_true", help="show library logs and full tracebacks")
    sub = parser.add_subparsers(dest="command", required=True)

    data = sub.add_parser("data", help="inspect the exact training samples").add_subparsers(dest="data_command", required=True)
    p = data.add_parser("preview", help="rendered samples with trained spans highlighted, summary and lints")
    _add_run_config(p)
    p.add_argument("--n", type=int, default=3, help="how many samples to show")
    p.set_defaults(func=cmd_data_preview)
    p = data.add_parser("export", help="write input_ids/labels per sample as JSON lines (preference stages: "
                                       "chosen_/rejected_input_ids and labels; kto: input_ids, labels, label)")
    _add_run_config(p)
    p.add_argument("--out", required=True, help="output .jsonl file")
    p.add_argument("--report", default=None, help="where the data report goes (default: OUT.report.json)")
    p.set_defaults(func=cmd_data_export)
    p = data.add_parser("prepare", help="build the processed-data cache a run will train on (Arrow, under "
                                        "data.cache_dir), e.g. on a CPU node before a GPU job; prints the report")
    _add_run_config(p)
    p.set_defaults(func=cmd_data_prepare)

    p = sub.add_parser("templates", help="list the shipped chat templates")
    p.set_defaults(func=cmd_templates)

    p = sub.add_parser("config", help="every config key with its default and help (the annotated reference)")
    p.add_argument("section", nargs="?", help="one section: model, data, method, train, preference, output")
    p.set_defaults(func=cmd_config)

    for register in _extensions():
        register(sub)
    return parser


def _extensions() -> list[Callable]:
    """Command groups that live with their concern (planning, training, serving, export, evaluation, vocab)."""
    import importlib

    out = []
    for module in ("ember.planning.cli", "ember.training.cli", "ember.inference.cli", "ember.serving.cli",
                   "ember.export.cli", "ember.evaluation.cli", "ember.vocab.cli"):
        try:
            out.append(importlib.import_module(module).register)
        except ModuleNotFoundError as exc:
            if exc.name != module:
                raise
    return out


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # Dotted overrides may come after options (`--out F data.max_length=512`): collect them wherever they stand.
    stray = [x for x in extra if x.startswith("-") or "=" not in x or not hasattr(args, "overrides")]
    if stray:
        parser.error(f"unrecognized arguments: {' '.join(stray)}")
    if extra:
        args.overrides = [*args.overrides, *extra]
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if not args.verbose:
        _quiet_libraries()
    try:
        return int(args.func(args) or 0)
    except EmberError as exc:
        if args.verbose:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def _quiet_libraries() -> None:
    import os
    import warnings

    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    warnings.filterwarnings("ignore", category=UserWarning)
    # bitsandbytes logs a harmless notice about optional hub kernels on every import (shared notes, Q1).
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # "Loading weights" bars; training progress has its own bar
    logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=FutureWarning)


if __name__ == "__main__":
    sys.exit(main())
