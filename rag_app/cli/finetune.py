"""``rag-app optimize --reranker/--embedder``: the fine-tune run behind the ``optimize`` command.

Kept apart from :mod:`rag_app.cli.quality` (which parses the options) because the training flow has
its own progress display and report; the work itself is :func:`rag_app.optimize.training.finetune.finetune`.
"""

from __future__ import annotations

from rag_app.cli.common import console, err_console, note, print_json
from rag_app.core.settings import Settings
from rag_app.optimize.training.finetune import FinetuneRequest, finetune

__all__ = ["run_finetune"]


def run_finetune(settings: Settings, request: FinetuneRequest, progress: bool, as_json: bool) -> None:
    """Run one fine-tune (mining, training, dev check, activation) with a progress bar, then report it."""
    from rich.progress import Progress

    from rag_app.runtime import Runtime

    def say(message: str) -> None:
        if not as_json:
            err_console.print(message, highlight=False, markup=False)

    with Progress(console=err_console, disable=not progress, transient=True) as bar:
        task = bar.add_task("training", total=None)
        result = finetune(
            Runtime(settings),
            request,
            on_step=lambda step, total, loss: bar.update(
                task, completed=step, total=total, description=f"training (loss {loss:.3f})"
            ),
            on_message=say,
        )
    if as_json:
        print_json(result.json_payload())
        return
    console.print(result.summary(), highlight=False, markup=False, soft_wrap=True)
    for text in result.notes:
        note(text)
