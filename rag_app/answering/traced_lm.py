"""The LM as programs see it: every call one ``lm`` span of the traced work it belongs to.

Programs call the LM from several places (the answer, a follow-up's condensed question, per-item
reasons, query rewrites), so the span wraps the LM itself rather than each call site. Like the server's
``GatedLM``, it implements DSPy's LM entry points by delegating the whole call, so the wrapped LM keeps
its own cache, retries, history and streaming; outside traced work a call costs one context-variable
read more.
"""

from __future__ import annotations

from typing import Any

import dspy

from rag_app.core.tracing import stage_span


class TracedLM(dspy.BaseLM):
    """A DSPy LM whose calls each open an ``lm`` span (``gen_ai.request.model``); else the wrapped LM."""

    def __init__(self, inner: Any) -> None:
        super().__init__(
            model=inner.model,
            model_type=getattr(inner, "model_type", "chat"),
            cache=getattr(inner, "cache", True),
            num_retries=getattr(inner, "num_retries", 0),
        )
        self.kwargs = inner.kwargs
        self.inner = inner
        self._attributes = {"gen_ai.request.model": str(inner.model), "gen_ai.operation.name": "chat"}

    def __call__(self, prompt: Any = None, messages: Any = None, **kwargs: Any) -> Any:
        with stage_span("lm", self._attributes):
            return self.inner(prompt, messages=messages, **kwargs)

    async def acall(self, prompt: Any = None, messages: Any = None, **kwargs: Any) -> Any:
        with stage_span("lm", self._attributes):
            return await self.inner.acall(prompt, messages=messages, **kwargs)

    def forward(self, prompt: Any = None, messages: Any = None, **kwargs: Any) -> Any:
        with stage_span("lm", self._attributes):
            return self.inner.forward(prompt=prompt, messages=messages, **kwargs)

    async def aforward(self, prompt: Any = None, messages: Any = None, **kwargs: Any) -> Any:
        with stage_span("lm", self._attributes):
            return await self.inner.aforward(prompt=prompt, messages=messages, **kwargs)


__all__ = ["TracedLM"]
