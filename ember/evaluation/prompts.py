"""k-shot multiple-choice prompts, as plain text or rendered with the model's chat template.

Plain (Chinese benchmarks; English uses "Answer:" and scores " B" with its leading space):

    以下是关于高中生物的单项选择题，请直接给出正确答案的选项。

    <shot question>
    A. ...
    B. ...
    答案：C

    <question>
    A. ...
    答案：            <- each choice letter is scored as the continuation of this text

Chat: the same header and questions as alternating user/assistant turns (the assistant answers with the letter),
rendered by `tokenizer.apply_chat_template(..., tokenize=False, add_generation_prompt=True)`; the letter is scored
right after the generation prompt. A model trained with `data.system` is given that system prompt first.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

from ember.evaluation.benchmarks import LETTERS, BenchSpec, Question, Subject

PromptForm = Literal["plain", "chat"]

HEADERS = {
    "zh": "以下是关于{subject}的单项选择题，请直接给出正确答案的选项。\n\n",
    "en": "The following are multiple choice questions (with answers) about {subject}.\n\n",
}
ANSWER_CUE = {"zh": "答案：", "en": "Answer:"}
LETTER_PREFIX = {"zh": "", "en": " "}  # "Answer: B" carries a space; "答案：B" does not


@dataclass(frozen=True)
class MCPrompt:
    text: str
    continuations: tuple[str, ...]  # the exact text scored for each choice, in choice order
    add_special_tokens: bool  # plain text gets the tokenizer's BOS; a chat-rendered text already holds its own
    shots: int


def question_block(q: Question, language: str, cue: bool) -> str:
    lines = [q.question.strip()]
    lines += [f"{LETTERS[i]}. {choice}" for i, choice in enumerate(q.choices)]
    return "\n".join(lines) + ("\n" + ANSWER_CUE[language] if cue else "")


def build_prompt(
    spec: BenchSpec, subject: Subject, question: Question, shots: int, form: PromptForm, tokenizer=None,
    system: Optional[str] = None,
) -> MCPrompt:
    examples = subject.dev[:shots]
    header = HEADERS[spec.language].format(subject=subject.display)
    if form == "plain":
        prefix = LETTER_PREFIX[spec.language]
        parts = [question_block(s, spec.language, cue=True) + prefix + s.gold + "\n\n" for s in examples]
        text = header + "".join(parts) + question_block(question, spec.language, cue=True)
        conts = tuple(prefix + LETTERS[i] for i in range(len(question.choices)))
        return MCPrompt(text, conts, add_special_tokens=True, shots=len(examples))
    if tokenizer is None or not getattr(tokenizer, "chat_template", None):
        raise ValueError("the chat prompt form needs a tokenizer with a chat template; use --prompt-format plain")
    messages = [{"role": "system", "content": system}] if system else []
    for s in examples:
        messages.append({"role": "user", "content": question_block(s, spec.language, cue=False)})
        messages.append({"role": "assistant", "content": s.gold})
    messages.append({"role": "user", "content": question_block(question, spec.language, cue=False)})
    first_user = 1 if system else 0
    messages[first_user]["content"] = header + messages[first_user]["content"]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    conts = tuple(LETTERS[i] for i in range(len(question.choices)))
    return MCPrompt(text, conts, add_special_tokens=False, shots=len(examples))
