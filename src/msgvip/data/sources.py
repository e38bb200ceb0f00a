"""Finding clips: ``<data>/<split>/*.npz`` folders or a manifest CSV (``path, split[, target]``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

UNSPLIT = "all"  # split name of .npz files lying directly in the data folder


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
        raise SourceError(f"{data}: not a folder of clips nor a manifest .csv")
    sources = [ClipSource(p, UNSPLIT, p.stem) for p in sorted(data.glob("*.npz"))]
    for split_dir in sorted(p for p in data.iterdir() if p.is_dir()):
        sources += [ClipSource(p, split_dir.name, f"{split_dir.name}/{p.stem}") for p in sorted(split_dir.glob("*.npz"))]
    if not sources:
        raise SourceError(f"{data}: no .npz clips found (expected <data>/<split>/*.npz or a manifest .csv)")
    return sources


def read_manifest(manifest: Path) -> list[ClipSource]:
    """A CSV with columns ``path`` and ``split`` (and optionally ``target``); paths are relative
    to the manifest's folder unless absolute."""
    try:
        table = pd.read_csv(manifest, dtype={"path": str, "split": str}, keep_default_na=False)
    except (ValueError, pd.errors.ParserError, UnicodeDecodeError) as err:
        raise SourceError(f"{manifest}: unreadable manifest ({err})") from None
    for column in ("path", "split"):
        if column not in table.columns:
            raise SourceError(f"{manifest}: column '{column}' missing (columns: {list(table.columns)}; expected path, split[, target])")
    targets: list[int | None] = [None] * len(table)
    if "target" in table.columns:
        parsed = pd.to_numeric(table["target"].replace("", None), errors="coerce")
        bad = table["target"].astype(str).ne("") & (parsed.isna() | (parsed % 1 != 0))
        if bad.any():
            row = int(bad.idxmax())
            raise SourceError(f"{manifest}: column 'target' row {row + 2}: {table['target'][row]!r} is not an integer slot")
        targets = [None if pd.isna(v) else int(v) for v in parsed]
    sources = []
    for (path, split), target in zip(table[["path", "split"]].itertuples(index=False), targets):
        if not path or not split:
            raise SourceError(f"{manifest}: empty 'path' or 'split' in a row (path={path!r}, split={split!r})")
        resolved = Path(path) if Path(path).is_absolute() else manifest.absolute().parent / path
        sources.append(ClipSource(resolved, split, str(Path(path).with_suffix("")), target))
    if not sources:
        raise SourceError(f"{manifest}: the manifest lists no clips")
    return sources
