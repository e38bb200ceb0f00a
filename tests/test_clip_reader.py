"""The bad-input catalogue: every broken clip is repaired (and counted) or rejected with an error
naming the file and the field, never a traceback; and good clips around it are untouched."""

from __future__ import annotations

import io
import json
import os
import pickle
import struct
import time
import tracemalloc
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import bytes_named_file, save_clip, tiny_clip
from numpy.lib import format as npy_format

from msgvip.cli import main
from msgvip.config import ExtractConfig
from msgvip.data import ClipError, discover_clips, read_clip
from msgvip.data.clip import DEFAULT_MAX_CLIP_BYTES, HASHED_FIELDS, MAX_FRAMES, MAX_PERSONS, MAX_TEXT_LENGTH, display_path
from msgvip.data.sources import SourceError
from msgvip.extract.registry import build_extractors
from msgvip.pipelines import extract_features, run_extract
from msgvip.store import FeatureStore
from msgvip.store.fingerprint import content_hash


def _with(**changes):
    arrays = tiny_clip()
    for key, value in changes.items():
        if value is None:
            del arrays[key]
        else:
            arrays[key] = value(arrays) if callable(value) else value
    return arrays


def _set_box(frame, slot, box):
    def change(a):
        b = a["bboxes"].copy()
        b[frame, slot] = box
        return b

    return change


VALID_SLOT = int(np.flatnonzero(tiny_clip()["person_mask"][0])[0])
EMPTY_SLOT = int(np.flatnonzero(~tiny_clip()["person_mask"][0])[0])

REJECTED = {
    "missing frames": (_with(frames=None), "frames", "missing"),
    "missing bboxes": (_with(bboxes=None), "bboxes", "missing"),
    "missing person_mask": (_with(person_mask=None), "person_mask", "missing"),
    "frames wrong ndim": (_with(frames=lambda a: a["frames"][..., 0]), "frames", "shape"),
    "frames float": (_with(frames=lambda a: a["frames"].astype(np.float32)), "frames", "uint8"),
    "bboxes wrong last dim": (_with(bboxes=lambda a: np.zeros((6, 4, 5), np.float32)), "bboxes", "shape"),
    "T mismatch bboxes": (_with(bboxes=lambda a: a["bboxes"][:5]), "bboxes", "T=6"),
    "T mismatch mask": (_with(person_mask=lambda a: a["person_mask"][:5]), "person_mask", "shape"),
    "N mismatch": (_with(person_mask=lambda a: a["person_mask"][:, :3]), "person_mask", "(6, 4)"),
    "NaN box": (_with(bboxes=_set_box(2, VALID_SLOT, [np.nan, 1, 5, 5])), "bboxes", "non-finite"),
    "inf box": (_with(bboxes=_set_box(0, VALID_SLOT, [1, 1, np.inf, 5])), "bboxes", "non-finite"),
    "target on invalid slot": (_with(target_index=np.array(EMPTY_SLOT)), "target_index", "no valid person"),
    "target out of range": (_with(target_index=np.array(9)), "target_index", "outside"),
    "target not an int": (_with(target_index=np.array(1.5)), "target_index", "integer"),
    "no valid person": (_with(person_mask=lambda a: np.zeros_like(a["person_mask"])), "person_mask", "no valid person"),
    "mask not binary": (_with(person_mask=lambda a: a["person_mask"].astype(np.int64) * 2), "person_mask", "0/1"),
    "frame_mask wrong shape": (_with(frame_mask=np.ones(5, bool)), "frame_mask", "shape"),
    "object array needs pickle": (_with(video_id=np.array([{"a": 1}], dtype=object)), "video_id", "pickle"),
    "bboxes of strings": (_with(bboxes=np.full((6, 4, 4), "x")), "bboxes", "dtype"),
}


@pytest.mark.parametrize("case", sorted(REJECTED))
def test_rejected_with_file_and_field(tmp_path, case):
    arrays, field, words = REJECTED[case]
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)  # object arrays are written with pickle; the reader must refuse them
    with pytest.raises(ClipError) as info:
        read_clip(path)
    assert info.value.field == field
    assert str(path) in str(info.value) and f"field '{field}'" in str(info.value)
    assert words in info.value.message


def test_rejected_files(tmp_path):
    good = save_clip(tmp_path / "good.npz", tiny_clip())
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    text = tmp_path / "notes.npz"
    text.write_text("this is not an archive")
    single = tmp_path / "single.npz"
    with open(single, "wb") as f:
        np.save(f, np.zeros(3))
    damaged = tmp_path / "damaged.npz"
    compressed = tmp_path / "compressed.npz"
    np.savez_compressed(compressed, **tiny_clip())
    raw = bytearray(compressed.read_bytes())
    raw[len(raw) // 3] ^= 0xFF  # flip a byte inside the compressed frames member
    damaged.write_bytes(bytes(raw))
    for path, words in [(truncated, "npz"), (text, "npz"), (single, ".npz"), (tmp_path / "missing.npz", "not found"), (damaged, "")]:
        with pytest.raises(ClipError) as info:
            read_clip(path)
        assert str(path) in str(info.value) and words in str(info.value)


def test_out_of_frame_boxes_are_clipped_and_counted(tmp_path):
    arrays = _with(bboxes=_set_box(1, VALID_SLOT, [-5, -3, 20, 30]))  # frame is 40 x 24
    clip = read_clip(save_clip(tmp_path / "c.npz", arrays))
    assert clip.bboxes[1, VALID_SLOT].tolist() == [0, 0, 20, 24]
    assert clip.repairs == {"clipped_boxes": 1, "zero_area_boxes": 0}
    assert clip.person_mask[1, VALID_SLOT]
    assert 0 < clip.visible_fraction[1, VALID_SLOT] < 1


def test_zero_area_boxes_become_absent_and_are_counted(tmp_path):
    arrays = _with(bboxes=_set_box(2, VALID_SLOT, [10, 5, 10, 15]))
    arrays["bboxes"][3, VALID_SLOT] = [50, 5, 60, 15]  # entirely right of the 40 px frame
    clip = read_clip(save_clip(tmp_path / "c.npz", arrays))
    assert not clip.person_mask[2, VALID_SLOT] and not clip.person_mask[3, VALID_SLOT]
    assert clip.repairs["zero_area_boxes"] == 2
    assert (clip.bboxes[2, VALID_SLOT] == 0).all()


def test_accepted_variants(tmp_path):
    base = tiny_clip()
    clip = read_clip(save_clip(tmp_path / "base.npz", base))
    channels_first = read_clip(save_clip(tmp_path / "cf.npz", {**base, "frames": base["frames"].transpose(0, 3, 1, 2)}))
    np.testing.assert_array_equal(channels_first.frames, clip.frames)
    masked = read_clip(save_clip(tmp_path / "fm.npz", {**base, "frame_mask": np.array([1, 1, 1, 1, 0, 0], bool)}))
    assert not masked.person_mask[4:].any() and masked.person_mask[:4].any()
    unlabeled = read_clip(save_clip(tmp_path / "u.npz", {**base, "target_index": np.array(-1)}))
    assert unlabeled.target == -1
    nan_on_padding = base["bboxes"].copy()
    nan_on_padding[:, EMPTY_SLOT] = np.nan  # garbage on absent slots is ignored
    assert read_clip(save_clip(tmp_path / "p.npz", {**base, "bboxes": nan_on_padding})).bboxes[:, EMPTY_SLOT].sum() == 0
    assert clip.scene == "03" and clip.target == VALID_SLOT
    assert read_clip(tmp_path / "base.npz", target=-1).target == -1  # a manifest label overrides the file's
    with pytest.raises(ClipError, match="field 'target'"):
        read_clip(tmp_path / "base.npz", target=EMPTY_SLOT)


def test_manifest_sources(tmp_path):
    save_clip(tmp_path / "clips" / "a.npz", tiny_clip(1))
    save_clip(tmp_path / "clips" / "b.npz", tiny_clip(2))
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("path,split,target\nclips/a.npz,train,1\nclips/b.npz,val,\n")
    sources = discover_clips(manifest)
    assert [(s.split, s.clip_id, s.target) for s in sources] == [("train", "clips/a", 1), ("val", "clips/b", None)]
    bad = tmp_path / "bad.csv"
    bad.write_text("file,split\nclips/a.npz,train\n")
    with pytest.raises(SourceError, match="column 'path' missing"):
        discover_clips(bad)
    bad.write_text("path,split,target\nclips/a.npz,train,first\n")
    with pytest.raises(SourceError, match="column 'target' row 2"):
        discover_clips(bad)
    (tmp_path / "empty" / "train").mkdir(parents=True)
    with pytest.raises(SourceError, match="no .npz clips"):
        discover_clips(tmp_path / "empty")


def test_skip_finishes_other_clips_with_intact_features(tmp_path, cache_dir):
    data = tmp_path / "data"
    good = [save_clip(data / "train" / f"good_{i}.npz", tiny_clip(seed=i)) for i in range(4)]
    for name, (arrays, _, _) in list(REJECTED.items())[:6]:
        np.savez(data / "train" / f"bad_{name.replace(' ', '_')}.npz", **arrays)
    (data / "train" / "not_npz.npz").write_text("nope")

    result = CliRunner().invoke(main, ["extract", str(data), "--on-error", "skip", "--json"])
    assert result.exit_code == 1, result.output
    summary = json.loads(result.stdout)
    assert (summary["written"], summary["failed"]) == (4, 7)
    assert {e["path"].rsplit("/", 1)[1] for e in summary["errors"]} == {p.name for p in (data / "train").glob("*") if not p.name.startswith("good")}
    assert Path(summary["errors_csv"]).read_text().count("\n") == 8  # header + 7 failures

    store = FeatureStore.open(summary["store"])
    extractors = build_extractors(ExtractConfig())
    for path in good:
        clip = read_clip(path)
        stored = store.read_clip(clip.content_hash)
        expected = extract_features(extractors, [clip])[0]
        mask = expected["person_mask"]
        np.testing.assert_array_equal(stored["person_mask"], mask)
        for name in expected:
            np.testing.assert_array_equal(stored[name][mask], expected[name][mask])  # rows of people present only


def test_fail_stops_and_keeps_what_was_committed(tmp_path, cache_dir):
    data = tmp_path / "data"
    for i in range(3):
        save_clip(data / "train" / f"a_{i}.npz", tiny_clip(seed=i))
    np.savez(data / "train" / "b_bad.npz", **REJECTED["NaN box"][0])
    save_clip(data / "train" / "c_after.npz", tiny_clip(seed=9))
    result = CliRunner().invoke(main, ["extract", str(data), "--on-error", "fail"])
    assert result.exit_code == 1
    assert "b_bad.npz: field 'bboxes'" in result.output and "Traceback" not in result.output
    summary = run_extract(data, cache_dir=cache_dir, on_error="skip", progress=False)
    assert summary.cached >= 3 and summary.failed == 1


# ------------------------------------------------------------------ hostile files (issue #8)
def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def _npy_header(shape: tuple[int, ...], dtype) -> bytes:
    """A .npy header declaring ``shape`` and ``dtype``, with no data after it."""
    buffer = io.BytesIO()
    header = {"descr": npy_format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False, "shape": shape}
    npy_format.write_array_header_1_0(buffer, header)
    return buffer.getvalue()


def _write_npz(path, members: dict[str, bytes], compression=zipfile.ZIP_STORED):
    with zipfile.ZipFile(path, "w", compression) as archive:
        for name, data in members.items():
            archive.writestr(f"{name}.npy", data)
    return path


def _members(arrays: dict[str, np.ndarray]) -> dict[str, bytes]:
    return {name: _npy(value) for name, value in arrays.items()}


def _peak_bytes(call) -> int:
    """The most memory Python and numpy allocated while ``call()`` ran."""
    tracemalloc.start()
    try:
        call()
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return peak


def _refusal(path, **kwargs) -> ClipError:
    with pytest.raises(ClipError) as info:
        read_clip(path, **kwargs)
    return info.value


def test_header_declaring_500_gib_is_refused_before_reading(tmp_path):
    arrays = tiny_clip(frames=2, slots=2, people=1, height=16, width=16)
    members = {**_members(arrays), "frames": _npy_header((2, 100_000, 900_000, 3), np.uint8)}  # 540 GB
    path = _write_npz(tmp_path / "huge.npz", members)
    assert path.stat().st_size < 2048
    started = time.perf_counter()
    err = _refusal(path)
    assert time.perf_counter() - started < 1.0
    assert err.field == "frames" and "max_clip_bytes" in err.message and "GiB" in err.message


def test_clip_budget_is_a_keyword_with_a_module_default(tmp_path):
    path = save_clip(tmp_path / "c.npz", tiny_clip())
    assert read_clip(path, max_clip_bytes=DEFAULT_MAX_CLIP_BYTES).num_frames == 6
    err = _refusal(path, max_clip_bytes=10_000)  # frames alone are 17 kB
    assert err.field == "frames" and "budget of 9.8 KiB" in err.message


@pytest.mark.parametrize(
    "field, header, words",
    [
        ("bboxes", ((6, 5_000_000, 4), np.float32), f"more than the {MAX_PERSONS}"),
        ("person_mask", ((6, 5_000_000), bool), "shape"),
        ("frames", ((MAX_FRAMES + 1, 1, 1, 3), np.uint8), f"more than the {MAX_FRAMES}"),
        ("frames", ((6, 24, 40, 3), np.dtype("V3")), "plain"),
        ("bboxes", ((6, -4, 4), np.float32), "impossible shape"),
        ("video_id", ((), np.dtype(f"<U{MAX_TEXT_LENGTH + 1}")), "longer than"),
        ("target_index", ((2,), np.int64), "one integer"),
    ],
)
def test_absurd_headers_are_refused_by_the_header(tmp_path, field, header, words):
    members = {**_members(tiny_clip()), field: _npy_header(*header)}
    if field == "person_mask":  # persons in the millions in both arrays: bboxes must refuse first
        members["bboxes"] = _npy_header((6, 5_000_000, 4), np.float32)
        field, words = "bboxes", f"more than the {MAX_PERSONS}"
    path = _write_npz(tmp_path / "absurd.npz", members)
    errors = []
    peak = _peak_bytes(lambda: errors.append(_refusal(path)))
    assert errors[0].field == field and words in errors[0].message
    assert peak < 8 * 2**20  # nothing the header declares was allocated


def _raw_npy(header_text: str) -> bytes:
    """A version 1.0 .npy member whose header is ``header_text`` verbatim, padded as numpy pads."""
    header = header_text.encode("latin1")
    header += b" " * (-(10 + len(header) + 1) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header + bytes(100)


@pytest.mark.parametrize(
    "header, words",
    [
        ("{'descr': '<f4', 'fortran_order': False, 'shape': (6,", "unreadable .npy header"),  # numpy's fallback tokenizer fails
        ("{'descr': '<f4', 'fortran_order': False, 'shape': " + "(" * 300 + ")" * 300 + "}", "unreadable .npy header"),
        ("[1, 2, 3]", "unreadable .npy header"),
        ("{'descr': '|O', 'fortran_order': False, 'shape': (6, 4, 4)}", "pickle"),
        ("{'descr': [('x', '<f4')], 'fortran_order': False, 'shape': (6, 4, 4)}", "plain"),
        ("{'descr': '<M8[ns]', 'fortran_order': False, 'shape': (6, 4, 4)}", "plain"),
        ("{'descr': '<f4', 'fortran_order': False, 'shape': (6, 4, 4, " + "1, " * 70 + ")}", "impossible shape"),
    ],
)
def test_hostile_npy_headers(tmp_path, header, words):
    path = _write_npz(tmp_path / "h.npz", {**_members(tiny_clip()), "bboxes": _raw_npy(header)})
    err = _refusal(path)
    assert err.field == "bboxes" and words in err.message and "\n" not in str(err)


def _bomb_member(frames: np.ndarray, padding: int) -> bytes:
    return _npy(frames) + bytes(padding)  # the zeros deflate to almost nothing


def test_zip_bomb_member_is_refused_without_decompressing(tmp_path):
    arrays = tiny_clip()
    members = {**_members(arrays), "frames": _bomb_member(arrays["frames"], 64 * 2**20)}
    path = _write_npz(tmp_path / "bomb.npz", members, zipfile.ZIP_DEFLATED)
    assert path.stat().st_size < 2**20
    errors = []
    peak = _peak_bytes(lambda: errors.append(_refusal(path)))
    assert errors[0].field == "frames" and "header implies" in errors[0].message
    assert peak < 8 * 2**20


def _forge_central_entry(path, member: str, file_size: int, crc: int) -> None:
    """Rewrite the uncompressed size and CRC the zip's central directory records for a member."""
    raw = bytearray(path.read_bytes())
    at = raw.find(b"PK\x01\x02")
    while raw[at + 46 : at + 46 + len(member)] != member.encode():
        at = raw.find(b"PK\x01\x02", at + 4)
    struct.pack_into("<I", raw, at + 16, crc)
    struct.pack_into("<I", raw, at + 24, file_size)
    path.write_bytes(bytes(raw))


def test_member_whose_stream_outgrows_its_declared_size_is_read_only_that_far(tmp_path):
    arrays = tiny_clip()
    honest = _npy(arrays["frames"])
    path = _write_npz(tmp_path / "forged.npz", {**_members(arrays), "frames": _bomb_member(arrays["frames"], 64 * 2**20)}, zipfile.ZIP_DEFLATED)
    _forge_central_entry(path, "frames.npy", len(honest), zlib.crc32(honest))
    clips = []
    peak = _peak_bytes(lambda: clips.append(read_clip(path)))
    np.testing.assert_array_equal(clips[0].frames, arrays["frames"])
    assert peak < 8 * 2**20


def test_header_length_field_of_gigabytes_is_refused(tmp_path):
    arrays = tiny_clip()
    forged = b"\x93NUMPY\x02\x00" + (2**31).to_bytes(4, "little") + bytes(64 * 2**20)
    path = _write_npz(tmp_path / "long_header.npz", {**_members(arrays), "bboxes": forged}, zipfile.ZIP_DEFLATED)
    errors = []
    peak = _peak_bytes(lambda: errors.append(_refusal(path)))
    assert errors[0].field == "bboxes" and "header of 2147483648 bytes" in errors[0].message
    assert peak < 8 * 2**20


def test_archive_with_a_huge_directory_is_refused_before_listing_it(tmp_path):
    members = {**_members(tiny_clip()), **{f"x{i}": b"" for i in range(30_000)}}  # zipfile would build 30k objects
    err = _refusal(_write_npz(tmp_path / "many.npz", members))
    assert err.field == "<file>" and "zip directory" in err.message


@pytest.mark.parametrize("compressed", [False, True])
def test_damaged_bytes_never_escape_as_other_exceptions(tmp_path, compressed):
    """Every mutation of a valid clip reads as a clip or fails as a ClipError, nothing else."""
    good = tmp_path / "good.npz"
    (np.savez_compressed if compressed else np.savez)(good, **tiny_clip(frames=2, height=16, width=16))
    raw = good.read_bytes()
    with zipfile.ZipFile(good) as archive:
        starts = [info.header_offset for info in archive.infolist()]
    rng = np.random.default_rng(0)
    bad = tmp_path / "bad.npz"
    for i in range(300):
        mutated = bytearray(raw)
        near_header = int(rng.choice(starts)) + int(rng.integers(0, 160))  # zip and .npy headers
        for at in (near_header, int(rng.integers(0, len(raw)))) if i % 2 else (near_header,):
            mutated[min(at, len(raw) - 1)] = int(rng.integers(0, 256))
        bad.write_bytes(bytes(mutated[: len(raw) - int(rng.integers(0, 40)) if i % 7 == 0 else len(raw)]))
        try:
            read_clip(bad)
        except ClipError:
            pass


@pytest.mark.parametrize("saver", ["savez", "savez_compressed", "fortran", "big_endian"])
def test_content_hash_matches_numpys_loader(tmp_path, saver):
    """Stores are keyed by the content hash: the reader must see exactly what np.load sees."""
    arrays = tiny_clip()
    arrays["frame_mask"] = np.ones(6, bool)
    if saver == "fortran":
        arrays["bboxes"] = np.asfortranarray(arrays["bboxes"])
        arrays["frames"] = np.asfortranarray(arrays["frames"])
    if saver == "big_endian":
        arrays["bboxes"] = arrays["bboxes"].astype(">f4")
    path = tmp_path / "c.npz"
    getattr(np, "savez_compressed" if saver == "savez_compressed" else "savez")(path, **arrays)
    with np.load(path) as loaded:
        expected = content_hash({name: loaded[name] for name in HASHED_FIELDS})
        clip = read_clip(path)
        assert clip.content_hash == expected
        np.testing.assert_array_equal(clip.frames, loaded["frames"])


def test_text_fields_follow_the_documented_rule(tmp_path):
    base = tiny_clip()
    latin1 = read_clip(save_clip(tmp_path / "a.npz", {**base, "video_id": np.array(b"caf\xe9"), "scene_category": np.array(7)}))
    assert (latin1.video_id, latin1.scene) == ("caf\\xe9", "7")
    utf8 = read_clip(save_clip(tmp_path / "b.npz", {**base, "video_id": np.array("café".encode()), "scene_category": np.array("park")}))
    assert (utf8.video_id, utf8.scene) == ("café", "park")
    not_text = np.frombuffer(b"v\0\0\0\0\0\x11\0", "<U2").reshape(())  # code point U+110000
    odd = read_clip(save_clip(tmp_path / "c.npz", {**base, "video_id": not_text, "scene_category": np.array("x", ">U3")}))
    assert odd.video_id == "v\\x00\\x00\\x11\\x00" and odd.scene == "x"
    for clip in (latin1, utf8, odd):
        json.dumps([clip.video_id, clip.scene], ensure_ascii=False).encode("utf-8")  # valid Unicode throughout


def test_file_names_that_are_not_utf8(tmp_path):
    good = bytes_named_file(tmp_path, b"caf\xe9 \xff.npz")
    save_clip(good, tiny_clip())
    clip = read_clip(good)
    assert clip.clip_id == "caf\udce9 \udcff"  # the key: the name's own bytes, to find the file again
    assert clip.video_id == "caf\\xe9 \\xff"  # a text field: valid Unicode, like the file's own video_id
    bad = bytes_named_file(tmp_path, b"bad\xff\n.npz")
    np.savez(bad, **REJECTED["NaN box"][0])
    err = _refusal(bad)
    message = str(err)
    message.encode("utf-8")  # printable as is: no lone surrogates
    assert "bad\\xff\\x0a.npz: field 'bboxes'" in message and "\n" not in message
    assert err.path == str(bad) and err.path_str in message
    assert pickle.loads(pickle.dumps(err)).path == str(bad)


def test_display_path():
    assert display_path(os.fsdecode(b"/d/caf\xc3\xa9/x\xff.npz")) == "/d/café/x\\xff.npz"
    assert display_path(Path("a\tb\x1b[31m")) == "a\\x09b\\x1b[31m"
    assert display_path(b"raw\xfe") == "raw\\xfe"


def test_ambiguous_frame_layout_is_an_error(tmp_path):
    base = tiny_clip()
    channel_first_width_3 = np.zeros((6, 3, 24, 3), np.uint8)  # (T, 3, H, W=3) or (T, H=3, W, 3)?
    err = _refusal(save_clip(tmp_path / "a.npz", {**base, "frames": channel_first_width_3}))
    assert err.field == "frames" and "ambiguous" in err.message and "channel-last, (T, H, W, 3)" in err.message


def test_huge_finite_coordinates_are_clipped_not_called_non_finite(tmp_path):
    bboxes = tiny_clip()["bboxes"].astype(np.float64)
    bboxes[0, VALID_SLOT] = [-1e300, 1, 1e300, 5]
    clip = read_clip(save_clip(tmp_path / "c.npz", _with(bboxes=bboxes)))
    assert clip.bboxes[0, VALID_SLOT].tolist() == [0, 1, 40, 5]
    assert clip.person_mask[0, VALID_SLOT] and clip.repairs["clipped_boxes"] == 1
    assert 0 <= clip.visible_fraction[0, VALID_SLOT] < 1e-6


@pytest.mark.parametrize("content", [b"this is not an archive", b"", b"\x00\x01binary junk" * 10])
def test_non_zip_file_named_npz(tmp_path, content):
    path = tmp_path / "x.npz"
    path.write_bytes(content)
    err = _refusal(path)
    assert err.field == "<file>" and "not an .npz (zip) file" in err.message and "pickle" not in err.message
