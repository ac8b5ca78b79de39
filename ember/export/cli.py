"""`ember export`: a run → a merged standalone HF directory or a GGUF file."""

from __future__ import annotations


def cmd_export(args) -> int:
    from ember.export.merge import export

    if args.push_to_hub:
        from ember.export.push import check_push

        check_push(args.push_to_hub, args.hub, args.format)
    target = export(args.model, args.to, adapter=args.adapter, fmt=args.format, gguf_type=args.gguf_type,
                    dtype=args.dtype)
    print(f"wrote {target}")
    if args.push_to_hub:
        from ember.export.push import push_export

        files = push_export(target, args.model, args.adapter, args.push_to_hub, args.hub, args.private)
        print(f"uploaded {len(files)} files of {target} to {args.hub}:{args.push_to_hub}")
    return 0


def register(sub) -> None:
    p = sub.add_parser("export", help="merge a LoRA adapter into its base; save a HF directory or a GGUF file")
    p.add_argument("--model", required=True, help="output dir of `ember train`, HF dir, .gguf or name")
    p.add_argument("--adapter", default=None, help="a LoRA adapter dir to put on --model")
    p.add_argument("--to", required=True, help="output directory (hf), or .gguf file / directory (gguf)")
    p.add_argument("--format", choices=("hf", "gguf"), default="hf")
    p.add_argument("--gguf-type", choices=("f32", "f16", "bf16", "q8_0", "q4_k_m", "q5_k_m"), default="f16",
                   help="tensor type of 2-D weights in the GGUF (norms stay f32); q4_k_m/q5_k_m are refused with "
                        "the llama.cpp command that makes them (no K-quant quantiser installs here)")
    p.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default="float32",
                   help="weight dtype of the merged HF directory")
    p.add_argument("--push-to-hub", default=None, metavar="REPO",
                   help="upload the exported directory with a generated model card (README.md) to ORG/NAME")
    p.add_argument("--hub", choices=("huggingface", "modelscope"), default="huggingface",
                   help="where --push-to-hub uploads (modelscope needs pip install 'ember[modelscope]')")
    p.add_argument("--private", action="store_true", help="with --push-to-hub: create the repository private")
    p.set_defaults(func=cmd_export)
