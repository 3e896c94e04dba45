"""Loaders turn files into Documents with typed metadata, and name file and line on bad input."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest

from rag_app.core.errors import LoaderError
from rag_app.ingest.loaders import load_paths
from rag_app.ingest.loaders.markdown import split_sections

MARKDOWN = """---
id: sage
title: Sage
url: https://builddaily.example/sage
date: 2024-03-05
tags: [product, ai]
owner: platform
---
# Sage

Intro paragraph.

## Pricing

Sage Team is $19.

```python
# not a heading
x = 1
```

### Annual

Annual billing saves 20%.

## Support
Email us.
"""


def test_markdown_front_matter_and_heading_paths(tmp_path: Path) -> None:
    (tmp_path / "sage.md").write_text(MARKDOWN)
    [doc] = load_paths([tmp_path]).documents
    assert (doc.id, doc.title, doc.source) == ("sage", "Sage", "https://builddaily.example/sage")
    assert doc.date == dt.date(2024, 3, 5)
    assert doc.tags == ["product", "ai"]
    assert doc.metadata == {"owner": "platform"}
    paths = [s.heading_path for s in doc.sections]
    assert paths == [["Sage"], ["Sage", "Pricing"], ["Sage", "Pricing", "Annual"], ["Sage", "Support"]]
    assert "# not a heading" in doc.sections[1].text  # code fences do not split sections


def test_markdown_default_id_is_relative_path(tmp_path: Path) -> None:
    (tmp_path / "guides").mkdir()
    (tmp_path / "guides" / "start.md").write_text("# Getting started\n\nHello.")
    [doc] = load_paths([tmp_path]).documents
    assert doc.id == "guides/start"
    assert doc.title == "Getting started"


def test_jsonl_fields_and_nested_metadata(tmp_path: Path) -> None:
    rows = [
        {
            "_id": "t1",
            "title": "NVDA",
            "text": "Strong setup.",
            "tickers": ["nvda"],
            "sector": "Tech",
            "metadata": {"date": "2024-05-01", "tags": ["Earnings"], "setup": "strong"},
        },
        {"id": "t2", "text": "Plain."},
    ]
    (tmp_path / "t.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    docs = load_paths([tmp_path / "t.jsonl"]).documents
    assert [d.id for d in docs] == ["t1", "t2"]
    assert docs[0].tickers == ["NVDA"]
    assert docs[0].tags == ["earnings"]
    assert docs[0].date == dt.date(2024, 5, 1)
    assert docs[0].metadata == {"sector": "Tech", "setup": "strong"}


def test_malformed_jsonl_names_file_and_line_or_skips(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"id": "a", "text": "ok"}\n{"id": "b", "text": \n{"id": "c"}\n')
    with pytest.raises(LoaderError) as err:
        load_paths([path])
    assert f"{path}:2" in str(err.value)
    result = load_paths([path], on_error="skip")
    assert [d.id for d in result.documents] == ["a"]
    assert [e.line for e in result.errors] == [2, 3]
    assert "no non-empty 'text'" in str(result.errors[1])


def test_csv_mapping_lists_and_bad_rows(tmp_path: Path) -> None:
    path = tmp_path / "c.csv"
    path.write_text(
        'ref,body,published,tickers,shape\nc1,"Gap up, then fade",2024-05-22,NVDA;AMD,gap-up-fade\n'
        "c2,too,few\n"
    )
    mapping = {"id": "ref", "text": "body", "date": "published"}
    with pytest.raises(LoaderError, match=r"c\.csv:3: expected 5 columns, found 3"):
        load_paths([path], csv_columns=mapping)
    [doc] = load_paths([path], csv_columns=mapping, on_error="skip").documents
    assert doc.text == "Gap up, then fade"
    assert doc.tickers == ["NVDA", "AMD"]
    assert doc.date == dt.date(2024, 5, 22)
    assert doc.metadata == {"shape": "gap-up-fade"}


def test_csv_without_mapped_columns_says_which(tmp_path: Path) -> None:
    path = tmp_path / "c.csv"
    path.write_text("ref,body\nx,y\n")
    with pytest.raises(LoaderError, match="no 'id' column"):
        load_paths([path])


def test_non_utf8_is_an_error_with_line(tmp_path: Path) -> None:
    path = tmp_path / "latin.txt"
    path.write_bytes(b"first line\nsecond caf\xe9\n")
    with pytest.raises(LoaderError, match=r"latin\.txt:2: not valid UTF-8"):
        load_paths([path])


def test_missing_path_bad_date_and_duplicate_ids(tmp_path: Path) -> None:
    with pytest.raises(LoaderError, match="no such file"):
        load_paths([tmp_path / "nope"])
    bad = tmp_path / "d.jsonl"
    bad.write_text('{"id": "a", "text": "t", "date": "May 5"}\n')
    with pytest.raises(LoaderError, match=r"d\.jsonl:1: date 'May 5' is not ISO"):
        load_paths([bad])
    dup = tmp_path / "dup"
    dup.mkdir()
    (dup / "a.jsonl").write_text('{"id": "x", "text": "one"}\n')
    (dup / "b.jsonl").write_text('{"id": "x", "text": "two"}\n')
    with pytest.raises(LoaderError, match="duplicate document id 'x'"):
        load_paths([dup])


def test_beir_layout_reads_only_the_corpus(tmp_path: Path) -> None:
    (tmp_path / "qrels").mkdir()
    (tmp_path / "corpus.jsonl").write_text('{"_id": "1", "title": "T", "text": "Body."}\n')
    (tmp_path / "queries.jsonl").write_text('{"_id": "q", "text": "question"}\n')
    (tmp_path / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq\t1\t1\n")
    docs = load_paths([tmp_path]).documents
    assert [(d.id, d.title) for d in docs] == [("1", "T")]


def test_split_sections_without_headings() -> None:
    [section] = split_sections("just text\nmore")
    assert section.heading_path == [] and section.text == "just text\nmore"


# =================================================================================== front matter


def test_front_matter_is_real_yaml(tmp_path: Path) -> None:
    (tmp_path / "p.md").write_text(
        "---\n"
        'title: "Sage: the assistant"\n'
        "id: 42\n"
        "date: 2024-03-05\n"
        "tickers:\n  - nvda\n  - amd\n"
        "tags: [Product, 'AI, ML']\n"
        "owner:\n  team: platform\n  oncall: [ana, bo]\n"
        "note: 'it''s quoted # not a comment'\n"
        "# a comment line\n"
        "---\n# Heading\n\nBody.\n"
    )
    [doc] = load_paths([tmp_path]).documents
    assert (doc.id, doc.title, doc.date) == ("42", "Sage: the assistant", dt.date(2024, 3, 5))
    assert (doc.tickers, doc.tags) == (["NVDA", "AMD"], ["product", "ai, ml"])
    assert doc.metadata == {
        "owner": {"team": "platform", "oncall": ["ana", "bo"]},
        "note": "it's quoted # not a comment",
    }
    (tmp_path / "p.md").write_text("---\n---\nNo metadata at all.")
    [doc] = load_paths([tmp_path]).documents
    assert doc.text == "No metadata at all."


@pytest.mark.parametrize(
    ("front", "match"),
    [
        ("title: ok\ntags: [a, b\nowner: x\n", r"bad\.md:\d+: front matter is not valid YAML"),
        ("title: ok\n  indented: wrong\n", r"bad\.md:3: front matter is not valid YAML"),
        ("- a list\n- not a mapping\n", r"bad\.md:2: front matter must be a YAML mapping"),
        ("date: March 5th\n", r"bad\.md:1: date 'March 5th' is not ISO format"),
    ],
)
def test_malformed_front_matter_names_file_and_line(tmp_path: Path, front: str, match: str) -> None:
    (tmp_path / "bad.md").write_text(f"---\n{front}---\n# T\n\nBody.\n")
    with pytest.raises(LoaderError, match=match):
        load_paths([tmp_path])


def test_unclosed_front_matter_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "bad.md").write_text("---\ntitle: never closed\n# T\n")
    with pytest.raises(LoaderError, match=r"bad\.md:1: front matter starts with '---' but never closes"):
        load_paths([tmp_path])
