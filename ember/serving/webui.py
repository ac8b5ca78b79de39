"""`ember webui`: a Gradio chat page over the same Engine that chat and serve use.

Multi-turn (the page keeps the history; it is cut to the token budget by dropping the oldest whole turns, as in
`ember chat`), streaming, a system prompt box, generation settings, Stop and Clear. Stopping — or closing the
tab — cancels the generation at the next token.
"""

from __future__ import annotations

import threading
from dataclasses import replace
from typing import Any, Optional

from ember.data.conversation import Message
from ember.inference.chat import ChatSession
from ember.inference.completion import GenerationOptions
from ember.inference.engine import Engine


def _text(content: Any) -> str:
    """Gradio 6 hands message content back as a list of parts; older pages send a plain string."""
    if isinstance(content, str):
        return content
    if isinstance(content, dict):
        return str(content.get("text") or content.get("value") or "")
    if isinstance(content, (list, tuple)):
        return "".join(_text(part) for part in content)
    return "" if content is None else str(content)


def history_messages(history: list[dict]) -> list[Message]:
    """Completed (user, assistant) turns from the page's history, in order."""
    out = [Message(m["role"], _text(m.get("content"))) for m in history if m.get("role") in ("user", "assistant")]
    pairs, i = [], 0
    while i < len(out) - 1:
        if out[i].role == "user" and out[i + 1].role == "assistant":
            pairs += [out[i], out[i + 1]]
            i += 2
        else:  # an unanswered message (a stopped turn): not part of the history the model sees
            i += 1
    return pairs


def page_options(defaults: GenerationOptions, max_new_tokens: float, temperature: float,
                 top_p: float) -> GenerationOptions:
    sample = float(temperature) > 0
    return replace(defaults, max_new_tokens=int(max_new_tokens), do_sample=sample,
                   temperature=float(temperature) if sample else defaults.temperature, top_p=float(top_p), num_beams=1)


def build_ui(engine: Engine, defaults: Optional[GenerationOptions] = None, system: Optional[str] = None,
             history_max_tokens: int = 2048):
    import gradio as gr

    defaults = defaults or GenerationOptions()

    def respond(message: str, history: list[dict], system_prompt: str, max_new: float, temperature: float,
                top_p: float):
        message = (message or "").strip()
        if not message:
            yield "", history
            return
        options = page_options(defaults, max_new, temperature, top_p)
        session = ChatSession(engine, options, system=system_prompt.strip() or None,
                              history_max_tokens=history_max_tokens, history=history_messages(history))
        messages = session.messages(message)
        shown = list(history) + [{"role": "user", "content": message}, {"role": "assistant", "content": ""}]
        yield "", shown
        answer = ""
        cancel = threading.Event()
        try:
            for piece in engine.stream(messages, options, cancel):
                answer += piece
                shown[-1] = {"role": "assistant", "content": answer}
                yield "", shown
        finally:
            cancel.set()  # Stop, Clear or a closed tab end the generator: stop the model too

    with gr.Blocks(title="Ember chat", analytics_enabled=False) as ui:
        gr.Markdown(f"### Ember chat · `{engine.loaded.name}`")
        chatbot = gr.Chatbot(label="Conversation", elem_id="ember-chat", height=420)
        with gr.Row():
            box = gr.Textbox(placeholder="Type a message and press Enter", show_label=False, elem_id="ember-input",
                             scale=8, autofocus=True)
            send = gr.Button("Send", variant="primary", elem_id="ember-send", scale=1)
        with gr.Row():
            stop = gr.Button("Stop", elem_id="ember-stop")
            clear = gr.Button("Clear", elem_id="ember-clear")
        with gr.Accordion("System prompt and generation settings", open=False):
            system_box = gr.Textbox(label="System prompt", value=system or engine.default_system or "", lines=2,
                                    elem_id="ember-system")  # the training run's data.system, shown and editable
            max_new = gr.Slider(1, 4096, value=defaults.max_new_tokens, step=1, label="Max new tokens")
            temperature = gr.Slider(0, 2, value=defaults.temperature if defaults.do_sample else 0, step=0.05,
                                    label="Temperature (0 = greedy)")
            top_p = gr.Slider(0.05, 1, value=defaults.top_p, step=0.05, label="Top-p")

        inputs = [box, chatbot, system_box, max_new, temperature, top_p]
        submitted = box.submit(respond, inputs, [box, chatbot])
        clicked = send.click(respond, inputs, [box, chatbot])
        stop.click(None, None, None, cancels=[submitted, clicked])
        clear.click(lambda: ([], ""), None, [chatbot, box], cancels=[submitted, clicked])
    return ui
