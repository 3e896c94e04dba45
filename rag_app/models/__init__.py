"""Models layer: the embedder, the reranker and the LM, plus where their weights come from.

:mod:`.files` (locating weights, never downloading them implicitly), :mod:`.embeddings` (text ->
vectors), :mod:`.rerank` (the cross-encoder second stage), :mod:`.fused_encoder` (the fast encoder
layers both use in bf16/fp16), :mod:`.lm` (the DSPy LM). Build them through :class:`rag_app.runtime.Runtime`.
"""
