"""What the server adds to the site programs' ``Input`` schemas: enums, ``anyOf`` and documented rules.

A program's ``Input`` model (in ``programs/``) is the program's own contract; the HTTP API publishes and
enforces a little more for some programs: a string field restricted to listed values (checked before
the program runs), and cross-field rules stated in the schema (``anyOf``) or its description, so a
client (and the schema fuzz test) sees what the program's model validators will refuse.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

from rag_app.server.schemas import NOT_BLANK

#: GICS sectors of the PaidDaily sample ticker pages (``data/paiddaily/tickers``; a test keeps them in
#: sync). The ``tickers`` program's ``sector`` is one of these, so the schema can say which are valid.
SECTORS: tuple[str, ...] = (
    "Communication Services",
    "Consumer Discretionary",
    "Consumer Staples",
    "Energy",
    "Financials",
    "Health Care",
    "Industrials",
    "Information Technology",
    "Materials",
    "Real Estate",
    "Utilities",
)


@dataclass(frozen=True)
class ProgramInputRules:
    """What the server adds to a site program's ``Input`` schema (the programs live in ``programs/``).

    ``enums`` restricts a string field to listed values (the server checks it before the program runs);
    ``at_least_one`` names fields of which one must be non-empty (list with a non-blank item, or non-blank
    text; the program's model validator checks it, the schema states it as ``anyOf``); ``notes`` documents
    cross-field rules JSON Schema cannot express (the program's model validators check them).
    """

    enums: dict[str, tuple[str, ...]] = field(default_factory=dict)
    at_least_one: tuple[str, ...] = ()
    notes: str = ""


_DATE_ORDER = "Model rule: `date_from` must not be after `date_to` (422 otherwise)."

#: Rules per ``(site, program)`` of the bundled programs; programs without an entry get the generic
#: rules only (strict JSON types; a string field with ``min_length`` is not blank).
PROGRAM_INPUT_RULES: dict[tuple[str, str], ProgramInputRules] = {
    ("paiddaily", "tickers"): ProgramInputRules(enums={"sector": SECTORS}, notes=_DATE_ORDER),
    ("paiddaily", "catalysts"): ProgramInputRules(notes=_DATE_ORDER),
    ("sagedaily", "reading"): ProgramInputRules(
        at_least_one=("cards", "transits", "question"),
        notes="Model rules: at least one non-blank card, transit or question (the `anyOf`); at most "
        "10 cards and transits together (422 otherwise).",
    ),
}


def program_input_schema(
    model: type[BaseModel], rules: ProgramInputRules | None, ref_template: str
) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(schema, $defs)`` of a program's Input as the server enforces it: ``model``'s own JSON schema
    plus the not-blank pattern on required-text fields, ``rules``' enums, ``anyOf`` and notes."""
    schema = copy.deepcopy(model.model_json_schema(ref_template=ref_template, mode="validation"))
    defs = schema.pop("$defs", {})
    props: dict[str, Any] = schema.get("properties", {})
    for prop in props.values():
        if prop.get("type") == "string" and prop.get("minLength", 0) >= 1:
            prop["pattern"] = NOT_BLANK  # the programs' ``not_blank`` validators go with ``min_length``
    rules = rules or ProgramInputRules()
    for name, values in rules.enums.items():
        prop = props[name]
        branches = prop.get("anyOf", [prop])
        for branch in branches:
            if branch.get("type") == "string":
                branch["enum"] = list(values)
        prop["description"] = f"{prop.get('description', '')} One of: {', '.join(values)}.".strip()
    if rules.at_least_one:
        any_of = []
        for name in rules.at_least_one:
            if props[name].get("type") == "array":
                check: dict[str, Any] = {"contains": {"type": "string", "pattern": NOT_BLANK}}
            else:
                check = {"type": "string", "pattern": NOT_BLANK}
            any_of.append({"required": [name], "properties": {name: check}})
        schema["anyOf"] = any_of
    if rules.notes:
        schema["description"] = f"{schema.get('description', '')}\n\n{rules.notes}".strip()
    return schema, defs


def check_program_rules(inputs: BaseModel, rules: ProgramInputRules | None) -> list[dict[str, Any]]:
    """The server-enforced part of ``rules`` (enums), as pydantic-style error dicts (empty when fine)."""
    errors = []
    for name, values in (rules.enums if rules else {}).items():
        value = getattr(inputs, name, None)
        if value is not None and value not in values:
            errors.append(
                {"loc": (name,), "msg": f"{value!r} is not one of: {', '.join(values)}", "type": "enum"}
            )
    return errors
