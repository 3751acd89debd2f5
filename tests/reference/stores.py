"""Test helpers that damage a store on purpose: a file replaced by a checksum-valid one of
other content, the newest manifest's digests made to agree, so that the checks behind the
digest (what the content says) are reached."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vecz.errors import VeczError
from vecz.formats import manifest as mf
from vecz.formats.segment import segment_digest, write_segment


def rebind_digests(store: Path) -> None:
    """Record in the newest manifest the digest each named segment file has now."""
    store = Path(store)
    version = mf.list_versions(store)[-1]
    body = mf.read_manifest(store, version)

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if "digest" in node and isinstance(node.get("file"), str):
                try:
                    node["digest"] = segment_digest(store / node["file"])
                except VeczError:
                    pass  # a file damaged on purpose keeps the old digest
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(body)
    (store / mf.manifest_name(version)).unlink()
    mf.write_manifest(store, version, body)


def replace_segment(store: Path, name: str, kind: str, arrays: dict, meta: dict | None = None) -> None:
    """Write segment file `name` of `store` again holding `arrays`, and rebind the digests."""
    (Path(store) / name).unlink()
    write_segment(Path(store) / name, kind, arrays, meta=meta)
    rebind_digests(store)
