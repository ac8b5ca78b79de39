"""The shipped chat templates: golden strings written from each family's official format, generation prompts,
prefix stability (the renderer's contract) and the small loading API."""

from __future__ import annotations

from types import SimpleNamespace

import jinja2
import pytest

from ember.data.templates import TEMPLATE_DIR, ChatTemplate, load_template, template_names
from ember.errors import ConfigError

SHIPPED = [
    "alpaca", "baichuan", "baichuan2", "belle", "chatglm2", "chatglm3", "chatml", "default", "firefly", "hermes",
    "internlm", "internlm2", "llama2", "llama3", "mistral", "qwen", "vicuna", "xverse", "yi", "ziya",
]  # fmt: skip

SYS = "You are Ember, a concise assistant."
U1, A1 = "Hi! Who are you?", "I am Ember."
U2, A2 = "用一句话介绍长城。", "长城是中国古代修建的军事防御工程。"
U3, A3 = "Thanks, bye.", "Goodbye!"
CONVERSATION = [
    {"role": "system", "content": SYS},
    {"role": "user", "content": U1},
    {"role": "assistant", "content": A1},
    {"role": "user", "content": U2},
    {"role": "assistant", "content": A2},
    {"role": "user", "content": U3},
    {"role": "assistant", "content": A3},
]

# The family's real BOS/EOS strings; apply_chat_template lets keyword arguments override the tokenizer's own special
# tokens (`{**special_tokens_map, **kwargs}` in transformers 5), and test_tokenizer_override_matches_kwargs checks
# that a tokenizer loaded with these overrides renders the same. Empty: the SmolLM2 tokenizer's own tokens.
LLAMA = {"bos_token": "<s>", "eos_token": "</s>"}
TOKENS = {
    "alpaca": LLAMA,
    "baichuan": LLAMA,
    "baichuan2": LLAMA,
    "belle": LLAMA,
    "chatglm2": {"eos_token": "</s>"},
    "chatglm3": {"eos_token": "</s>"},
    "chatml": {},
    "default": {"eos_token": "<|endoftext|>"},
    "firefly": LLAMA,
    "hermes": {},
    "internlm": LLAMA,
    "internlm2": LLAMA,
    "llama2": LLAMA,
    "llama3": {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"},
    "mistral": LLAMA,
    "qwen": {"eos_token": "<|im_end|>"},
    "vicuna": LLAMA,
    "xverse": {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>"},
    "yi": {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>"},
    "ziya": LLAMA,
}

CHATML_BODY = (
    f"<|im_start|>system\n{SYS}<|im_end|>\n"
    f"<|im_start|>user\n{U1}<|im_end|>\n<|im_start|>assistant\n{A1}<|im_end|>\n"
    f"<|im_start|>user\n{U2}<|im_end|>\n<|im_start|>assistant\n{A2}<|im_end|>\n"
    f"<|im_start|>user\n{U3}<|im_end|>\n<|im_start|>assistant\n{A3}<|im_end|>\n"
)
ALPACA_PREAMBLE = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request."
)
VICUNA_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)

# The whole conversation, written out from each family's official format.
GOLDEN = {
    "alpaca": (
        f"<s>{SYS}\n\n"
        f"### Instruction:\n{U1}\n\n### Response:\n{A1}</s>\n\n"
        f"### Instruction:\n{U2}\n\n### Response:\n{A2}</s>\n\n"
        f"### Instruction:\n{U3}\n\n### Response:\n{A3}</s>"
    ),
    "baichuan": (
        f"{SYS}<reserved_102>{U1}<reserved_103>{A1}</s><reserved_102>{U2}<reserved_103>{A2}</s>"
        f"<reserved_102>{U3}<reserved_103>{A3}</s>"
    ),
    "baichuan2": (
        f"{SYS}<reserved_106>{U1}<reserved_107>{A1}</s><reserved_106>{U2}<reserved_107>{A2}</s>"
        f"<reserved_106>{U3}<reserved_107>{A3}</s>"
    ),
    "belle": (
        f"<s>{SYS}\n\n"
        f"Human: \n{U1}\n\nAssistant: \n{A1}</s>"
        f"Human: \n{U2}\n\nAssistant: \n{A2}</s>"
        f"Human: \n{U3}\n\nAssistant: \n{A3}</s>"
    ),
    "chatglm2": (
        f"[gMASK]sop{SYS}\n\n"
        f"[Round 1]\n\n问：{U1}\n\n答：{A1}</s>\n\n"
        f"[Round 2]\n\n问：{U2}\n\n答：{A2}</s>\n\n"
        f"[Round 3]\n\n问：{U3}\n\n答：{A3}</s>"
    ),
    "chatglm3": (
        f"[gMASK]sop<|system|>\n {SYS}"
        f"<|user|>\n {U1}<|assistant|>\n {A1}</s>"
        f"<|user|>\n {U2}<|assistant|>\n {A2}</s>"
        f"<|user|>\n {U3}<|assistant|>\n {A3}</s>"
    ),
    "chatml": CHATML_BODY,
    "default": (
        f"System: {SYS}\n\n"
        f"User: {U1}\nAssistant: {A1}<|endoftext|>\n"
        f"User: {U2}\nAssistant: {A2}<|endoftext|>\n"
        f"User: {U3}\nAssistant: {A3}<|endoftext|>"
    ),
    "firefly": f"<s>{SYS}\n\n{U1}</s>{A1}</s><s>{U2}</s>{A2}</s><s>{U3}</s>{A3}</s>",
    "hermes": CHATML_BODY,  # without tools; tests/data/test_tools.py has the goldens with tools, calls and results
    "internlm": (
        f"<s><|System|>:{SYS}\n"
        f"<|User|>:{U1}\n<|Bot|>:{A1}<eoa>\n"
        f"<|User|>:{U2}\n<|Bot|>:{A2}<eoa>\n"
        f"<|User|>:{U3}\n<|Bot|>:{A3}<eoa>\n"
    ),
    "internlm2": "<s>" + CHATML_BODY,
    "llama2": (
        f"<s>[INST] <<SYS>>\n{SYS}\n<</SYS>>\n\n{U1} [/INST] {A1} </s>"
        f"<s>[INST] {U2} [/INST] {A2} </s>"
        f"<s>[INST] {U3} [/INST] {A3} </s>"
    ),
    "llama3": (
        f"<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n{SYS}<|eot_id|>"
        f"<|start_header_id|>user<|end_header_id|>\n\n{U1}<|eot_id|>"
        f"<|start_header_id|>assistant<|end_header_id|>\n\n{A1}<|eot_id|>"
        f"<|start_header_id|>user<|end_header_id|>\n\n{U2}<|eot_id|>"
        f"<|start_header_id|>assistant<|end_header_id|>\n\n{A2}<|eot_id|>"
        f"<|start_header_id|>user<|end_header_id|>\n\n{U3}<|eot_id|>"
        f"<|start_header_id|>assistant<|end_header_id|>\n\n{A3}<|eot_id|>"
    ),
    "mistral": (
        f"<s> [INST] {SYS}\n\n{U1} [/INST] {A1}</s>"
        f" [INST] {U2} [/INST] {A2}</s>"
        f" [INST] {U3} [/INST] {A3}</s>"
    ),
    "qwen": CHATML_BODY,
    "vicuna": f"<s>{SYS} USER: {U1} ASSISTANT: {A1}</s>USER: {U2} ASSISTANT: {A2}</s>USER: {U3} ASSISTANT: {A3}</s>",
    "xverse": (
        f"{SYS}\n\n"
        f"Human: {U1}\n\nAssistant: {A1}<|endoftext|>"
        f"Human: {U2}\n\nAssistant: {A2}<|endoftext|>"
        f"Human: {U3}\n\nAssistant: {A3}<|endoftext|>"
    ),
    "yi": CHATML_BODY,
    "ziya": (
        f"<s>{SYS}\n"
        f"<human>:{U1}\n<bot>:{A1}</s>\n"
        f"<human>:{U2}\n<bot>:{A2}</s>\n"
        f"<human>:{U3}\n<bot>:{A3}</s>"
    ),
}

# One user turn, no system message, with the generation prompt: defaults appear, and the text ends exactly where
# the answer starts.
GENERATION = {
    "alpaca": f"<s>{ALPACA_PREAMBLE}\n\n### Instruction:\n{U1}\n\n### Response:\n",
    "baichuan": f"<reserved_102>{U1}<reserved_103>",
    "baichuan2": f"<reserved_106>{U1}<reserved_107>",
    "belle": f"<s>Human: \n{U1}\n\nAssistant: \n",
    "chatglm2": f"[gMASK]sop[Round 1]\n\n问：{U1}\n\n答：",
    "chatglm3": f"[gMASK]sop<|user|>\n {U1}<|assistant|>",
    "chatml": f"<|im_start|>user\n{U1}<|im_end|>\n<|im_start|>assistant\n",
    "default": f"User: {U1}\nAssistant:",
    "firefly": f"<s>{U1}</s>",
    "hermes": f"<|im_start|>user\n{U1}<|im_end|>\n<|im_start|>assistant\n",
    "internlm": f"<s><|User|>:{U1}\n<|Bot|>:",
    "internlm2": f"<s><|im_start|>user\n{U1}<|im_end|>\n<|im_start|>assistant\n",
    "llama2": f"<s>[INST] {U1} [/INST]",
    "llama3": (
        f"<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n{U1}<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    ),
    "mistral": f"<s> [INST] {U1} [/INST]",
    "qwen": (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        f"<|im_start|>user\n{U1}<|im_end|>\n<|im_start|>assistant\n"
    ),
    "vicuna": f"<s>{VICUNA_SYSTEM} USER: {U1} ASSISTANT:",
    "xverse": f"Human: {U1}\n\nAssistant: ",
    "yi": f"<|im_start|>user\n{U1}<|im_end|>\n<|im_start|>assistant\n",
    "ziya": f"<s><human>:{U1}\n<bot>:",
}

# Role-generic formats (every message is <header>{role}...): they render any role in any position.
ROLE_GENERIC = {"chatml", "qwen", "yi", "internlm2", "llama3"}
TOOL_ROLE = {"hermes"}  # renders tool results (tests/data/test_tools.py checks what it refuses)


def render(tokenizer, name: str, messages, add_generation_prompt: bool = False) -> str:
    return tokenizer.apply_chat_template(
        messages,
        chat_template=load_template(name).source,
        tokenize=False,
        add_generation_prompt=add_generation_prompt,
        **TOKENS[name],
    )


def test_shipped_names_and_index_agree():
    assert template_names() == SHIPPED
    assert set(GOLDEN) == set(GENERATION) == set(TOKENS) == set(SHIPPED)
    for name in SHIPPED:
        tpl = load_template(name)
        assert isinstance(tpl, ChatTemplate) and tpl.name == name and tpl.stop and tpl.description
        assert tpl.source == (TEMPLATE_DIR / f"{name}.jinja").read_text(encoding="utf-8")


@pytest.mark.parametrize("name", SHIPPED)
def test_golden_conversation(smol_tokenizer, name):
    assert render(smol_tokenizer, name, CONVERSATION) == GOLDEN[name]


@pytest.mark.parametrize("name", SHIPPED)
def test_generation_prompt(smol_tokenizer, name):
    assert render(smol_tokenizer, name, [CONVERSATION[1]], add_generation_prompt=True) == GENERATION[name]


@pytest.mark.parametrize("name", SHIPPED)
@pytest.mark.parametrize("with_system", [True, False], ids=["system", "no-system"])
def test_prefix_stable(smol_tokenizer, name, with_system):
    conv = CONVERSATION if with_system else CONVERSATION[1:]
    full = render(smol_tokenizer, name, conv)
    for k, message in enumerate(conv):
        if message["role"] != "assistant":
            continue
        prompt = render(smol_tokenizer, name, conv[:k], add_generation_prompt=True)
        answered = render(smol_tokenizer, name, conv[: k + 1])
        assert answered.startswith(prompt), f"{name}: generation prompt for turn {k} is not a prefix of the answer"
        assert full.startswith(answered), f"{name}: the conversation cut after turn {k} is not a prefix"
        # The generation prompt only appends: the prompt without it is a prefix too.
        assert prompt.startswith(render(smol_tokenizer, name, conv[:k]))


@pytest.mark.parametrize("name", SHIPPED)
def test_each_answer_ends_with_a_stop_string(smol_tokenizer, name):
    tpl = load_template(name)
    stops = [s.replace("{eos_token}", TOKENS[name].get("eos_token", smol_tokenizer.eos_token)) for s in tpl.stop]
    for k, message in enumerate(CONVERSATION):
        if message["role"] != "assistant":
            continue
        prompt = render(smol_tokenizer, name, CONVERSATION[:k], add_generation_prompt=True)
        answer = render(smol_tokenizer, name, CONVERSATION[: k + 1])[len(prompt) :]
        assert message["content"] in answer
        # the marker ends the turn; only a newline before the next turn may follow it
        assert any(answer.rstrip("\n").endswith(s) for s in stops), f"{name}: answer {answer!r} lacks one of {stops}"


@pytest.mark.parametrize("name", SHIPPED)
def test_special_tokens_are_emitted_or_stopped_on(smol_tokenizer, name):
    tpl = load_template(name)
    for token in tpl.special_tokens:
        assert token in GOLDEN[name] or token in tpl.stop, f"{name}: lists {token} but never uses it"
    for token in ("<|im_start|>", "<|im_end|>", "<|eot_id|>", "<reserved_106>", "<eoa>", "[gMASK]", "<|user|>"):
        if token in GOLDEN[name]:
            assert token in tpl.special_tokens, f"{name}: emits {token} but does not list it in index.yaml"


def test_tokenizer_override_matches_kwargs(smollm2_dir):
    """A tokenizer loaded with the family's BOS/EOS renders the goldens without keyword overrides."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(smollm2_dir, bos_token="<s>", eos_token="</s>")
    for name in ("llama2", "mistral", "firefly"):
        assert tok.apply_chat_template(CONVERSATION, chat_template=load_template(name).source, tokenize=False) == (
            GOLDEN[name]
        )
    assert load_template("llama2").stop_strings(tok) == ["</s>"]


@pytest.mark.parametrize("name", sorted(set(SHIPPED) - ROLE_GENERIC - TOOL_ROLE))
def test_misplaced_system_and_unknown_roles_raise(smol_tokenizer, name):
    with pytest.raises(jinja2.exceptions.TemplateError, match="system message may only come first"):
        render(smol_tokenizer, name, [CONVERSATION[1], CONVERSATION[2], CONVERSATION[0]])
    with pytest.raises(jinja2.exceptions.TemplateError, match="unsupported role 'tool'"):
        render(smol_tokenizer, name, [CONVERSATION[1], {"role": "tool", "content": "42"}])


def test_stop_strings_resolve_eos(smol_tokenizer):
    assert smol_tokenizer.eos_token == "<|im_end|>"
    assert load_template("qwen").stop_strings(smol_tokenizer) == ["<|im_end|>"]  # deduplicated
    assert load_template("chatglm3").stop_strings(smol_tokenizer) == ["<|im_end|>", "<|user|>", "<|observation|>"]
    assert load_template("internlm").stop_strings(SimpleNamespace(eos_token="</s>")) == ["<eoa>", "</s>"]
    with pytest.raises(ConfigError, match="no eos_token"):
        load_template("llama2").stop_strings(SimpleNamespace(eos_token=None))


def test_unknown_name_suggests_the_closest():
    with pytest.raises(ConfigError, match="did you mean 'llama2'") as err:
        load_template("llama-2")
    assert "chatglm3" in str(err.value) and ".jinja" in str(err.value)
    with pytest.raises(ConfigError, match="not found"):
        load_template("missing/template.jinja")


def test_a_template_file_is_compiled_when_loaded(tmp_path):
    path = tmp_path / "marked.jinja"
    # transformers' additions to the syntax: loop controls and the assistant-mask tag
    path.write_text("{% for m in messages %}{% if m['role'] == 'assistant' %}{% generation %}{{ m['content'] }}"
                    "{% endgeneration %}{% else %}{{ m['content'] | tojson }}{% endif %}{% if loop.index > 9 %}"
                    "{% break %}{% endif %}{% endfor %}", encoding="utf-8")
    assert load_template(str(path)).name == "marked"
    path.write_text("{% for m in messages %}\n{{ m['content'] | shout }}\n{% endfor %}", encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_template(str(path))
    assert str(info.value) == (f"{path}:2: chat template syntax error: No filter named 'shout'; fix the template (or "
                               "use a shipped one: `ember templates`)")


def test_load_from_path(tmp_path, smol_tokenizer):
    path = tmp_path / "mine.jinja"
    path.write_text("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}", encoding="utf-8")
    tpl = load_template(str(path))
    assert (tpl.name, tpl.stop, tpl.special_tokens) == ("mine", ("{eos_token}",), ())
    out = smol_tokenizer.apply_chat_template(CONVERSATION[1:3], chat_template=tpl.source, tokenize=False)
    assert out == f"user: {U1}\nassistant: {A1}\n"
