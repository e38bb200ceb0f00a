"""Finding clips: folder layouts and manifests, including the ones that must be refused with a
one-line SourceError naming the file (issue #8)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from conftest import bytes_named_file, save_clip, tiny_clip

from msgvip.data import discover_clips
from msgvip.data.sources import SourceError


def _refusal(data) -> str:
    with pytest.raises(SourceError) as info:
        discover_clips(data)
    message = str(info.value)
    assert "\n" not in message
    message.encode("utf-8")  # printable as is: no lone surrogates
    return message


def test_split_folders(tiny_data):
    sources = discover_clips(tiny_data)
    assert [s.clip_id for s in sources] == [f"train/clip_{i}" for i in range(6)] + ["val/clip_6", "val/clip_7"]
    assert all(s.path.is_absolute() and s.target is None for s in sources)


def test_flat_folder_is_refused_with_the_expected_layouts(tmp_path):
    for i in range(3):
        save_clip(tmp_path / "flat" / f"clip_{i}.npz", tiny_clip(seed=i))
    message = _refusal(tmp_path / "flat")
    assert "3 .npz clips lie directly in the folder" in message and "clip_0.npz" in message
    assert "<data>/<split>/*.npz" in message and "train, val, test" in message and "path,split[,target]" in message
    save_clip(tmp_path / "flat" / "train" / "clip_9.npz", tiny_clip(seed=9))  # a split folder beside them does not help
    assert "lie directly in the folder" in _refusal(tmp_path / "flat")


def test_non_utf8_names_are_listed_in_byte_order(tmp_path):
    train = tmp_path / "data" / "train"
    for name in (b"\x80.npz", "é.npz".encode(), b"a.npz", b"z\xff.npz"):
        bytes_named_file(train, name)
    sources = discover_clips(tmp_path / "data")
    assert [os.fsencode(s.path.name) for s in sources] == [b"a.npz", b"z\xff.npz", b"\x80.npz", "é.npz".encode()]
    assert [s.clip_id for s in sources] == ["train/a", "train/z\udcff", "train/\udc80", "train/é"]
    assert all(s.path.is_file() for s in sources)  # surrogate escapes open the file


def test_non_utf8_folder_name_in_messages(tmp_path):
    folder = bytes_named_file(tmp_path / "x", b"placeholder").parent.parent / os.fsdecode(b"data\xff")
    bytes_named_file(folder, b"clip.npz")
    assert "data\\xff" in _refusal(folder)


def _manifest(tmp_path: Path, text: str | bytes, name: str = "m.csv") -> Path:
    for clip in ("a", "b"):
        if not (tmp_path / "clips" / f"{clip}.npz").exists():
            save_clip(tmp_path / "clips" / f"{clip}.npz", tiny_clip())
    path = tmp_path / name
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path


def test_manifest_with_blank_lines_bom_and_spreadsheet_targets(tmp_path):
    manifest = _manifest(tmp_path, "\ufeffpath,split,target\n\nclips/a.npz,train,2.0\n\"clips/b.npz\",val,\n")
    sources = discover_clips(manifest)
    assert [(s.clip_id, s.split, s.target) for s in sources] == [("clips/a", "train", 2), ("clips/b", "val", None)]
    assert sources[0].path == tmp_path / "clips" / "a.npz"


def test_manifest_listing_a_file_twice_names_both_rows(tmp_path):
    manifest = _manifest(tmp_path, "path,split\nclips/a.npz,train\n\nclips/b.npz,val\n./clips/../clips/a.npz,test\n")
    message = _refusal(manifest)
    assert "rows 2 and 5 list the same clip" in message and str(tmp_path / "clips" / "a.npz") in message
    (tmp_path / "link.npz").symlink_to(tmp_path / "clips" / "b.npz")
    manifest.write_text(f"path,split\n{tmp_path / 'clips' / 'b.npz'},train\nlink.npz,val\n")
    assert "rows 2 and 3 list the same clip" in _refusal(manifest)


@pytest.mark.parametrize(
    "text, words",
    [
        (b"path,split\nclips/caf\xe9.npz,train\n", "row 2: not UTF-8 text (byte 20"),
        ("path,split\nclips/a.npz,train,extra\n", "row 2: 3 fields, the header has 2"),
        ("path,split,target\nclips/a.npz,train\n", "row 2: 2 fields, the header has 3"),
        ('path,split\n"clips/a.npz,train\n', "malformed CSV"),
        ('path,split\n"clips/a.npz"x,train\n', "malformed CSV"),
        ("path,split,path\nclips/a.npz,train,clips/b.npz\n", "a column name appears twice"),
        ("path,split\n.,train\n", "'.' does not name a file"),
        ("path,split\nclips/a\0.npz,train\n", "does not name a file"),
        ("path,split\n,train\n", "row 2: empty 'path'"),
        ("path,split,target\nclips/a.npz,train,1_0\n", "column 'target' row 2: '1_0' is not an integer slot"),
        ("path,split\n" + "x" * 200_000 + ",train\n", "malformed CSV (field larger than field limit"),
        ("", "column 'path' missing (columns: []"),
        ("path,split\n", "lists no clips"),
    ],
)
def test_bad_manifests_are_one_line_errors_naming_the_file(tmp_path, text, words):
    manifest = _manifest(tmp_path, text)
    message = _refusal(manifest)
    assert message.startswith(f"{manifest}: ") and words in message


def test_non_utf8_manifest_name_in_messages(tmp_path):
    manifest = bytes_named_file(tmp_path, b"list\xff.csv")
    manifest.write_text("file,split\n")
    assert "list\\xff.csv: column 'path' missing" in _refusal(manifest)
