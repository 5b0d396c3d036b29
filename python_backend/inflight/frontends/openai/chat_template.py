"""Chat messages -> prompt text with the checkpoint's own chat template.

The template comes from the tokenizer (``chat_template`` in ``tokenizer_config.json`` or a
``chat_template.jinja`` file, both read by transformers) unless ``--chat-template FILE``
overrides it; rendering is transformers' ``apply_chat_template`` (its sandboxed Jinja
environment, ``tools`` passed through). The rendered text carries the template's BOS token,
so the request asks the `llm` model not to add special tokens again.
"""

from __future__ import annotations

from typing import Any

from inflight.frontends.openai.errors import bad_request


class ChatTemplate:
    """One model's template; ``render`` raises OpenAIError(400) naming what went wrong."""

    def __init__(self, tokenizer: Any, model: str, override: str | None = None) -> None:
        self.tokenizer = tokenizer
        self.model = model
        self.template: str | None = override or getattr(tokenizer, "chat_template", None)

    @property
    def available(self) -> bool:
        return bool(self.template)

    def render(self, messages: list[dict[str, Any]], *, tools: list[dict[str, Any]] | None,
               add_generation_prompt: bool = True, continue_final_message: bool = False,
               extra: dict[str, Any] | None = None) -> str:
        if self.tokenizer is None:
            raise bad_request(f"model '{self.model}' has no tokenizer the front end can load; "
                              "start it with --tokenizer DIR to use chat completions",
                              param="messages")
        if not self.template:
            raise bad_request(f"model '{self.model}' has no chat template (none in its "
                              "tokenizer_config.json or chat_template.jinja); start the server "
                              "with --chat-template FILE, or use /v1/completions",
                              param="messages")
        if continue_final_message and add_generation_prompt:
            raise bad_request("continue_final_message and add_generation_prompt cannot both "
                              "be true", param="continue_final_message")
        kwargs = dict(extra or {})
        for reserved in ("conversation", "tools", "chat_template", "tokenize"):
            if reserved in kwargs:
                raise bad_request(f"chat_template_kwargs may not set {reserved!r}",
                                  param="chat_template_kwargs")
        try:
            text = self.tokenizer.apply_chat_template(
                messages, tools=tools, chat_template=self.template, tokenize=False,
                add_generation_prompt=add_generation_prompt,
                continue_final_message=continue_final_message, **kwargs)
        except Exception as e:  # noqa: BLE001 - jinja errors, raise_exception() in templates
            raise bad_request(f"the chat template of '{self.model}' failed on these messages: "
                              f"{type(e).__name__}: {e}", param="messages") from None
        if not isinstance(text, str) or not text:
            raise bad_request("the chat template rendered an empty prompt", param="messages")
        return text
