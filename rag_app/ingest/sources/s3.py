"""An object-storage prefix as a source: ``s3://bucket/prefix`` on AWS or any S3-compatible endpoint.

The listing carries every object's ETag, so an object whose ETag equals the one remembered from the
last committed run is reported unchanged without being downloaded: a re-sync of an unchanged bucket
costs one paginated listing. The endpoint and region come from the settings (``s3_endpoint_url``,
``s3_region``); credentials from boto3's usual chain (environment, profile, instance role), never
from this project's settings.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any
from urllib.parse import urlsplit

from rag_app.core.errors import InputError
from rag_app.core.settings import Settings
from rag_app.ingest.loaders import SUPPORTED_SUFFIXES
from rag_app.ingest.sources.base import (
    Failure,
    GlobFilter,
    Known,
    SourceError,
    SourceEvent,
    SourceItem,
    Unchanged,
    Validators,
)

GONE_CODES = frozenset({"NoSuchKey", "404"})


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """``(bucket, prefix)`` of ``s3://bucket/prefix``; an error saying the expected form otherwise."""
    parts = urlsplit(uri)
    if parts.scheme != "s3" or not parts.netloc:
        raise InputError(f"not an object-storage location: {uri!r}; use s3://bucket/prefix")
    return parts.netloc, parts.path.lstrip("/")


def s3_client(settings: Settings) -> Any:
    """A boto3 S3 client for the configured endpoint and region, with the fetch timeouts and retries."""
    import boto3
    from botocore.config import Config

    config = Config(
        connect_timeout=settings.fetch_timeout_s,
        read_timeout=settings.fetch_timeout_s,
        retries={"max_attempts": settings.fetch_retries + 1, "mode": "standard"},
        user_agent_extra=settings.fetch_user_agent,
    )
    return boto3.client(
        "s3", endpoint_url=settings.s3_endpoint_url, region_name=settings.s3_region, config=config
    )


class S3Source:
    """The objects under ``s3://bucket/prefix`` whose key (under the prefix) passes ``globs``."""

    def __init__(
        self, settings: Settings, location: str, globs: GlobFilter | None = None, client: Any = None
    ) -> None:
        self.settings = settings
        self.bucket, self.prefix = parse_s3_uri(location)
        self.globs = globs or GlobFilter()
        self.client = client
        self.key = f"s3:{location}"

    def scan(self, known: Mapping[str, Known]) -> Iterator[SourceEvent]:
        """List the prefix; download only objects that are new or whose ETag changed."""
        from botocore.exceptions import BotoCoreError, ClientError

        client = self.client or s3_client(self.settings)
        try:
            objects = list(self._list(client))
        except (BotoCoreError, ClientError) as exc:
            raise SourceError(
                f"object storage s3://{self.bucket}/{self.prefix}: listing failed ({exc}); check the bucket, "
                "the endpoint (RAG_S3_ENDPOINT_URL) and the credentials (nothing of this source was ingested "
                "or pruned)"
            ) from None
        for obj in objects:
            key, etag, size = obj["Key"], obj.get("ETag", ""), int(obj.get("Size", 0))
            uri = f"s3://{self.bucket}/{key}"
            before = known.get(uri)
            if before is not None and etag and before.validators.version == etag:
                yield Unchanged(uri, "same ETag")
                continue
            if size > self.settings.max_document_bytes:
                limit = self.settings.max_document_bytes
                yield Failure(
                    uri, f"object is {size:,} bytes, over the limit of {limit:,} (RAG_MAX_DOCUMENT_BYTES)"
                )
                continue
            try:
                body = client.get_object(Bucket=self.bucket, Key=key)
                data = body["Body"].read()
            except ClientError as exc:
                code = str(exc.response.get("Error", {}).get("Code", ""))
                yield Failure(uri, f"download failed ({exc})", gone=code in GONE_CODES)
                continue
            except BotoCoreError as exc:
                yield Failure(uri, f"download failed ({exc})")
                continue
            version = body.get("ETag", etag)
            yield SourceItem(
                uri=uri,
                name=key.rsplit("/", 1)[-1],
                source=uri,
                content_type=body.get("ContentType"),
                data=data,
                doc_id=uri,
                validators=Validators(etag=version, version=version),
            )

    def _list(self, client: Any) -> Iterator[dict[str, Any]]:
        paginator = client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=self.prefix):
            for obj in page.get("Contents", []):
                key = obj["Key"]
                if key.endswith("/"):  # a "folder" marker, not content
                    continue
                rel = key[len(self.prefix) :].lstrip("/")
                name = rel.rsplit("/", 1)[-1]
                suffix = "." + name.rsplit(".", 1)[-1].lower() if "." in name else ""
                if suffix and suffix not in SUPPORTED_SUFFIXES:
                    continue  # images, archives...: not documents (a suffix-less key is sniffed)
                if self.globs.accepts(rel):
                    yield obj


__all__ = ["S3Source", "parse_s3_uri", "s3_client"]
