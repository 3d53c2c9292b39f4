"""The schema of a run's manifest.json, checked with pydantic before any page or command trusts a run.

A run folder can be damaged by hand edits, a full disk, a copy cut short, or an older or newer version of the tool.
`validate_manifest` turns such a manifest into one readable sentence instead of a KeyError on a page. The schema
lists what readers rely on: the label names, the methods, the settings that shape the stored arrays, the counts and
the file sizes and hashes. Unknown extra keys are allowed so that a newer writer's additions do not break older
readers.
"""
from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

SCHEMA_VERSION = 1
TRUNCATION_SIDES = ("head", "tail", "head+tail")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="allow")


class ModelInfo(_Lenient):
    path: str
    name: str = ""
    digest: str = ""
    architecture: str = ""
    id2label: dict[str, str] = Field(min_length=1)

    @field_validator("id2label")
    @classmethod
    def _ids_are_0_to_n(cls, value: dict[str, str]) -> dict[str, str]:
        expected = [str(i) for i in range(len(value))]
        if sorted(value, key=lambda k: (len(k), k)) != expected:
            raise ValueError(f"label ids must be 0..{len(value) - 1}, got {sorted(value)}")
        if len(set(value.values())) != len(value):
            raise ValueError("label names must be distinct")
        return value


class DataInfo(_Lenient):
    path: str
    digest: str = ""


class Settings(_Lenient):
    methods: list[str] = Field(min_length=1)
    max_length: int = Field(gt=0)
    truncation: Literal[TRUNCATION_SIDES] = "head"
    text_col: str = "text"
    label_col: str = "label"

    @field_validator("methods")
    @classmethod
    def _method_names(cls, value: list[str]) -> list[str]:
        if any(not m.strip() for m in value):
            raise ValueError("method names must not be empty")
        if len(set(value)) != len(value):
            raise ValueError("method names must be distinct")
        return value


class Counts(_Lenient):
    examples: int = Field(ge=0)
    tokens: int = Field(ge=0)
    per_label: dict[str, int] = {}


class FileInfo(BaseModel):
    model_config = ConfigDict(extra="forbid")
    bytes: int = Field(ge=0)
    sha256: str

    @field_validator("sha256")
    @classmethod
    def _hex_digest(cls, value: str) -> str:
        if not _SHA256.match(value):
            raise ValueError("not a sha256 hex digest")
        return value


class Manifest(_Lenient):
    schema_version: Literal[SCHEMA_VERSION]
    fingerprint: str = ""
    created: str = ""
    model: ModelInfo
    data: DataInfo
    settings: Settings
    counts: Counts
    files: dict[str, FileInfo] = Field(min_length=1)

    @field_validator("files")
    @classmethod
    def _relative_paths(cls, value: dict[str, FileInfo]) -> dict[str, FileInfo]:
        for rel in value:
            parts = rel.split("/")
            if rel.startswith("/") or "\\" in rel or any(p in ("", ".", "..") for p in parts):
                raise ValueError(f"file path {rel!r} is not a plain relative path inside the run")
        return value

    @model_validator(mode="after")
    def _labels_agree(self) -> "Manifest":
        unknown = sorted(set(self.counts.per_label) - set(self.model.id2label))
        if unknown:
            raise ValueError(f"counts.per_label names label ids {unknown} that model.id2label does not have")
        if "examples.parquet" not in self.files:
            raise ValueError("files does not list examples.parquet")
        return self


class ManifestError(ValueError):
    """A manifest that does not match the schema; the message names the first problems found."""


def _describe(error: ValidationError, limit: int = 3) -> str:
    parts = []
    for item in error.errors()[:limit]:
        where = ".".join(str(p) for p in item["loc"]) or "the manifest"
        parts.append(f"{where}: {item['msg']}")
    more = len(error.errors()) - limit
    return "; ".join(parts) + (f" (and {more} more)" if more > 0 else "")


def validate_manifest(raw: Any) -> dict[str, Any]:
    """Return `raw` (the parsed manifest.json) unchanged when it matches the schema.

    Raises ManifestError naming what is wrong (at most three problems) when it does not: not an object, a missing
    or mistyped key, another schema version, label ids that are not 0..C-1, no methods, file entries that are not
    sizes and sha256 digests or that point outside the run.
    """
    if not isinstance(raw, dict):
        raise ManifestError(f"the manifest is a JSON {type(raw).__name__}, not an object")
    version = raw.get("schema_version")
    if version != SCHEMA_VERSION:
        raise ManifestError(f"it was written with cache schema {version!r}; this version reads schema "
                            f"{SCHEMA_VERSION}")
    try:
        Manifest.model_validate(raw)
    except ValidationError as exc:
        raise ManifestError(_describe(exc)) from None
    return raw
