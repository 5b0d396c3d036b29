"""Which Triton models the front end serves, and each one's tokenizer and chat template.

A served model speaks the `llm` (vLLM backend) contract: inputs ``text_input`` and
``sampling_parameters``. Its tokenizer is found through the model's config parameters
(``tokenizer_dir``, else ``model_path``) unless ``--tokenizer`` overrides it. The index is
re-read on ``/v1/models`` and, at most once a second, when a request names an unknown model
(models may be loaded and unloaded while the front end runs).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from dataclasses import dataclass
from typing import Any

from inflight.frontends.openai.chat_template import ChatTemplate
from inflight.frontends.openai.config import OpenAIConfig
from inflight.frontends.openai.errors import model_not_found
from inflight.frontends.openai.logprobs import TokenTexts
from inflight.frontends.openai.tool_parsers import ToolParser, make_parser
from inflight.frontends.openai.triton_client import TritonBridge

log = logging.getLogger(__name__)
REFRESH_MIN_S = 1.0


@dataclass
class ServedModel:
    name: str  # what clients put in "model"
    triton_name: str
    tokenizer: Any  # None when it cannot be loaded here (chat refused, logprobs by id)
    template: ChatTemplate
    tokens: TokenTexts
    tool_parser: type[ToolParser] | None
    created: int


def speaks_llm_contract(config: dict[str, Any]) -> bool:
    names = {i.get("name") for i in config.get("input", [])}
    return {"text_input", "sampling_parameters"} <= names


def tokenizer_dir(config: dict[str, Any]) -> str | None:
    params = config.get("parameters", {})
    for key in ("tokenizer_dir", "model_path"):
        v = params.get(key, {}).get("string_value", "")
        if v and not v.startswith("${"):
            return str(v)
    return None


class ModelRegistry:
    def __init__(self, config: OpenAIConfig, bridge: TritonBridge) -> None:
        self.config = config
        self.bridge = bridge
        self.models: dict[str, ServedModel] = {}
        self._last_refresh = 0.0
        self._lock = asyncio.Lock()

    async def refresh(self) -> None:
        async with self._lock:
            self._last_refresh = time.monotonic()
            ready = await self.bridge.ready_models()
            wanted = self.config.models or {m: m for m in ready}
            served: dict[str, ServedModel] = {}
            for triton_name, name in wanted.items():
                if triton_name not in ready:
                    continue
                known = self.models.get(name)
                if known is not None and known.triton_name == triton_name:
                    served[name] = known
                    continue
                model = await self._load(triton_name, name)
                if model is not None:
                    served[name] = model
            self.models = served

    async def _load(self, triton_name: str, name: str) -> ServedModel | None:
        cfg = await self.bridge.model_config(triton_name)
        if not speaks_llm_contract(cfg):
            if self.config.models:
                log.warning("model %s does not take text_input + sampling_parameters "
                            "(the `llm` contract); not served", triton_name)
            return None
        path = self.config.tokenizer or tokenizer_dir(cfg)
        tokenizer = await asyncio.to_thread(_load_tokenizer, path, triton_name)
        template = ChatTemplate(tokenizer, name, self.config.chat_template_text())
        parser = make_parser(self.config.tool_call_parser)
        return ServedModel(name, triton_name, tokenizer, template, TokenTexts(tokenizer),
                           parser, int(time.time()))

    async def get(self, name: str) -> ServedModel:
        model = self.models.get(name)
        if model is None and time.monotonic() - self._last_refresh >= REFRESH_MIN_S:
            try:
                await self.refresh()
            except Exception:  # noqa: BLE001 - Triton away: the 404 below still holds
                log.debug("model refresh failed", exc_info=True)
            model = self.models.get(name)
        if model is None:
            raise model_not_found(name, sorted(self.models))
        return model


def _load_tokenizer(path: str | None, model: str) -> Any:
    from transformers import AutoTokenizer  # not the engine's loader: no torch engine here

    if not path or not os.path.isdir(path):
        log.warning("model %s: tokenizer directory %r is not on this machine; chat completions "
                    "need --tokenizer DIR", model, path)
        return None
    try:
        return AutoTokenizer.from_pretrained(path)
    except Exception as e:  # noqa: BLE001 - serve completions anyway
        log.warning("model %s: cannot load the tokenizer from %s: %s", model, path, e)
        return None
