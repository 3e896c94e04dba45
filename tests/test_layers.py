"""The shape rules that import-linter cannot see: what site programs may import, and no class made or
patched at run time. (The layer contract itself is `lint-imports`, run by .ci/run.)"""

from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import REPO_ROOT

#: Site programs compose the public retrieval and answering API (plus the core types and errors).
PROGRAM_IMPORTS = ("rag_app.answering", "rag_app.retrieval", "rag_app.core")


def _imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text())
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.append(node.module)
        elif isinstance(node, ast.Import):
            found.extend(alias.name for alias in node.names)
    return found


def test_site_programs_use_only_the_public_retrieval_and_answering_api() -> None:
    for path in sorted((REPO_ROOT / "programs").glob("*.py")):
        ours = [m for m in _imports(path) if m.split(".")[0] == "rag_app"]
        assert ours, path
        bad = [m for m in ours if not m.startswith(PROGRAM_IMPORTS)]
        assert not bad, f"{path.name} imports {bad}: go through rag_app.retrieval / rag_app.answering"


def test_no_class_is_created_or_patched_at_run_time() -> None:
    offenders = []
    for path in sorted((REPO_ROOT / "rag_app").rglob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr == "new_class":
                offenders.append(f"{path}:{node.lineno} types.new_class")
            called = node.func.id if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) else None
            if called == "type" and len(node.args) == 3:  # type: ignore[union-attr]
                offenders.append(f"{path}:{node.lineno} type(name, bases, dict)")
            if isinstance(node, ast.Assign):
                for target in node.targets:
                    if isinstance(target, ast.Attribute) and target.attr == "__class__":
                        offenders.append(f"{path}:{node.lineno} __class__ assignment")
    assert not offenders, offenders


def test_the_public_api_is_small_and_lazy() -> None:
    import subprocess
    import sys

    code = (
        "import sys, rag_app; assert 'torch' not in sys.modules;"
        "print(sorted(rag_app.__all__)); rag_app.Runtime; rag_app.Settings"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO_ROOT)
    assert out.returncode == 0, out.stderr
    expected = ["Embedder", "Reranker", "Runtime", "Settings", "ask", "ingest_files", "search"]
    assert out.stdout.strip() == str(expected)
