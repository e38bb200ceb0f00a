"""The store's small JSON documents: commit records (which rows hold which clip) and dataset
snapshots (which clips a dataset holds, with their labels).

Each document is sealed: written as canonical JSON (sorted keys, no whitespace, ASCII with
``\\u`` escapes, so file names that are not valid UTF-8 survive as surrogate escapes) with an
xxh3 checksum of its body (the document without its checksum field) inside. A reader hashes
the body bytes as they are stored, so a change of any single byte is caught: not just a changed
value, but a changed space, quote or digit too; only the checksum field is outside the hash, and
it must equal the hash.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass

import xxhash


class DamagedRecord(ValueError):
    """A document whose bytes are not what its writer sealed."""


def _encode(record: Mapping) -> bytes:
    return json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode("ascii")


def seal(record: Mapping) -> bytes:
    """Canonical bytes of ``record`` with its checksum added."""
    body = {k: v for k, v in record.items() if k != "checksum"}
    return _encode({**body, "checksum": xxhash.xxh3_64_hexdigest(_encode(body))})


def unseal(data: bytes) -> dict:
    """The record sealed in ``data``; raises DamagedRecord for any byte that differs."""
    try:
        record = json.loads(data.decode("ascii"))
    except (UnicodeDecodeError, ValueError) as err:
        raise DamagedRecord(f"not a readable record ({err})") from None
    if not isinstance(record, dict) or not isinstance(record.get("checksum"), str):
        raise DamagedRecord("no checksum field")
    # The body as the writer encoded it: the stored bytes less the checksum field, with the comma
    # after it (or before it, when it is the last key)
    field = b'"checksum":' + json.dumps(record["checksum"], ensure_ascii=True).encode("ascii")
    for part in (field + b",", b"," + field, field):
        if part in data:
            body = data.replace(part, b"", 1)
            break
    else:
        raise DamagedRecord("checksum mismatch: the bytes differ from what was written")
    if body.count(b'"checksum":') != data.count(b'"checksum":') - 1 or xxhash.xxh3_64_hexdigest(body) != record["checksum"]:
        raise DamagedRecord("checksum mismatch: the bytes differ from what was written")
    return record


@dataclass(frozen=True)
class ClipRecord:
    """Where a clip's rows are: ``length`` rows from ``offset`` of every array of ``segment``;
    row i is person slot ``slot[i]`` in frame ``frame[i]`` (the ``frame``/``slot`` arrays)."""

    content_hash: str
    segment: str
    offset: int
    length: int
    frames: int  # T of the clip
    persons: int  # N of the clip (padded slots)
    checksums: dict[str, str]  # array name -> xxh3 of the clip's rows

    def to_json(self) -> dict:
        # by hand, not asdict: that deep-copies every checksum dict and cost 9% of a write
        return {"content_hash": self.content_hash, "offset": self.offset, "length": self.length, "frames": self.frames,
                "persons": self.persons, "checksums": self.checksums}  # fmt: skip


def commit_document(segment: str, seq: int, records: list[ClipRecord], written_at: float) -> bytes:
    return seal({"segment": segment, "seq": seq, "written_at": written_at, "clips": [r.to_json() for r in records]})


def parse_commit(data: bytes) -> list[ClipRecord]:
    doc = unseal(data)
    try:
        return [ClipRecord(segment=doc["segment"], **clip) for clip in doc["clips"]]
    except (KeyError, TypeError) as err:
        raise DamagedRecord(f"not a commit record ({err})") from None


@dataclass(frozen=True)
class SnapshotEntry:
    """One clip of a dataset: its key (path relative to the data root, or the manifest row's
    path), the content it points at, and its labels."""

    key: str
    content_hash: str
    split: str
    target: int  # -1 = unlabeled
    scene: str
    source: str  # where the file was when the snapshot was taken


@dataclass(frozen=True)
class Snapshot:
    """Which clips a dataset holds, written by one `extract` run; replaces the previous one of its name."""

    name: str
    data: str  # the data folder or manifest it was taken from
    written_at: float
    entries: tuple[SnapshotEntry, ...]
    failed: int = 0  # clips of the data that could not be read, absent from ``entries``

    @property
    def complete(self) -> bool:
        return self.failed == 0

    def to_bytes(self) -> bytes:
        return seal({
            "name": self.name, "data": self.data, "written_at": self.written_at, "failed": self.failed,
            "clips": [asdict(e) for e in self.entries],
        })  # fmt: skip

    @classmethod
    def from_bytes(cls, data: bytes) -> Snapshot:
        doc = unseal(data)
        try:
            entries = tuple(SnapshotEntry(**e) for e in doc["clips"])
            return cls(doc["name"], doc["data"], doc["written_at"], entries, doc["failed"])
        except (KeyError, TypeError) as err:
            raise DamagedRecord(f"not a dataset snapshot ({err})") from None

    def splits(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for e in self.entries:
            counts[e.split] = counts.get(e.split, 0) + 1
        return dict(sorted(counts.items()))

    def leaks(self) -> dict[str, list[list[str]]]:
        """Content found in more than one split: ``"train/test" -> [[key in train, key in test], ...]``.
        The same bytes under two names in one split is not a leak (no evaluation sees it)."""
        by_content: dict[str, list[SnapshotEntry]] = {}
        for e in self.entries:
            by_content.setdefault(e.content_hash, []).append(e)
        leaks: dict[str, list[list[str]]] = {}
        for group in by_content.values():
            for i, a in enumerate(group):
                for b in group[i + 1 :]:
                    if a.split != b.split:
                        first, second = sorted([a, b], key=lambda e: e.split)
                        leaks.setdefault(f"{first.split}/{second.split}", []).append([first.key, second.key])
        return dict(sorted(leaks.items()))
