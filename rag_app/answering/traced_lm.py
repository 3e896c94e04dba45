"""The LM as programs see it: every call one ``lm`` span of the traced work it belongs to.

Programs call the LM from several places (the answer, a follow-up's condensed question, per-item
reasons, query rewrites), so the span wraps the LM itself rather than each call site. The wrapping is
:class:`DelegatingLM`: DSPy's four LM entry points delegated whole to the wrapped LM inside a context,
so it keeps its own cache, retries, history and streaming. The server's ``GatedLM`` (the ``lm``
concurrency gate) is the same wrapper with another context, hence the base class here, in the lower
layer both import. Outside traced work a call costs one context-variable read more.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Any

import dspy

from rag_app.core.tracing import stage_span


class DelegatingLM(dspy.BaseLM):
    """A DSPy LM that runs each whole call of the wrapped LM inside :meth:`around`.

    Delegates ``__call__``/``acall``/``forward``/``aforward`` so the wrapped LM keeps its own cache,
    retries, history and streaming; DSPy reads ``model`` and ``kwargs`` from this object, which mirrors
    them. A subclass says only what a call runs inside (a span, a gate): an explicit wrapper, nothing
    patched.
    """

    def __init__(self, inner: Any) -> None:
        super().__init__(
            model=inner.model,
            model_type=getattr(inner, "model_type", "chat"),
            cache=getattr(inner, "cache", True),
            num_retries=getattr(inner, "num_retries", 0),
        )
        self.kwargs = inner.kwargs
        self.inner = inner

    def around(self) -> AbstractContextManager[Any]:
        """The context one call of the wrapped LM runs in."""
        raise NotImplementedError

    def __call__(self, prompt: Any = None, messages: Any = None, **kwargs: Any) -> Any:
        with self.around():
            return self.inner(prompt, messages=messages, **kwargs)

    async def acall(self, prompt: Any = None, messages: Any = None, **kwargs: Any) -> Any:
        with self.around():
            return await self.inner.acall(prompt, messages=messages, **kwargs)

    def forward(self, prompt: Any = None, messages: Any = None, **kwargs: Any) -> Any:
        with self.around():
            return self.inner.forward(prompt=prompt, messages=messages, **kwargs)

    async def aforward(self, prompt: Any = None, messages: Any = None, **kwargs: Any) -> Any:
        with self.around():
            return await self.inner.aforward(prompt=prompt, messages=messages, **kwargs)


class TracedLM(DelegatingLM):
    """A DSPy LM whose calls each open an ``lm`` span (``gen_ai.request.model``); else the wrapped LM."""

    def __init__(self, inner: Any) -> None:
        super().__init__(inner)
        self._attributes = {"gen_ai.request.model": str(inner.model), "gen_ai.operation.name": "chat"}

    def around(self) -> AbstractContextManager[Any]:
        return stage_span("lm", self._attributes)


__all__ = ["DelegatingLM", "TracedLM"]
