"""Issue #10: Schemathesis against the server's own OpenAPI document, on a real uvicorn server.

Every operation gets schema-generated requests (valid ones and deliberately invalid ones, a bounded,
deterministic number), and every response is checked: no 5xx, status codes and content types the
document lists, bodies that match the documented response schemas, valid data accepted (2xx/404),
invalid data rejected (4xx). The server runs over the session's sample index (all sites, no LM).

Three documented cross-field rules cannot be written in JSON Schema (the last chat message is the
user's; ``date_from`` not after ``date_to``; at most 10 cards and transits together): generated
requests that break them are filtered out with ``hypothesis.assume``, as the schema's descriptions
announce a 422 for them.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import hypothesis
import pytest
import schemathesis
from hypothesis import HealthCheck, assume
from schemathesis import GenerationMode

from rag_app.server.app import create_app
from tests.conftest import make_test_settings
from tests.live_server import LiveServer

pytestmark = pytest.mark.timeout(600)

MAX_EXAMPLES = 25


@pytest.fixture(scope="module")
def live(
    sample_index_dir: Path, tiny_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveServer]:
    # the document routes write (POST, DELETE): fuzz a copy, never the session's shared sample index
    data_dir = tmp_path_factory.mktemp("fuzz") / "index"
    shutil.copytree(sample_index_dir, data_dir)
    # a real (tiny) cross-encoder: /v1/rerank answers 503 without weights, which the no-5xx check forbids
    settings = make_test_settings(
        data_dir,
        max_history_turns=5,
        max_message_chars=400,
        reranker_model=str(tiny_path),
        reranker_revision=None,
    )
    with LiveServer(create_app(settings)) as server:
        yield server


def load_schema(live: LiveServer) -> Any:
    config = schemathesis.config.SchemathesisConfig()
    config.projects.default.update(base_url=live.url)
    return schemathesis.openapi.from_url(f"{live.url}/openapi.json", config=config)


def breaks_cross_field_rules(body: Any) -> bool:
    """The documented model rules JSON Schema cannot state (the server answers 422 to these)."""
    if not isinstance(body, dict):
        return False
    messages = body.get("messages")
    last = messages[-1] if isinstance(messages, list) and messages else None
    if isinstance(last, dict) and last.get("role") != "user":
        return True
    date_from, date_to = body.get("date_from"), body.get("date_to")
    if isinstance(date_from, str) and isinstance(date_to, str) and date_from > date_to:
        return True
    items = [v for key in ("cards", "transits") if isinstance(body.get(key), list) for v in body[key]]
    return len([v for v in items if isinstance(v, str) and v.strip()]) > 10


def operations(live: LiveServer) -> list[Any]:
    return [result.ok() for result in load_schema(live).get_all_operations()]


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=["valid", "invalid"])
def test_api_conforms_to_its_openapi(live: LiveServer, mode: GenerationMode) -> None:
    """Each operation, ``MAX_EXAMPLES`` generated requests (derandomized: the same ones every run)."""
    failures: list[str] = []
    for operation in operations(live):
        if mode is GenerationMode.NEGATIVE and not len(operation.body):
            continue  # nothing a client sends there can be invalid (path segments are free text)

        @hypothesis.given(case=operation.as_strategy(generation_mode=mode))
        @hypothesis.settings(
            max_examples=MAX_EXAMPLES,
            derandomize=True,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            database=None,
            phases=[hypothesis.Phase.explicit, hypothesis.Phase.generate],
        )
        def check(case: Any) -> None:
            assume(not breaks_cross_field_rules(case.body))
            case.call_and_validate(base_url=live.url)

        try:
            check()
        except Exception as exc:  # collect every operation's failure, then report them all
            failures.append(f"{operation.label}: {type(exc).__name__}: {str(exc)[:3000]}")
    assert not failures, "\n\n".join(failures)
