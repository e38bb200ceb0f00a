"""Finding clips: ``<data>/<split>/*.npz`` folders or a manifest CSV (``path, split[, target]``).

Folders are listed in the byte order of their names (for UTF-8 names, code-point order), so the
order is the same on every machine whatever the names hold; names that are not UTF-8 are kept
as Python's surrogate escapes, which open the file, and are shown with :func:`display_path`.

A manifest is UTF-8 text (a byte-order mark is allowed). Rows are numbered as lines of the file,
the header being row 1; blank lines are skipped. ``target`` is an integer slot, or empty for the
file's own label. Paths are relative to the manifest's folder unless absolute, and each file may
be listed once (two rows naming the same file, after resolving ``..`` and links, is an error).
"""

from __future__ import annotations

import codecs
import csv
import io
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from .clip import display_path

_LAYOUTS = "expected <data>/<split>/*.npz with splits such as train, val, test, or a manifest CSV with columns path,split[,target]"
_INTEGER = re.compile(r"\s*-?\d+(\.0*)?\s*")  # "3", "-1", and "3.0" as spreadsheets write it


class SourceError(Exception):
    """The data argument itself is unusable (no clips, bad manifest); names the file and column."""


@dataclass(frozen=True)
class ClipSource:
    path: Path
    split: str
    clip_id: str  # "<split>/<file stem>" for folders, the manifest's path otherwise
    target: int | None = None  # a manifest's label, overriding the file's


def discover_clips(data: Path | str) -> list[ClipSource]:
    """All clips under a data folder, or listed by a manifest CSV, in a stable order, with
    absolute paths (the store's index records where each clip came from)."""
    data = Path(data).absolute()
    if data.is_file() and data.suffix.lower() == ".csv":
        return read_manifest(data)
    if not data.is_dir():
        raise SourceError(f"{display_path(data)}: not a folder of clips nor a manifest .csv ({_LAYOUTS})")
    try:
        entries = sorted(data.iterdir(), key=os.fsencode)
    except OSError as err:
        raise SourceError(f"{display_path(data)}: cannot list the folder ({err.strerror or err})") from None
    flat = [p for p in entries if p.suffix == ".npz" and p.is_file()]
    if flat:  # a guessed split would leak into training silently; make the user say which
        raise SourceError(
            f"{display_path(data)}: {len(flat)} .npz clips lie directly in the folder (e.g. {display_path(flat[0].name)}), "
            f"so their split is unknown; {_LAYOUTS}"
        )
    sources = []
    for split_dir in (p for p in entries if p.is_dir()):
        clips = sorted(split_dir.glob("*.npz"), key=os.fsencode)
        sources += [ClipSource(p, split_dir.name, f"{split_dir.name}/{p.stem}") for p in clips]
    if not sources:
        raise SourceError(f"{display_path(data)}: no .npz clips found ({_LAYOUTS})")
    return sources


def read_manifest(manifest: Path) -> list[ClipSource]:
    """A CSV with columns ``path`` and ``split`` (and optionally ``target``); paths are relative
    to the manifest's folder unless absolute."""
    shown = display_path(manifest)
    try:
        data = manifest.read_bytes()
    except OSError as err:
        raise SourceError(f"{shown}: cannot be read ({err.strerror or err})") from None
    bom = len(codecs.BOM_UTF8) if data.startswith(codecs.BOM_UTF8) else 0
    try:
        text = data[bom:].decode("utf-8")
    except UnicodeDecodeError as err:
        at = bom + err.start
        row = data.count(b"\n", 0, at) + 1
        raise SourceError(f"{shown}: row {row}: not UTF-8 text (byte {at}: {err.reason}); save the manifest as UTF-8") from None
    sources: list[ClipSource] = []
    first_row: dict[Path, int] = {}  # resolved path -> row that listed it
    try:
        rows = _numbered_rows(text)
        header_row, header = next(rows, (1, []))
        for column in ("path", "split"):
            if column not in header:
                raise SourceError(f"{shown}: column '{column}' missing (columns: {header}; expected path, split[, target])")
        if len(set(header)) != len(header):
            raise SourceError(f"{shown}: row {header_row}: a column name appears twice (columns: {header})")
        for row, values in rows:
            if len(values) != len(header):
                raise SourceError(f"{shown}: row {row}: {len(values)} fields, the header has {len(header)}")
            source = _source(manifest, row, dict(zip(header, values)))
            resolved = _resolve(source.path)
            if resolved in first_row:
                raise SourceError(f"{shown}: rows {first_row[resolved]} and {row} list the same clip ({display_path(resolved)})")
            first_row[resolved] = row
            sources.append(source)
    except csv.Error as err:
        raise SourceError(f"{shown}: malformed CSV ({err})") from None
    if not sources:
        raise SourceError(f"{shown}: the manifest lists no clips")
    return sources


def _numbered_rows(text: str) -> Iterator[tuple[int, list[str]]]:
    """Non-blank CSV rows with the line they start on (a quoted field may span lines)."""
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    start = 1
    for values in reader:
        if values:
            yield start, values
        start = reader.line_num + 1


def _source(manifest: Path, row: int, record: dict[str, str]) -> ClipSource:
    shown = display_path(manifest)
    path, split = record["path"], record["split"]
    if not path or not split:
        raise SourceError(f"{shown}: row {row}: empty 'path' or 'split' (path={path!r}, split={split!r})")
    if "\0" in path or not Path(path).name:
        raise SourceError(f"{shown}: row {row}: column 'path': {path!r} does not name a file")
    target = None
    if record.get("target", ""):
        if not _INTEGER.fullmatch(record["target"]):
            raise SourceError(f"{shown}: column 'target' row {row}: {record['target']!r} is not an integer slot")
        target = int(record["target"].split(".")[0])
    resolved = Path(path) if Path(path).is_absolute() else manifest.absolute().parent / path
    return ClipSource(resolved, split, str(Path(path).with_suffix("")), target)


def _resolve(path: Path) -> Path:
    """The real location a path names, to tell two spellings of one file apart from two files."""
    try:
        return path.resolve()
    except (OSError, RuntimeError):  # a link loop: compare the path as written
        return Path(os.path.normpath(path))
