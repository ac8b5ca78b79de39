"""What a GGUF tensor type costs: export a model with `ember export --format gguf`, load the file back through
transformers (`gguf_file=`), and compare it with the fp32 model on chat prompts.

    python bench/gguf_quality.py [--model smollm2-135m-instruct] [--adapter DIR] [--type q8_0] [--new-tokens 32]

Per prompt: the fp32 model's greedy answer (new tokens), then, teacher-forced along that answer, the GGUF model's
top-1 agreement with fp32, its largest |Δlogit| (absolute and as a share of the largest |logit|) and the mean KL
divergence KL(fp32 ‖ gguf) per token; then the GGUF model's own greedy answer and where it first departs from the
fp32 answer. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

PROMPTS = [
    "What is the capital of France?",
    "Explain in two sentences why the sky is blue.",
    "Write a Python function that returns the square of a number.",
    "List three fruits that are red.",
    "你好，请介绍一下你自己。",
    "What is 17 + 25?",
    "Give me a short tip for sleeping better.",
    "Translate 'good morning' into Spanish.",
]


def main() -> None:
    import torch
    from transformers import AutoModelForCausalLM

    from ember.export.merge import export
    from ember.inference.loading import load_for_inference

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--adapter", default=None)
    parser.add_argument("--type", default="q8_0")
    parser.add_argument("--new-tokens", type=int, default=32)
    args = parser.parse_args()
    torch.manual_seed(0)

    ref = load_for_inference(args.model, args.adapter, dtype="float32")
    tok, stops = ref.tokenizer, list(ref.renderer.stop_token_ids)
    with tempfile.TemporaryDirectory() as tmp:
        path = export(args.model, str(Path(tmp) / f"model-{args.type}.gguf"), adapter=args.adapter, fmt="gguf",
                      gguf_type=args.type)
        quant = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)

    greedy = dict(max_new_tokens=args.new_tokens, do_sample=False, eos_token_id=stops, pad_token_id=tok.pad_token_id)
    rows, totals = [], {"agree": 0, "positions": 0, "same": 0}
    for prompt in PROMPTS:
        ids = tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                      return_dict=True)["input_ids"]
        x = torch.tensor([ids])
        with torch.no_grad():
            answer = ref.model.generate(input_ids=x, **greedy)[0, len(ids):]
            full = torch.cat([x[0], answer]).unsqueeze(0)
            want = ref.model(full).logits[0, len(ids) - 1:-1]
            got = quant(full).logits[0, len(ids) - 1:-1]
            own = quant.generate(input_ids=x, **greedy)[0, len(ids):]
        agree = (want.argmax(-1) == got.argmax(-1)).sum().item()
        diff = (got - want).abs().max().item()
        kl = torch.nn.functional.kl_div(got.log_softmax(-1), want.log_softmax(-1), log_target=True,
                                        reduction="none").sum(-1).mean().item()
        n = min(len(own), len(answer))
        first = next((i for i in range(n) if own[i] != answer[i]), None)
        same = own.tolist() == answer.tolist()
        if first is None and not same:
            first = n
        totals["agree"] += agree
        totals["positions"] += len(answer)
        totals["same"] += same
        rows.append(f"| {prompt} | {len(answer)} | {agree}/{len(answer)} | {diff:.3f} "
                    f"({100 * diff / want.abs().max().item():.1f} %) | {kl:.1e} | "
                    f"{'identical' if same else f'departs at token {first + 1}'} |")
    print(f"{args.model}{' + ' + args.adapter if args.adapter else ''}, GGUF {args.type} read by transformers vs fp32, "
          f"greedy, {args.new_tokens} new tokens at most\n")
    print("| prompt | answer tokens | top-1 agreement (teacher-forced) | max abs(Δlogit) (share of max abs(logit)) "
          "| mean KL per token | GGUF's own greedy answer |")
    print("|---|---|---|---|---|---|")
    print("\n".join(rows))
    print(f"\ntop-1 agreement {totals['agree']}/{totals['positions']} "
          f"({100 * totals['agree'] / totals['positions']:.1f} %); identical greedy answers {totals['same']}/{len(PROMPTS)}")


if __name__ == "__main__":
    main()
