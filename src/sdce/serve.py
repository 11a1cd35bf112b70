"""Talking to trained students: `sdce chat` in the terminal, `sdce serve` as a web page.

Every reply is one call of `sdce.generation.generate` (the sampler of the model's kind, causal
or masked diffusion) on the conversation so far, written as one prompt:

* a tokenizer with a `chat_template` formats it with `apply_chat_template` (generation prompt on);
* a tokenizer with LLaDA's chat markers (`sdce.data.chat`, a model fine-tuned on a
  prompt/response corpus) gets the format that training saw, turn after turn;
* any other tokenizer (the students are pre-trained language models without a chat format)
  gets plain speaker lines, and the reply is the model's text up to its own next `User:` line:

      User: {message}
      Model: {reply}
      User: {message}
      Model:

The prompt and the reply share the model's positions (`max_position_embeddings`): the prompt
keeps the most recent turns that fit beside `max_new_tokens` (the caller is told how many
messages were left out), and a message that does not fit on its own is a one-line error.
A reply depends only on the conversation, the model and the sampling settings: the same seed
gives the same reply in the terminal, on the page and from `sdce generate` on that prompt."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from pathlib import Path

from sdce import config as cfg
from sdce.data import chat as llada

USER, MODEL = "User", "Model"  # the speaker names of the plain format
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json")
NO_GRADIO = "sdce serve needs gradio: pip install 'sdce[chat]'"


def format_conversation(tokenizer, messages: list[dict]) -> str:
    """The prompt for the next reply to `messages` ({"role": "user"|"assistant", "content"})."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    if set(llada.MARKERS) <= set(tokenizer.get_vocab()):
        turns = (f"{llada.START}{m['role']}{llada.END}\n{m['content']}{llada.EOT}" for m in messages)
        return "".join(turns) + f"{llada.START}assistant{llada.END}\n"
    lines = (f"{USER if m['role'] == 'user' else MODEL}: {m['content']}\n" for m in messages)
    return "".join(lines) + f"{MODEL}:"


def reply_text(completion: str) -> str:
    """The reply in a completion: up to the model's own next user turn (plain format), stripped."""
    return completion.split(f"\n{USER}:")[0].strip()


def answer_length(model, spec: dict) -> int:
    """Positions the answer takes: max_new_tokens, for masked diffusion rounded up to whole
    blocks as LLaDA's sampler fills them (`sdce.generation`)."""
    from sdce.model import kind_of

    n = spec["max_new_tokens"]
    if kind_of(model) == "bidirectional":
        block = min(spec["diffusion"]["block_length"], n)
        n = -(-n // block) * block
    return n


def fit_prompt(model, tokenizer, messages: list[dict], spec: dict) -> tuple[str, int]:
    """The prompt of the most recent turns that fit beside the answer, and how many earlier
    messages it leaves out; a ValueError when the last message does not fit on its own."""
    positions = model.config.max_position_embeddings
    answer = answer_length(model, spec)
    room = positions - answer
    if room <= 0:
        raise ValueError(
            f"max_new_tokens {spec['max_new_tokens']} leaves no room for a prompt in the model's "
            f"{positions} positions"
        )
    starts = [i for i, m in enumerate(messages) if m["role"] == "user"] or [0]
    for start in starts:  # oldest first: keep as much of the conversation as fits
        prompt = format_conversation(tokenizer, messages[start:])
        n = len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
        if n <= room:
            return prompt, start
    raise ValueError(
        f"the message is {n} tokens as a prompt, more than the {room} of the model's {positions} "
        f"positions left beside the reply's {answer}: shorten it or lower max_new_tokens"
    )


def reply(model, tokenizer, messages: list[dict], spec: dict) -> tuple[str, int]:
    """(the model's reply to the conversation `messages`, the number of messages left out)."""
    from sdce.generation import generate

    prompt, left_out = fit_prompt(model, tokenizer, messages, spec)
    (record,) = generate(model, tokenizer, [prompt], spec)
    return reply_text(record["completion"]), left_out


def left_out_note(n: int, model) -> str:
    return (
        f"({n} earlier messages left out to fit the model's {model.config.max_position_embeddings} positions)"
    )


def chat_loop(model, tokenizer, spec: dict, lines: Iterable[str], say: Callable[[str], None],
              note: Callable[[str], None]) -> list[dict]:  # fmt: skip
    """A conversation: each line a user message, each reply passed to `say`; notes and
    errors (a message too long for the model) to `note`, after which the conversation goes
    on. Stops at the end of `lines` or at `/quit`; returns the conversation."""
    history: list[dict] = []
    for line in lines:
        message = line.rstrip("\r\n")
        if message.strip() == "/quit":
            break
        if not message.strip():
            continue
        messages = [*history, {"role": "user", "content": message}]
        try:
            text, left_out = reply(model, tokenizer, messages, spec)
        except ValueError as e:
            note(f"sdce chat: error: {e}")
            continue
        if left_out:
            note(left_out_note(left_out, model))
        history = [*messages, {"role": "assistant", "content": text}]
        say(text)
    return history


# ------------------------------------------------------------------------------ models


def is_model_dir(path: Path) -> bool:
    """A saved model: its config and its tokenizer files side by side (save_pretrained)."""
    return (path / "config.json").is_file() and any((path / f).is_file() for f in TOKENIZER_FILES)


def find_models(path: str | Path) -> dict[str, Path]:
    """The trained models of a study's results folder, by label `<run>/<fold>/seed<N>`: each
    run's final `runs/<run>/<fold>/seed<N>/model` (the train rule's output); or the one model
    when `path` is a model folder."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"not a results folder or a model folder: {path}")
    if is_model_dir(path):
        return {path.resolve().name: path}
    runs = path / "runs"
    found = sorted(m for m in runs.glob("*/*/seed*/model") if is_model_dir(m))
    if not found:
        raise FileNotFoundError(
            f"no trained models under {path}: expected runs/<run>/<fold>/seed<N>/model folders "
            "(config.json and tokenizer files), or a model folder"
        )
    return {m.parent.relative_to(runs).as_posix(): m for m in found}


class ModelCache:
    """Models loaded on first use and kept: a page's picker may list many, a user talks to few."""

    def __init__(self, models: dict[str, Path]):
        self.models = models
        self._loaded: dict[str, tuple] = {}
        self._lock = threading.Lock()

    def get(self, label: str) -> tuple:
        """(model, tokenizer) of `label`."""
        from transformers import AutoTokenizer

        from sdce.model import load_model

        if label not in self.models:
            raise ValueError(f"unknown model {label!r}; known: {', '.join(self.models)}")
        with self._lock:  # two first requests for one model load it once
            if label not in self._loaded:
                path = self.models[label]
                self._loaded[label] = (load_model(path).eval(), AutoTokenizer.from_pretrained(str(path)))
        return self._loaded[label]


# -------------------------------------------------------------------------------- page


def messages_of(history: list) -> list[dict]:
    """Gradio's chat history as {"role", "content"} text messages (openai-style messages, or
    the [user, bot] pairs of older Gradio)."""
    out = []
    for item in history:
        if isinstance(item, dict):
            content = item.get("content")
            if isinstance(content, list):  # Gradio 6 keeps a message as a list of parts
                content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
            out.append({"role": item["role"], "content": str(content or "")})
        else:
            user, bot = item
            out += [{"role": "user", "content": str(user)}, {"role": "assistant", "content": str(bot or "")}]
    return out


def _sampling_controls(gr, spec: dict) -> list:
    """The page's sampling settings, starting at `spec` (the validated generation section)."""
    d = spec["diffusion"]
    return [
        gr.Slider(0.0, 2.0, value=spec["temperature"], step=0.05, label="temperature (0 = greedy)"),
        gr.Slider(0, 200, value=spec["top_k"], step=1, label="top-k (0 = all; causal)"),
        gr.Slider(0.05, 1.0, value=spec["top_p"], step=0.05, label="top-p (causal)"),
        gr.Slider(1, 256, value=spec["max_new_tokens"], step=1, label="max new tokens"),
        gr.Number(value=spec["seed"], precision=0, minimum=0, label="seed"),
        gr.Slider(1, 256, value=d["steps"], step=1, label="denoising steps (masked diffusion)"),
        gr.Slider(1, 256, value=d["block_length"], step=1, label="block length (masked diffusion)"),
    ]


def build_app(models: dict[str, Path], defaults: dict | None = None):
    """The chat page (a `gr.Blocks`): a model picker over `models` (label -> model folder,
    loaded on first use), Gradio's ChatInterface, and the sampling controls, starting at
    `defaults` (a validated generation section; the schema's defaults when None)."""
    try:
        import gradio as gr
    except ImportError:
        raise ImportError(NO_GRADIO) from None
    if not models:
        raise ValueError("build_app needs at least one model")
    base = defaults or cfg.validate({}, "properties/generation", where="generation")
    cache = ModelCache(models)

    def respond(message, history, label, temperature, top_k, top_p, max_new_tokens, seed, steps, block):
        try:
            diffusion = {**base["diffusion"], "steps": int(steps), "block_length": int(block)}
            sampling = {"temperature": temperature, "top_k": int(top_k), "top_p": top_p,
                        "max_new_tokens": int(max_new_tokens), "seed": int(seed or 0)}  # fmt: skip
            spec = {**base, **sampling, "diffusion": diffusion}
            spec = cfg.validate(spec, "properties/generation", where="generation")
            model, tokenizer = cache.get(label)
            messages = [*messages_of(history), {"role": "user", "content": message}]
            text, left_out = reply(model, tokenizer, messages, spec)
        except ValueError as e:  # a setting out of range, a message too long: a message on the page
            raise gr.Error(str(e)) from None
        if left_out:
            gr.Warning(left_out_note(left_out, model))
        return text

    with gr.Blocks(title="sdce chat", analytics_enabled=False) as app:
        gr.Markdown(
            f"## sdce chat\n{len(models)} trained model(s); each reply is `sdce generate` on the chat."
        )
        picker = gr.Dropdown(choices=list(models), value=next(iter(models)), label="model")
        gr.ChatInterface(
            respond,
            # plain text: a reply is shown as the model wrote it, not as Markdown
            chatbot=gr.Chatbot(render_markdown=False, label="chat"),
            additional_inputs=[picker, *_sampling_controls(gr, base)],
            additional_inputs_accordion=gr.Accordion("sampling", open=False),
            analytics_enabled=False,
        )
    return app
