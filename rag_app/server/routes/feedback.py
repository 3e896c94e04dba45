"""``POST /v1/feedback``: rate an answer by its request id; and :func:`record_answer`, which the answer
routes call so every answer can be rated (the log is :mod:`rag_app.server.feedback_store`).

Feedback is idempotent per request id: a second post replaces the first and gets the same reply. An
unknown id is a 404, an answer past ``feedback_ttl_days`` a 410, and a key may rate only answers of
sites it may use (403), with the usual error body, body limit, deadline and access log.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field, field_validator

from rag_app.server.errors import ApiError
from rag_app.server.feedback_records import FeedbackRecord, LoggedAnswer, is_gold
from rag_app.server.routes.shared import State, authorize, read_body
from rag_app.server.schemas import ERROR_RESPONSES, NOT_BLANK, is_blank
from rag_app.server.state import ServerState

log = logging.getLogger("rag_app.server")

#: Most passage ids one feedback may name, and the longest id.
MAX_PASSAGE_IDS = 50
MAX_PASSAGE_ID_CHARS = 256


class FeedbackRequest(BaseModel):
    """A rating of one answer (the `request_id` of its response), optionally with corrections.

    `comment` and `corrected_answer` are at most `max_message_chars` characters (maxLength); every id
    in `correct_passage_ids` must be a passage of the answer or of its site's index (422 naming it).
    """

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"request_id": "3f2a9c0d5e6b4a7f8e9d0c1b2a3f4e5d", "rating": -1, "comment": "wrong plan"}
            ]
        },
    )

    request_id: str = Field(min_length=1, max_length=128, description="The rated answer's request_id.")
    rating: int = Field(description="1 (thumbs-up) or -1 (thumbs-down).", json_schema_extra={"enum": [1, -1]})
    comment: str | None = Field(None, description="Free text for the site team.")
    correct_passage_ids: list[str] | None = Field(
        None,
        max_length=MAX_PASSAGE_IDS,
        description="Ids of the passages that answer the question (shown ones or any of the site's).",
    )
    corrected_answer: str | None = Field(
        None,
        min_length=1,
        description="What the answer should have been.",
        json_schema_extra={"pattern": NOT_BLANK},
    )

    @field_validator("rating")
    @classmethod
    def _plus_or_minus_one(cls, value: int) -> int:
        if value not in (1, -1):
            raise ValueError("must be 1 or -1")
        return value

    @field_validator("correct_passage_ids")
    @classmethod
    def _ids(cls, value: list[str] | None) -> list[str] | None:
        for i, item in enumerate(value or []):
            if not item.strip() or len(item) > MAX_PASSAGE_ID_CHARS:
                raise ValueError(f"item {i} must be a passage id of 1 to {MAX_PASSAGE_ID_CHARS} characters")
        return value

    @field_validator("corrected_answer")
    @classmethod
    def _not_blank(cls, value: str | None) -> str | None:
        if value is not None and is_blank(value):
            raise ValueError("is blank")
        return value


class FeedbackResponse(BaseModel):
    """The stored feedback; the same for every post of the same body (posts replace each other)."""

    request_id: str
    site: str
    program: str
    rating: int
    relevant_ids: list[str] = Field(description="Document ids this feedback judges relevant.")
    gold: bool = Field(description="Exported as an eval row by `rag-app feedback export` (not a bare -1).")


def feedback_schema(state: ServerState) -> dict[str, Any]:
    """The request body's JSON Schema, with this server's text limits (inline: no $defs)."""
    schema = FeedbackRequest.model_json_schema()
    props = schema["properties"]
    for name in ("comment", "corrected_answer"):
        for branch in props[name]["anyOf"]:
            if branch.get("type") == "string":
                branch["maxLength"] = state.settings.max_message_chars
    for branch in props["correct_passage_ids"]["anyOf"]:
        if branch.get("type") == "array":
            branch["items"] = {
                "type": "string",
                "minLength": 1,
                "maxLength": MAX_PASSAGE_ID_CHARS,
                "pattern": NOT_BLANK,
            }
    return schema


# ------------------------------------------------------------------------------------ recording


def question_of(cls: Any, inputs: BaseModel) -> tuple[str | None, str]:
    """``(field, text)``: the input field holding the free-text question and its text. Without a
    question (e.g. a reading from cards only), the text joins the input's words, for display and search."""
    fields = type(inputs).model_fields
    for name in (getattr(cls, "question_field", None), "message", "query", "question"):
        if name and name in fields and isinstance(getattr(inputs, name), str):
            text = getattr(inputs, name)
            if text.strip():
                return name, text
            break
    else:
        name = None
    words: list[str] = []
    for value in inputs.model_dump(mode="json", exclude={"history"}).values():
        values = value if isinstance(value, list) else [value]
        words.extend(v.strip() for v in values if isinstance(v, str) and v.strip())
    return name, "; ".join(words)


def logged_answer(
    cls: Any, site: str, name: str, request_id: str, inputs: BaseModel, output: Any
) -> LoggedAnswer:
    """What the answer log keeps of one answer."""
    field, question = question_of(cls, inputs)
    data = inputs.model_dump(mode="json", exclude_defaults=True)
    full = inputs.model_dump(mode="json")
    filters = {k: full[k] for k in getattr(cls, "filter_fields", ()) if full.get(k)}
    passages = [
        p.model_dump(mode="json", include={"id", "doc_id", "title", "text", "collection", "source"})
        for p in getattr(output, "passages", [])
    ]
    return LoggedAnswer(
        request_id=request_id,
        site=site,
        program=name,
        created_at=time.time(),
        question=question,
        inputs=data,
        question_field=field,
        collection=getattr(cls, "collection", None),
        filters=filters,
        passages=passages,
        answer=str(getattr(output, "answer", "")),
        citations=[c.model_dump(mode="json") for c in getattr(output, "citations", [])],
        mode=str(getattr(output, "mode", "")),
    )


async def record_answer(request: Request, site: str, program: str, inputs: BaseModel, output: Any) -> None:
    """Log an answer under the request's id, so it can be rated. Never fails the answer: a log that
    cannot be written (disk full, read-only data dir) is reported in the server log and the answer
    still goes out (a later rating of it gets 404)."""
    state: ServerState = request.app.state.rag
    request_id = request.scope["state"]["request_id"]

    def write() -> None:
        cls = type(state.program(site, program))
        entry = logged_answer(cls, site, program, request_id, inputs, output)
        if not state.answer_log.record_answer(entry):
            log.warning("request id already logged for another site; this answer cannot be rated")

    try:
        await asyncio.to_thread(write)
    except Exception:
        log.exception("cannot record the answer for feedback (%s)", state.answer_log.path)


def with_request_id(payload: dict[str, Any], request: Request) -> dict[str, Any]:
    """``payload`` plus the request id (what callers send back with their feedback)."""
    return {**payload, "request_id": request.scope["state"]["request_id"]}


# ------------------------------------------------------------------------------------ the route


def _index_doc_ids(state: ServerState, site: str, ids: list[str]) -> dict[str, str]:
    """Passage id -> document id for those of ``ids`` in ``site``'s index."""
    from rag_app.store.sql import sql_list
    from rag_app.store.vector_store import VectorStore

    store = VectorStore(state.settings)
    found: dict[str, str] = {}
    for collection in state.settings.sites.get(site, []):
        table = store.open_table(site, collection)
        if table is None:
            continue
        rows = table.search().where(f"id IN ({sql_list(ids)})").select(["id", "doc_id"]).limit(len(ids) * 4)
        for row in rows.to_list():
            found.setdefault(row["id"], row["doc_id"])
    return found


def relevant_doc_ids(
    state: ServerState, answer: LoggedAnswer, rating: int, passage_ids: list[str]
) -> list[str]:
    """The document ids a feedback judges relevant: those of ``passage_ids`` (422 naming an id that is
    neither shown nor in the site's index), else the cited documents of a +1, else none."""
    if not passage_ids:
        cited = [c.get("doc_id", "") for c in answer.citations] if rating == 1 else []
        return list(dict.fromkeys(d for d in cited if d))
    shown = {p["id"]: p["doc_id"] for p in answer.passages}
    missing = [pid for pid in passage_ids if pid not in shown]
    if missing:
        shown.update(_index_doc_ids(state, answer.site, missing))
    for i, pid in enumerate(passage_ids):
        if pid not in shown:
            raise ApiError(
                422,
                "unknown_passage",
                f"correct_passage_ids[{i}]: {pid!r} is not a passage of this answer nor of site "
                f"{answer.site!r}'s index; use the `id` of a passage from the answer or from /v1/search",
                field=f"correct_passage_ids[{i}]",
            )
    return list(dict.fromkeys(shown[pid] for pid in passage_ids))


def _check_lengths(state: ServerState, body: FeedbackRequest) -> None:
    limit = state.settings.max_message_chars
    for name in ("comment", "corrected_answer"):
        value = getattr(body, name)
        if value is not None and len(value) > limit:
            raise ApiError(
                422,
                "too_long",
                f"{name}: {len(value)} characters, over the limit of {limit} (max_message_chars)",
                field=name,
            )


async def post_feedback(request: Request, state: State) -> FeedbackResponse:
    """Rate an answer by the `request_id` of its response (JSON `request_id`, SSE `done.request_id`).

    Posting again for the same id replaces the earlier feedback (one row per answer) and returns the
    same result. 404 for an id the server has not answered, 410 when the answer is older than
    `feedback_ttl_days`, 403 when the key may not use the answer's site. A thumbs-down with
    `corrected_answer` or `correct_passage_ids` becomes gold for `rag-app feedback export`; without
    them it is counted in `rag-app feedback stats` only.
    """
    body = await read_body(request, FeedbackRequest)
    _check_lengths(state, body)
    answer = await asyncio.to_thread(state.answer_log.answer, body.request_id)
    if answer is None:
        raise ApiError(
            404,
            "unknown_request_id",
            f"no answer with request id {body.request_id!r}: send the `request_id` of an answer from "
            "this server (/v1/chat-bridge, /v1/programs/...)",
            field="request_id",
        )
    authorize(request, answer.site)
    if answer.expired:
        days = state.settings.feedback_ttl_days
        raise ApiError(
            410,
            "expired",
            f"the answer {body.request_id!r} is older than {days:g} day(s) (feedback_ttl_days) and no "
            "longer takes feedback",
            field="request_id",
        )
    passage_ids = list(dict.fromkeys(body.correct_passage_ids or []))
    relevant = await asyncio.to_thread(relevant_doc_ids, state, answer, body.rating, passage_ids)
    record = FeedbackRecord(
        answer=answer,
        rating=body.rating,
        relevant_ids=relevant,
        rated_at=time.time(),
        comment=body.comment,
        correct_passage_ids=passage_ids,
        corrected_answer=body.corrected_answer,
    )
    await asyncio.to_thread(state.answer_log.put_feedback, record)
    log.info(
        "feedback recorded",
        extra={
            "rated_request_id": answer.request_id,
            "site": answer.site,
            "program": answer.program,
            "rating": body.rating,
            "gold": record.gold,
        },
    )
    return FeedbackResponse(
        request_id=answer.request_id,
        site=answer.site,
        program=answer.program,
        rating=body.rating,
        relevant_ids=relevant,
        gold=is_gold(body.rating, passage_ids, body.corrected_answer),
    )


def feedback_router(state: ServerState) -> APIRouter:
    """The ``/v1/feedback`` route, its body documented with this server's limits."""
    router = APIRouter(tags=["feedback"])
    router.add_api_route(
        "/v1/feedback",
        post_feedback,
        methods=["POST"],
        response_model=FeedbackResponse,
        responses={
            **ERROR_RESPONSES,
            404: ERROR_RESPONSES[404] | {"description": "No answer with this request id"},
            410: ERROR_RESPONSES[404] | {"description": "The answer is past feedback_ttl_days"},
        },
        summary="Rate an answer (thumbs up/down, optional corrections) by its request id",
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": feedback_schema(state)}},
            }
        },
    )
    return router
