"""`ember export`: a run → a merged standalone HF directory or a GGUF file."""

from __future__ import annotations


def cmd_export(args) -> int:
    from ember.export.merge import export

    target = export(args.model, args.to, adapter=args.adapter, fmt=args.format, gguf_type=args.gguf_type,
                    dtype=args.dtype)
    print(f"wrote {target}")
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
    p.set_defaults(func=cmd_export)
