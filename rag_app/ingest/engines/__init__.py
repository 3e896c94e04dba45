"""Ingest engines besides the single-process one in :mod:`rag_app.ingest.pipeline`.

``ray_ingest`` runs the same ingest as a Ray Data pipeline (``rag-app ingest --engine ray``) for
corpora whose embedding is too slow for one machine: parsing and embedding spread over a cluster's
workers, fragments written by the workers, commits made by the driver. The modules import Ray only
when called, so the package costs nothing without the ``ray`` extra.

* :mod:`.ray_session`: importing Ray (with the install hint), attaching to or starting it, quiet output
* :mod:`.ray_stages`: what runs on the workers: scanning files, loading pending documents, the
  embedding actor that chunks, embeds and writes Lance fragments
* :mod:`.ray_plan`: the driver's reading of a scan: errors, duplicate ids, the diff against the table
* :mod:`.ray_commit`: the driver's commits: one Append per batch of documents, replacements by merge
* :mod:`.ray_ingest`: ``ray_ingest_paths`` / ``ray_ingest_documents``, the same contract as the
  single-process ``ingest_paths`` / ``ingest_documents``
"""
