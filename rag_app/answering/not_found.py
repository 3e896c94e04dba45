"""The one phrase every program answers with when its passages do not hold the answer.

Programs, grounding and evaluation all compare against it, so it lives in the answering layer (the
runtime never imports evaluation).
"""

from __future__ import annotations

from rag_app.core.text import normalize_answer

NOT_FOUND_ANSWER = "Not found in the sources."


def is_not_found(answer_text: str) -> bool:
    """True when the answer is the programs' not-found phrase (compared after SQuAD normalisation).

    Normalising tolerates an LM's changes of case, punctuation or spacing around the fixed phrase.
    """
    return normalize_answer(answer_text) == normalize_answer(NOT_FOUND_ANSWER)
