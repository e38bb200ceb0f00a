"""The bad-input catalogue: every broken clip is repaired (and counted) or rejected with an error
naming the file and the field, never a traceback; and good clips around it are untouched."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import save_clip, tiny_clip

from msgvip.cli import main
from msgvip.config import ExtractConfig
from msgvip.data import ClipError, discover_clips, read_clip
from msgvip.data.sources import SourceError
from msgvip.extract.registry import build_extractors
from msgvip.pipelines import extract_features, run_extract
from msgvip.store import FeatureStore


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
    assert (FeatureStore.open(summary["store"]).path / "errors.csv").read_text().count("\n") == 8

    store = FeatureStore.open(summary["store"])
    extractors = build_extractors(ExtractConfig())
    for path in good:
        clip = read_clip(path)
        stored = store.read_clip(store.entries[clip.content_hash])
        expected = extract_features(extractors, [clip])[0]
        for name in expected:
            np.testing.assert_array_equal(stored[name], expected[name])


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
