"""Offline optimization: DSPy optimizer runs over a site program (:mod:`.program`) and the
retrieval-configuration search (:mod:`.retrieval`), both resumable through one checkpoint
(:mod:`.checkpoint`). Import from the modules; this package re-exports nothing, so that importing one
part does not load DSPy's optimizers for the others."""
