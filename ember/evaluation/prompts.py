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
rendered by the run's own renderer with the generation prompt — byte for byte the prompt `ember chat` sends for that
conversation; the letter is scored right after it. A model trained with `data.system` is given that system prompt.

lm-eval-chat: the layout lm-evaluation-harness 0.4 builds with `--apply_chat_template --fewshot_as_multiturn`, so
scores compare with numbers quoted from it: the subject description is the system message (after a system
instruction, joined by a blank line, when the run has one), every question keeps its answer cue ("Answer:" /
"答案：") inside the user turn, each shot's assistant turn is the bare letter, and the scored continuation is the
letter with no leading space (lm-eval drops the target delimiter under a chat template).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

from ember.evaluation.benchmarks import LETTERS, BenchSpec, Question, Subject

PromptForm = Literal["plain", "chat", "lm-eval-chat"]

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
    spec: BenchSpec, subject: Subject, question: Question, shots: int, form: PromptForm, renderer=None,
    system: Optional[str] = None,
) -> MCPrompt:
    """The k-shot prompt for `question`; `renderer` (the run's `ember.data.render.Renderer`) renders chat forms."""
    examples = subject.dev[:shots]
    header = HEADERS[spec.language].format(subject=subject.display)
    if form == "plain":
        prefix = LETTER_PREFIX[spec.language]
        parts = [question_block(s, spec.language, cue=True) + prefix + s.gold + "\n\n" for s in examples]
        text = header + "".join(parts) + question_block(question, spec.language, cue=True)
        conts = tuple(prefix + LETTERS[i] for i in range(len(question.choices)))
        return MCPrompt(text, conts, add_special_tokens=True, shots=len(examples))
    if renderer is None:
        raise ValueError("the chat prompt forms need the model's chat template; use --prompt-format plain")
    cue = form == "lm-eval-chat"
    if cue:  # lm-eval: system instruction + fewshot delimiter + description, as one system message
        messages = [{"role": "system", "content": (system + "\n\n" if system else "") + header}]
    else:
        messages = [{"role": "system", "content": system}] if system else []
    for s in examples:
        messages.append({"role": "user", "content": question_block(s, spec.language, cue=cue)})
        messages.append({"role": "assistant", "content": s.gold})
    messages.append({"role": "user", "content": question_block(question, spec.language, cue=cue)})
    if not cue:
        first_user = 1 if system else 0
        messages[first_user]["content"] = header + messages[first_user]["content"]
    text = renderer.prompt_text(messages)
    conts = tuple(LETTERS[i] for i in range(len(question.choices)))
    return MCPrompt(text, conts, add_special_tokens=False, shots=len(examples))
