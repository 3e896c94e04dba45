"""One request's LM call options (temperature, max_tokens, top_p) and the LM usage it caused.

OpenAI clients set ``temperature`` or ``max_tokens`` per request, but a site program takes its LM from
the runtime (shared by every request) and calls it through its own ``dspy.Predict`` members. DSPy
hands every LM call of a predictor the keyword arguments its *adapter* passes, and the adapter comes
from the DSPy settings of the calling context. So :func:`lm_call_scope` sets, for one request's
context only (``dspy.context``: a context variable, copied into the request's worker thread), an
adapter that adds the request's options to each LM call, and a usage tracker that collects the token
counts the LM reports. Nothing global changes; other requests' calls are untouched.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import dspy
from dspy.utils.usage_tracker import UsageTracker


class ChatAdapter(dspy.ChatAdapter):
    """DSPy's ChatAdapter that adds fixed LM options (e.g. ``temperature``) to every LM call it makes.

    It keeps the name ``ChatAdapter`` on purpose: DSPy's ``StreamListener`` recognises the adapter in
    use by its class name, and token streaming must keep working with options set.
    """

    def __init__(self, options: dict[str, Any]) -> None:
        super().__init__()
        self.options = dict(options)

    def __call__(
        self,
        lm: Any,
        lm_kwargs: dict[str, Any],
        signature: Any,
        demos: list[dict[str, Any]],
        inputs: dict[str, Any],
    ) -> list[dict[str, Any]]:
        return super().__call__(lm, {**lm_kwargs, **self.options}, signature, demos, inputs)

    async def acall(
        self,
        lm: Any,
        lm_kwargs: dict[str, Any],
        signature: Any,
        demos: list[dict[str, Any]],
        inputs: dict[str, Any],
    ) -> list[dict[str, Any]]:
        return await super().acall(lm, {**lm_kwargs, **self.options}, signature, demos, inputs)


@contextlib.contextmanager
def lm_call_scope(options: dict[str, Any]) -> Iterator[tuple[UsageTracker, bool]]:
    """DSPy settings for this context: ``options`` on every LM call, usage recorded.

    Yields ``(tracker, applied)``; ``applied`` is False when options were given but another adapter is
    configured process-wide (then the options are not applied, and the caller says so).
    """
    tracker = UsageTracker()
    overrides: dict[str, Any] = {"usage_tracker": tracker}
    applied = True
    if options:
        if dspy.settings.adapter is None:
            overrides["adapter"] = ChatAdapter(options)
        else:
            applied = False
    with dspy.context(**overrides):
        yield tracker, applied


def usage_totals(tracker: UsageTracker) -> dict[str, int] | None:
    """``{"prompt_tokens", "completion_tokens", "total_tokens"}`` over every LM call, or None when no
    call reported usage (no LM, an LM cache hit, or a provider that reports none)."""
    totals = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
    seen = False
    for usage in tracker.get_total_tokens().values():
        for key in totals:
            value = usage.get(key)
            if isinstance(value, int) and not isinstance(value, bool):
                totals[key] += value
                seen = True
    if not seen:
        return None
    if not totals["total_tokens"]:
        totals["total_tokens"] = totals["prompt_tokens"] + totals["completion_tokens"]
    return totals
