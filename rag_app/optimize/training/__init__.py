"""Fine-tuning the site's reranker (cross-encoder) and embedder (bi-encoder) on its own labels.

Deliberately empty: ``cross_encoder_fit`` and ``bi_encoder_fit`` run as ``python -m`` on a GPU machine
that has only torch, transformers and sentence-transformers, so importing this package must not import
pydantic, DSPy or LanceDB. Import from the modules.
"""
