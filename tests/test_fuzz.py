"""Fuzzing msgvip's two untrusted inputs with hypothesis (issue #8 item 9): clip files and the
bytes of a feature store.

Clip files: generated .npz archives (shapes, dtypes, byte orders, NaN/inf/huge/negative values,
missing, duplicated and extra fields, odd member names and compression methods, damaged zip
bytes) and other things found where a clip should be (folders, dangling links, empty files, a
single .npy), under odd file names (spaces, unicode, bytes that are not UTF-8, leading dashes).
Contract: ``read_clip`` returns a valid Clip or raises ClipError naming the file and a field,
nothing else and never hangs; ``msgvip extract --json`` over them exits 0 or 1 with strict JSON,
commits every good clip, lists every failed file with its field, and loses nothing committed by
an earlier run.

Store damage: a byte flipped, a chunk or commit record removed, a file truncated or extended.
Contract: ``msgvip cache verify`` exits 1 whenever a byte that changes results changed (chunks,
commit records, snapshots, meta.json) and exits 0 only if the store reads back identically; no
command shows a traceback; ``evaluate`` works identically or stops with one line; a rerun of
``msgvip extract`` repairs the store (a damaged meta.json instead makes extract fail in one line).

Profiles: ``ci`` (default; deterministic, about a minute for the file) and ``long``
(10,000 examples per property): ``MSGVIP_FUZZ_PROFILE=long pytest tests/test_fuzz.py
--hypothesis-show-statistics``; ``MSGVIP_FUZZ_LOG=FILE`` appends a line per passing example, to
count them when a long run is cut short. Profiles are applied to this file's tests only (not
loaded globally), so other test files keep hypothesis' defaults.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import save_clip, tiny_clip
from hypothesis import HealthCheck, Phase, assume, event, given, note, settings
from hypothesis import strategies as st
from numpy.lib import format as npy_format

from msgvip.cli import main
from msgvip.data.clip import Clip, ClipError, display_path, read_clip
from msgvip.store import FeatureStore, StoreError

# ---------------------------------------------------------------- settings
settings.register_profile(
    "ci",
    max_examples=100,  # scaled per test below, so the whole file runs in about a minute
    deadline=None,  # examples run whole extractions; the watchdog below catches hangs instead
    derandomize=True,  # the same examples on every CI run
    database=None,  # nothing written under the repository (.hypothesis/)
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    print_blob=True,
    phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.target, Phase.shrink],  # no "explain": minutes per failure here
)
settings.register_profile("long", settings.get_profile("ci"), max_examples=10_000, derandomize=False)
PROFILE_NAME = os.environ.get("MSGVIP_FUZZ_PROFILE", "ci")
PROFILE = settings.get_profile(PROFILE_NAME)


def fuzz_settings(ci_share: float) -> settings:
    """The profile, with ``ci_share`` of its examples under ``ci`` (each test's cost differs)."""
    if PROFILE_NAME != "ci":
        return settings(PROFILE)
    return settings(PROFILE, max_examples=max(5, int(PROFILE.max_examples * ci_share)))


# Bugs the fuzzers found have a regression test each at the end of the file.
PROGRESS_LOG = os.environ.get("MSGVIP_FUZZ_LOG")  # long runs: one line per passing example, to count them if the run is cut short

READ_TIMEOUT_S = 30  # one read_clip of a few kB; anything near this is a hang
COMMAND_TIMEOUT_S = 120  # one in-process CLI command on a handful of tiny clips


def passed(test: str) -> None:
    if PROGRESS_LOG:
        with open(PROGRESS_LOG, "a") as f:
            f.write(f"{test}\n")


class Hang(BaseException):
    """Raised by the watchdog; a BaseException so no `except Exception`/`except OSError` in msgvip swallows it."""


@contextlib.contextmanager
def watchdog(seconds: float, what: str):
    def expire(signum, frame):
        raise Hang(f"{what} still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@pytest.fixture(scope="module", autouse=True)
def private_cache_env(tmp_path_factory):
    """No example may touch the user's cache: $MSGVIP_CACHE points at a scratch root (every command here passes --cache-dir anyway)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MSGVIP_CACHE", str(tmp_path_factory.mktemp("default-cache")))
        mp.delenv("MSGVIP_DEBUG", raising=False)
        yield


@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> Path:
    """Parent of the per-example temporary folders (hypothesis runs many examples per test call)."""
    return tmp_path_factory.mktemp("fuzz")


# ---------------------------------------------------------------- generated values
FLOAT_SPECIALS = [np.nan, np.inf, -np.inf, -0.0, 1e300, -1e300, 3.5e38, -3.5e38, 2.0**60, 2.0**64, 1e-45, -1.0, 0.5, 1e6]
INT_SPECIALS = [-1, 0, 1, 2, 3, 255, 256, 2**15, 2**31 - 1, -(2**31), 2**32, 2**63 - 1, -(2**63), 2**64 - 1]
NUMERIC = ["?", "u1", "i1", "u2", "i2", "u4", "i4", "u8", "i8", "f2", "f4", "f8", "c8"]
OTHER = ["U3", "S3", "V4", "M8[s]", "m8[s]", "O", "struct"]


def make_dtype(code: str, order: str) -> np.dtype:
    if code == "struct":
        return np.dtype([("a", order + "i4"), ("b", order + "f4")])
    dtype = np.dtype(code)
    return dtype.newbyteorder(order) if dtype.itemsize > 1 and dtype.kind in "iufcUMm" else dtype


dtypes = st.builds(make_dtype, st.sampled_from(NUMERIC + OTHER), st.sampled_from(["<", ">"]))
shapes = st.lists(st.integers(0, 4), max_size=4).map(tuple)


def filled(dtype: np.dtype, shape: tuple[int, ...], seed: int) -> np.ndarray:
    """Random values of any dtype (specials mixed into floats), deterministic in ``seed``."""
    rng = np.random.default_rng(seed)
    size = int(np.prod(shape, dtype=np.int64))
    native = dtype.newbyteorder("=") if dtype.kind in "iufcUMm" else dtype
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if dtype.kind == "b":
            flat = rng.integers(0, 2, size).astype(bool)
        elif dtype.kind in "iu":
            info = np.iinfo(native)
            flat = rng.integers(info.min, info.max, size, dtype=native, endpoint=True)
        elif dtype.kind in "fc":
            flat = rng.standard_normal(size) * 10.0 ** rng.integers(-3, 40, size)
            specials = rng.random(size) < 0.2
            flat[specials] = rng.choice(FLOAT_SPECIALS, int(specials.sum()))
            flat = flat.astype(native)
        elif dtype.kind in "US":
            words = ["", "a", "03", "\u00e9t\u00e9", "\U0001f600", "x" * 3]
            flat = np.array([words[i] for i in rng.integers(0, len(words), size)], dtype=object)
            flat = flat.astype(native) if dtype.kind == "U" else np.array([w.encode() for w in flat], dtype=native)
        elif dtype.kind == "O":
            choices = [None, 1, "x", 2.5, (1, 2)]
            flat = np.empty(size, object)
            for i in range(size):
                flat[i] = choices[int(rng.integers(0, len(choices)))]
        else:  # void, structured, sub-array, datetime: their zero bytes are enough
            flat = np.zeros(size, native)
    return flat.astype(dtype).reshape(shape) if dtype.kind != "O" else flat.reshape(shape)


def random_arrays():
    return st.builds(filled, dtypes, shapes, st.integers(0, 2**32 - 1))


def _set_special(a: np.ndarray, index: int, value) -> np.ndarray:
    if a.size == 0 or a.dtype.kind not in "biufc":
        return a
    out = a.copy()
    out.reshape(-1)[index % a.size] = np.array(value).astype(a.dtype)
    return out


def apply_mutation(a: np.ndarray, op: tuple) -> np.ndarray:
    """One structural or value change of an array; a change that does not apply leaves it as is."""
    try:
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return _mutated(a, *op)
    except Exception:  # a cast numpy refuses (structured to bool, "x" to int, datetime to U3)
        return a


def _mutated(a: np.ndarray, kind: str, x, y) -> np.ndarray:
    nd = a.ndim
    if kind == "astype":
        return a.astype(x) if a.dtype.kind != "O" and x.kind != "O" else a
    if kind == "byteorder":
        return a.astype(a.dtype.newbyteorder()) if a.dtype.itemsize > 1 and a.dtype.kind in "iufcU" else a
    if kind == "special":
        return _set_special(a, x, y)
    if kind == "fortran":
        return np.asfortranarray(a)
    if kind == "newaxis":
        return np.expand_dims(a, x % (nd + 1))
    if kind == "drop_axis" and nd:
        return np.take(a, 0, axis=x % nd) if a.shape[x % nd] else a.sum(axis=x % nd).astype(a.dtype)
    if kind == "slice" and nd:
        return np.take(a, range(min(y, a.shape[x % nd])), axis=x % nd)
    if kind == "repeat" and nd:
        return np.repeat(a, 2, axis=x % nd)
    if kind == "swapaxes" and nd >= 2:
        return np.swapaxes(a, x % nd, y % nd)
    if kind == "scalar" and a.size:
        return a.reshape(-1)[:1].reshape(())
    return a


mutations = st.one_of(
    st.tuples(st.just("special"), st.integers(0, 10_000), st.sampled_from(FLOAT_SPECIALS + INT_SPECIALS)),
    st.tuples(st.just("astype"), dtypes, st.none()),
    st.tuples(st.sampled_from(["byteorder", "fortran", "scalar"]), st.none(), st.none()),
    st.tuples(st.sampled_from(["newaxis", "drop_axis", "repeat"]), st.integers(0, 4), st.none()),
    st.tuples(st.sampled_from(["slice", "swapaxes"]), st.integers(0, 4), st.integers(0, 4)),
)


@st.composite
def text_values(draw) -> np.ndarray:
    kind = draw(st.sampled_from(["unicode", "bytes", "code_units", "int", "uint64", "long", "other"]))
    if kind == "unicode":
        value = np.array(draw(st.text(max_size=12)))
    elif kind == "bytes":
        value = np.array(draw(st.binary(max_size=12)))
    elif kind == "code_units":  # what a U array may hold that is not text: surrogates, beyond U+10FFFF
        units = draw(st.lists(st.one_of(st.integers(0, 0x10FFFF), st.integers(0xD800, 0xDFFF), st.integers(0x110000, 2**32 - 1)), min_size=1, max_size=6))
        value = np.frombuffer(np.array(units, "<u4").tobytes(), f"<U{len(units)}").reshape(())
    elif kind == "int":
        value = np.array(draw(st.integers(-(2**63), 2**63 - 1)))
    elif kind == "uint64":
        value = np.array(draw(st.integers(0, 2**64 - 1)), np.uint64)
    elif kind == "long":
        value = np.array("x" * draw(st.integers(4090, 4100)))
    else:
        return draw(random_arrays())
    if draw(st.booleans()):
        value = apply_mutation(value, ("byteorder", None, None))
    return value


# ---------------------------------------------------------------- clip files
def base_clip(t: int, n: int, h: int, w: int, seed: int, channels_first: bool) -> dict[str, np.ndarray]:
    """A clip of the drawn size, boxes anywhere near the frame (some outside, some degenerate)."""
    rng = np.random.default_rng(seed)
    frames = rng.integers(0, 256, (t, h, w, 3), dtype=np.uint8)
    x1 = rng.uniform(-w / 2, w, (t, n))
    y1 = rng.uniform(-h / 2, h, (t, n))
    boxes = np.stack([x1, y1, x1 + rng.uniform(0, w, (t, n)), y1 + rng.uniform(0, h, (t, n))], -1).astype(np.float32)
    mask = rng.random((t, n)) < 0.7
    mask[0, 0] = True
    return {
        "frames": frames.transpose(0, 3, 1, 2).copy() if channels_first else frames,
        "bboxes": boxes,
        "person_mask": mask,
        "target_index": np.array(int(rng.integers(-1, n))),
        "target": np.array(0),
        "frame_mask": np.ones(t, bool),
        "person_ids": np.arange(n),
        "original_ids": np.arange(n) + 100,
        "video_id": np.array(f"video-{seed}"),
        "scene_category": np.array("03"),
    }


# first mode of each field is where shrinking heads: a plain valid field, or no optional field
B, M, R, X, T = "base", "mutated", "random", "missing", "text"
FIELD_MODES = {  # repeated modes weigh more; draws (and shrinking) start at the first
    "frames": [B, B, B, M, R, X],
    "bboxes": [B, B, B, M, M, R, X],
    "person_mask": [B, B, B, M, R, X],
    "target_index": [B, B, X, M, R],
    "target": [X, X, X, B, M, R],
    "frame_mask": [X, X, B, M, R],
    "person_ids": [X, X, B, R],
    "original_ids": [X, X, B, R],
    "video_id": [X, B, T, T, R],
    "scene_category": [B, X, T, T, R],
}
COMPRESSIONS = [zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA]


@dataclass
class Member:
    name: str  # the zip member name, usually "<field>.npy"
    array: np.ndarray | None  # None: ``raw`` is written instead of a .npy
    raw: bytes = b""
    compress_type: int = zipfile.ZIP_STORED

    def __repr__(self) -> str:  # numpy's repr raises SystemError on U arrays holding invalid code points
        what = f"raw={self.raw!r}" if self.array is None else f"{self.array.dtype.str} {self.array.shape} {self.array.tobytes()[:96]!r}"
        return f"Member({self.name!r}, {what}, compress_type={self.compress_type})"

    def _repr_pretty_(self, printer, cycle) -> None:  # what hypothesis prints failing examples with
        printer.text(repr(self))


@dataclass
class ClipFile:
    """What to put at a clip's path: an .npz of ``members`` (then ``damage`` applied to its bytes),
    or another kind of thing (``kind``)."""

    kind: str  # npz, bytes, npy, directory, dangling_symlink, symlink_to_folder, fifo
    members: list[Member] = field(default_factory=list)
    damage: list[tuple[str, int, int]] = field(default_factory=list)
    content: bytes = b""


def npy_bytes(array: np.ndarray) -> bytes:
    out = io.BytesIO()
    npy_format.write_array(out, array, allow_pickle=True)
    return out.getvalue()


def archive_bytes(members: list[Member]) -> bytes:
    """The zip as numpy writes it (force_zip64 entries, written in order); duplicates allowed."""
    out = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Duplicate name"
        with zipfile.ZipFile(out, "w", allowZip64=True) as archive:
            for m in members:
                info = zipfile.ZipInfo(m.name, date_time=(1980, 1, 1, 0, 0, 0))
                info.compress_type = m.compress_type
                with archive.open(info, "w", force_zip64=True) as stream:
                    stream.write(npy_bytes(m.array) if m.array is not None else m.raw)
    return out.getvalue()


def damaged(data: bytes, damage: list[tuple[str, int, int]]) -> bytes:
    raw = bytearray(data)
    for kind, at, value in damage:
        if not raw:
            break
        pos = at % len(raw) if kind != "from_end" else len(raw) - 1 - at % len(raw)
        if kind in ("flip", "from_end"):
            raw[pos] ^= value or 1
        elif kind == "set":
            raw[pos] = value % 256
        elif kind == "truncate":
            del raw[pos:]
        elif kind == "insert":
            raw[pos:pos] = bytes([value % 256]) * (1 + value % 7)
        elif kind == "delete":
            del raw[pos : pos + 1 + value % 16]
    return bytes(raw)


def write_clip_file(path: Path, spec: ClipFile) -> None:
    if spec.kind == "npz":
        path.write_bytes(damaged(archive_bytes(spec.members), spec.damage))
    elif spec.kind == "bytes":
        path.write_bytes(spec.content)
    elif spec.kind == "npy":
        path.write_bytes(npy_bytes(spec.members[0].array))
    elif spec.kind == "directory":
        path.mkdir()
        (path / "frames.npy").write_bytes(b"")
    elif spec.kind == "dangling_symlink":
        os.symlink(path.with_name(path.name + ".gone"), path)
    elif spec.kind == "symlink_to_folder":
        os.symlink(path.parent, path)
    elif spec.kind == "fifo":
        os.mkfifo(path)
    else:
        raise AssertionError(spec.kind)


damage_ops = st.tuples(
    st.sampled_from(["flip", "from_end", "set", "truncate", "insert", "delete"]), st.integers(0, 2**20), st.integers(0, 255)
)


@st.composite
def clip_files(draw) -> ClipFile:
    # no link to /dev/zero here: should that regress, reading it fills memory before a watchdog can
    # interrupt (test_a_clip_path_that_is_no_regular_file_is_refused_at_once tries it in a capped child)
    other = ["bytes", "npy", "directory", "dangling_symlink", "symlink_to_folder", "fifo"]
    kind = draw(st.sampled_from(["values"] * 3 + ["npz"] * 5 + other))
    if kind == "bytes":
        prefix = draw(st.sampled_from([b"", b"PK\x03\x04", b"\x93NUMPY", b"PK\x05\x06"]))
        return ClipFile(kind, content=prefix + draw(st.binary(max_size=64)))
    if kind == "npy":
        return ClipFile(kind, members=[Member("x.npy", draw(random_arrays()))])
    if kind == "values":
        return draw(value_clips())
    if kind != "npz":
        return ClipFile(kind)
    t, n = draw(st.integers(1, 5)), draw(st.integers(1, 4))
    h, w = draw(st.integers(1, 10)), draw(st.integers(1, 10))
    base = base_clip(t, n, h, w, draw(st.integers(0, 2**32 - 1)), channels_first=draw(st.booleans()))
    members = []
    for name, modes in FIELD_MODES.items():
        mode = draw(st.sampled_from(modes))
        if mode == "missing":
            continue
        if mode == "random":
            value = draw(random_arrays())
        elif mode == "text":
            value = draw(text_values())
        else:
            value = base[name]
            if mode == "mutated":
                for op in draw(st.lists(mutations, min_size=1, max_size=3)):
                    value = apply_mutation(value, op)
        members.append(Member(f"{name}.npy", value))
    extra_names = st.lists(st.text(min_size=1, max_size=12).filter(lambda s: "\0" not in s), min_size=1, max_size=2)
    for name in draw(st.one_of(st.just([]), extra_names)):  # extra fields
        members.append(Member(draw(st.sampled_from([f"{name}.npy", name])), draw(random_arrays())))
    if members and draw(st.integers(0, 3)) == 3:  # odd archives: a duplicate, a member that is no .npy, other compression
        at = draw(st.integers(0, len(members) - 1))
        how = draw(st.sampled_from(["duplicate", "raw", "no_suffix", "compression"]))
        m = members[at]
        if how == "duplicate":
            members.insert(draw(st.integers(0, len(members))), Member(m.name, draw(random_arrays())))
        elif how == "raw":
            members[at] = Member(m.name, None, draw(st.binary(max_size=40)))
        elif how == "no_suffix":
            members[at] = Member(m.name.removesuffix(".npy"), m.array)
        else:
            members[at] = Member(m.name, m.array, compress_type=draw(st.sampled_from(COMPRESSIONS)))
    compression = draw(st.sampled_from([zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED]))  # savez or savez_compressed
    for m in members:
        if m.compress_type == zipfile.ZIP_STORED:
            m.compress_type = compression
    order = draw(st.permutations(range(len(members))))
    damage = draw(st.one_of(st.just([]), st.lists(damage_ops, min_size=1, max_size=3)))  # half the archives intact
    return ClipFile("npz", [members[i] for i in order], damage)


BOX_DTYPES = ["<f4", ">f4", "<f8", ">f8", "<f2", ">f2", "<i4", ">i4", "<i8", ">i2", "u1", "<u4", ">u8"]
MASK_DTYPES = ["?", "u1", "i1", "<i4", ">i4", "<u8", ">i8"]


@st.composite
def value_clips(draw) -> ClipFile:
    """Well-formed archives whose values are odd: box coordinates NaN, inf, huge, negative, in
    any numeric dtype and byte order; masks as 0/1 integers; labels anywhere; any text. Most
    read as clips, so this is where the checks on a returned Clip bite."""
    t, n = draw(st.integers(1, 5)), draw(st.integers(1, 4))
    h, w = draw(st.integers(1, 10)), draw(st.integers(1, 10))
    fields = base_clip(t, n, h, w, draw(st.integers(0, 2**32 - 1)), channels_first=draw(st.booleans()) and h != 3)
    del fields["target"]
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        boxes = fields["bboxes"].astype(np.float64)
        for index, value in draw(st.lists(st.tuples(st.integers(0, 10_000), st.sampled_from(FLOAT_SPECIALS + [w, h, w + 1e-3, -1e-3])), max_size=6)):
            boxes.reshape(-1)[index % boxes.size] = value
        fields["bboxes"] = boxes.astype(draw(st.sampled_from(BOX_DTYPES)))
    fields["person_mask"] = fields["person_mask"].astype(draw(st.sampled_from(MASK_DTYPES)))
    fields["frame_mask"] = np.asarray(draw(st.lists(st.booleans(), min_size=t, max_size=t)))
    target = draw(st.integers(-2, n))
    fields["target_index"] = np.array(target, draw(st.sampled_from(["<i8", ">i4", "<i2"] + (["u1", ">u4"] if target >= 0 else []))))
    for name in ("video_id", "scene_category"):
        fields[name] = draw(text_values())
    compression = draw(st.sampled_from([zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED]))
    members = []
    for name, value in fields.items():
        if name in ("frames", "bboxes", "person_mask") or draw(st.integers(0, 5)):  # optional fields: 1 in 6 left out
            members.append(Member(f"{name}.npy", np.asfortranarray(value) if draw(st.booleans()) else value, compress_type=compression))
    return ClipFile("npz", members)


def _name_body(raw: bytes) -> bytes:
    return raw.replace(b"/", b"_").replace(b"\0", b"_")


file_names = st.builds(
    lambda prefix, body: prefix + _name_body(body)[:80],
    st.sampled_from([b"", b"-", b"--", b" ", b"-- ", b"-n "]),
    st.one_of(st.text(max_size=24).map(lambda s: s.encode("utf-8")), st.binary(max_size=24)),
)  # + a unique "~<i>.npz" tail where they are written


# ---------------------------------------------------------------- the clip contract
def check_read(path: Path | str) -> Clip | ClipError:
    """read_clip under the watchdog: a valid Clip or a ClipError naming the file and a field."""
    try:
        with watchdog(READ_TIMEOUT_S, f"read_clip({display_path(path)!r})"):
            clip = read_clip(path)
    except ClipError as err:
        assert isinstance(err.field, str) and err.field, err
        assert err.path == str(path)
        assert str(err) == f"{display_path(path)}: field '{err.field}': {err.message}"
        assert err.message and "\n" not in str(err), repr(str(err))
        str(err).encode("utf-8")  # printable: no surrogates left
        return err
    assert_valid_clip(clip, Path(path))
    return clip


def assert_valid_clip(clip: Clip, path: Path) -> None:
    t, h, w = clip.frames.shape[0], clip.frames.shape[1], clip.frames.shape[2]
    assert clip.frames.dtype == np.uint8 and clip.frames.ndim == 4 and clip.frames.shape[3] == 3 and clip.frames.flags.c_contiguous
    assert t >= 1 and h >= 1 and w >= 1
    n = clip.bboxes.shape[1]
    assert clip.bboxes.dtype == np.float32 and clip.bboxes.shape == (t, n, 4) and n >= 1
    assert clip.person_mask.dtype == np.bool_ and clip.person_mask.shape == (t, n) and clip.person_mask.any()
    assert np.isfinite(clip.bboxes).all()
    b, m = clip.bboxes, clip.person_mask
    assert (b[..., [0, 2]] >= 0).all() and (b[..., [0, 2]] <= w).all() and (b[..., [1, 3]] >= 0).all() and (b[..., [1, 3]] <= h).all()
    assert (b[~m] == 0).all()
    assert ((b[..., 2] > b[..., 0]) & (b[..., 3] > b[..., 1]))[m].all()  # present boxes have area
    v = clip.visible_fraction
    assert v.dtype == np.float32 and v.shape == (t, n) and np.isfinite(v).all()
    # >= 0, not > 0: a box a few denormals high keeps its (denormal) area, and its share of a
    # normal raw box underflows to 0 in float32 (harmless: geometry stays finite)
    assert ((v >= 0) & (v <= 1))[m].all() and (v[~m] == 0).all()
    assert isinstance(clip.target, int) and (clip.target == -1 or (0 <= clip.target < n and m[:, clip.target].any()))
    for text in (clip.scene, clip.video_id):
        assert isinstance(text, str)
        text.encode("utf-8")  # valid Unicode, as the docstring promises
    assert re.fullmatch(r"[0-9a-f]{32}", clip.content_hash)
    assert clip.clip_id == path.stem and all(isinstance(c, int) and c >= 0 for c in clip.repairs.values())


@fuzz_settings(3.0)
@given(spec=clip_files(), name=file_names)
def test_read_clip_returns_a_valid_clip_or_a_clip_error(scratch, spec, name):
    with tempfile.TemporaryDirectory(dir=scratch) as tmp:
        path = Path(tmp) / os.fsdecode(name + b"~0.npz")
        write_clip_file(path, spec)
        outcome = check_read(path)
        note(f"outcome: {outcome!r}"[:500])
        event(f"{spec.kind}: " + (f"ClipError field {outcome.field}" if isinstance(outcome, ClipError) else "valid clip"))
        if isinstance(outcome, Clip):  # reading is deterministic
            assert read_clip(path).content_hash == outcome.content_hash
    passed("read_clip")


# ---------------------------------------------------------------- extract over generated clips
def invoke(*args: str):
    with watchdog(COMMAND_TIMEOUT_S, f"msgvip {' '.join(args)}"):
        result = CliRunner().invoke(main, list(args))
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    for stream in (result.stdout, result.stderr):
        assert "Traceback" not in stream and "a bug in msgvip" not in stream, result.output
    return result


def strict_json(text: str):
    def refuse(constant):
        raise ValueError(f"non-standard JSON constant {constant}")

    return json.loads(text, parse_constant=refuse)


def one_line_error(result, *words: str) -> None:
    """A user error: exit 1, one `Error: ...` line on stderr, nothing on stdout."""
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    assert all(w in lines[0] for w in words), lines[0]


SPLITS = st.one_of(st.sampled_from(["train", "val"]), file_names.filter(lambda b: b not in (b"", b".", b"..")).map(os.fsdecode))


def write_batch(data: Path, batch: list[tuple[ClipFile, bytes, str]], tag: str) -> list[Path]:
    paths = []
    for i, (spec, name, split) in enumerate(batch):
        path = data / split / os.fsdecode(name + f"~{tag}{i}.npz".encode())
        path.parent.mkdir(parents=True, exist_ok=True)
        write_clip_file(path, spec)
        paths.append(path)
    return paths


def remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()


def extract_and_check(data: Path, cache: Path, files: list[Path]) -> tuple[dict, FeatureStore]:
    """Run `msgvip extract --json` over ``data``, whose clip files are ``files``, and check its
    outcome against read_clip's on each file."""
    expected = {p: check_read(p) for p in files}
    result = invoke("extract", str(data), "--json", "--num-workers", "0", "--cache-dir", str(cache))
    failed = {p: e for p, e in expected.items() if isinstance(e, ClipError)}
    assert result.exit_code == (1 if failed else 0), result.output
    summary = strict_json(result.stdout)
    assert summary["failed"] == len(failed) and summary["written"] + summary["cached"] == len(files) - len(failed)
    reported = {e["path"]: e for e in summary["errors"]}
    assert len(reported) == len(summary["errors"]) == len(failed)
    for path, err in failed.items():
        entry = reported[display_path(path)]
        assert entry["field"] == err.field and entry["message"] == err.message
    store = FeatureStore.open(summary["store"])
    entries = {e.key: e for e in store.snapshot(summary["dataset"]).entries}
    good = {p: c for p, c in expected.items() if isinstance(c, Clip)}
    assert set(entries) == {f"{p.parent.name}/{p.stem}" for p in good}
    for path, clip in good.items():
        entry = entries[f"{path.parent.name}/{path.stem}"]
        assert (entry.content_hash, entry.split, entry.target, entry.scene) == (clip.content_hash, path.parent.name, clip.target, clip.scene)
        assert entry.content_hash in store.clips
    assert store.verify() == []
    event(f"generated files: {len(files) - len(failed) - 2} valid, {len(failed)} failed")
    return summary, store


@fuzz_settings(0.4)
@given(
    first=st.lists(st.tuples(clip_files(), file_names, SPLITS), min_size=1, max_size=4),
    second=st.lists(st.tuples(clip_files(), file_names, SPLITS), min_size=1, max_size=4),
)
def test_extract_commits_good_clips_and_lists_every_failure(scratch, first, second):
    with tempfile.TemporaryDirectory(dir=scratch) as tmp:
        data, cache = Path(tmp) / "data", Path(tmp) / "cache"
        good = [save_clip(data / "train" / f"good_{i}.npz", tiny_clip(seed=i)) for i in range(2)]
        batch = write_batch(data, first, "a")
        summary, store = extract_and_check(data, cache, good + batch)
        committed = dict(store.clips)

        for path in batch:  # the next run sees other bad files beside the same good ones
            remove(path)
        summary, store = extract_and_check(data, cache, good + write_batch(data, second, "b"))
        assert set(committed) <= set(store.clips)  # nothing committed before is lost
        for digest, record in committed.items():
            assert store.clips[digest] == record
        store.read_clips(list(committed.values()))  # and it all still reads, checksums passing
    passed("extract")


# ---------------------------------------------------------------- store damage
SMALL_TOML = "[model]\nhidden = 8\ngat_heads = 1\ntemporal_heads = 1\nevent_heads = 1\npool_heads = 1\nrelation_heads = 1\nff_mult = 1\n"


@dataclass(repr=False)
class Pristine:
    root: Path
    cache: Path  # the cache root; copied whole for each example
    fp: str
    datasets: list[Path]  # extracted in this order
    run: Path
    evaluation: dict
    readback: dict
    files: list[str]  # files of the store, relative to it

    def __repr__(self) -> str:  # hypothesis prints the fixture with each failure: keep it short
        return f"Pristine({self.cache / self.fp})"


def readback(store_dir: Path) -> dict | str:
    """Everything the store gives a reader (config, snapshots, every clip's rows), or the
    StoreError that stopped reading; any other exception is a bug and fails the test."""
    try:
        store = FeatureStore.open(store_dir)
        out = {"config": store.config, "specs": store.specs, "datasets": {}}
        for name in store.snapshot_names():
            snapshot = store.snapshot(name)
            entries = [(e.key, e.content_hash, e.split, e.target, e.scene, e.source) for e in snapshot.entries]
            rows = {}
            for e in snapshot.entries:
                if e.content_hash not in store.clips:
                    return f"dataset {name}: clip {e.key} not committed"
                dense = store.read_clip(e.content_hash)
                rows[e.key] = {k: (v.dtype.str, v.shape, v.tobytes()) for k, v in dense.items()}
            out["datasets"][name] = (snapshot.data, snapshot.failed, entries, rows)
        return out
    except StoreError as err:
        return f"StoreError: {err}"


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Pristine:
    """A small geometry store: two segments (two extract runs of `data`), a second dataset `sub`
    sharing content, and a tiny trained run to evaluate."""
    root = tmp_path_factory.mktemp("pristine")
    data, sub, cache = root / "data", root / "sub", root / "cache"
    for i in range(6):
        if i == 3:  # the second half goes to a second run, so a second segment and commit record
            invoke("extract", str(data), "--json", "--num-workers", "0", "--cache-dir", str(cache))
        clip = save_clip(data / ("train" if i % 3 else "val") / f"clip_{i}.npz", tiny_clip(seed=i, slots=5, people=2 + i % 3))
        if i in (1, 3):  # `sub` shares content with `data`: nothing new to extract
            (sub / "train").mkdir(parents=True, exist_ok=True)
            shutil.copy(clip, sub / "train" / clip.name)
    fp = strict_json(invoke("extract", str(data), "--json", "--num-workers", "0", "--cache-dir", str(cache)).stdout)["fingerprint"]
    assert invoke("extract", str(sub), "--json", "--num-workers", "0", "--cache-dir", str(cache)).exit_code == 0
    (root / "small.toml").write_text(SMALL_TOML)
    trained = invoke("train", "--store", fp, "--cache-dir", str(cache), "--dataset", "data", "--out", str(root / "run"), "--epochs", "1",
                     "--config", str(root / "small.toml"), "--device", "cpu")  # fmt: skip
    assert trained.exit_code == 0, trained.output
    evaluation = invoke("evaluate", str(root / "run"), "--cache-dir", str(cache), "--split", "val", "--json")
    assert evaluation.exit_code == 0, evaluation.output
    store_dir = cache / fp
    files = sorted(str(p.relative_to(store_dir)) for p in store_dir.rglob("*") if p.is_file())
    assert len(list((store_dir / "commits").iterdir())) == 2 and FeatureStore.open(store_dir).verify() == []
    state = readback(store_dir)
    assert isinstance(state, dict) and set(state["datasets"]) == {"data", "sub"}
    return Pristine(root, cache, fp, [data, sub], root / "run", strict_json(evaluation.stdout), state, files)


GROUP_DOCUMENTS = ("zarr.json", "features.zarr/zarr.json", "features.zarr/segments/zarr.json")  # parents of every new segment
CHUNK = re.compile(r"features\.zarr/segments/[^/]+/[^/]+/c/.+")
RESULT_FILES = re.compile(r"(features\.zarr/segments/[^/]+/[^/]+/c/.+|commits/[^/]+\.json|datasets/[^/]+\.json|meta\.json)")
# what verify may not miss; the rest (zarr.json files, last_used) may change nothing a reader sees


def apply_store_damage(store_dir: Path, damage: list[tuple[str, str, int, int]]) -> list[str]:
    """Apply each (kind, file, position, value); returns the files whose bytes now differ (two
    flips of one byte cancel out) or that are gone."""
    before = {}
    for kind, name, at, value in damage:
        path = store_dir / name
        if not path.is_file():
            continue  # removed by an earlier step
        raw = path.read_bytes()
        before.setdefault(name, raw)
        if kind == "remove":
            path.unlink()
        elif kind == "flip" and raw:
            path.write_bytes(raw[: at % len(raw)] + bytes([raw[at % len(raw)] ^ value]) + raw[at % len(raw) + 1 :])
        elif kind == "truncate" and raw:
            path.write_bytes(raw[: at % len(raw)])
        elif kind == "append":
            path.write_bytes(raw + bytes([value]) * (1 + at % 4))
    return sorted(n for n, raw in before.items() if not (store_dir / n).is_file() or (store_dir / n).read_bytes() != raw)


@st.composite
def store_damage(draw, files: list[str]) -> list[tuple[str, str, int, int]]:
    results = [f for f in files if RESULT_FILES.fullmatch(f)]
    removable = [f for f in files if CHUNK.fullmatch(f) or f.startswith("commits/")]
    ops = []
    for kind in draw(st.lists(st.sampled_from(["flip", "truncate", "remove", "append"]), min_size=1, max_size=3)):
        # half the picks among the files that hold results; removing a snapshot deletes a dataset, which is no damage
        name = draw(st.sampled_from(removable) if kind == "remove" else st.one_of(st.sampled_from(results), st.sampled_from(files)))
        ops.append((kind, name, draw(st.integers(0, 2**16)), draw(st.integers(1, 255))))
    return ops


def evaluate_copy(p: Pristine, cache: Path):
    result = invoke("evaluate", str(p.run), "--cache-dir", str(cache), "--split", "val", "--json")
    if result.exit_code == 0:
        return strict_json(result.stdout)
    one_line_error(result)
    return None


def verify_copy(p: Pristine, cache: Path) -> tuple[int, list]:
    result = invoke("cache", "verify", p.fp, "--json", "--cache-dir", str(cache))
    assert result.exit_code in (0, 1), result.output
    if not result.stdout.strip():  # a store that cannot even be opened: a one-line error
        one_line_error(result)
        return 1, [result.stderr.strip()]
    report = strict_json(result.stdout)
    assert report["ok"] == (result.exit_code == 0) == (report["bad"] == [])
    return result.exit_code, report["bad"]


@fuzz_settings(0.4)
@given(data=st.data())
def test_store_damage_is_reported_and_a_rerun_repairs_it(scratch, pristine, data):
    p = pristine
    damage = data.draw(store_damage(p.files), label="damage")
    with tempfile.TemporaryDirectory(dir=scratch) as tmp:
        cache = Path(tmp) / "cache"
        shutil.copytree(p.cache, cache, symlinks=True)
        store_dir = cache / p.fp
        changed = apply_store_damage(store_dir, damage)
        assume(changed)
        note(f"changed: {changed}")
        meta_damaged = "meta.json" in changed

        code, bad = verify_copy(p, cache)
        note(f"verify: {code} {bad}")
        for name in changed:
            event(f"{re.sub(r'[0-9a-f]{16}-[0-9a-f]{8}', '<segment>', name)}: verify exit {code}")
        if any(RESULT_FILES.fullmatch(name) for name in changed):
            assert code == 1, f"verify passed a store with {changed}"
        state = readback(store_dir)
        if code == 0:
            assert state == p.readback, f"verify passed, but the store reads back differently after {changed}"
        evaluation = evaluate_copy(p, cache)
        if code == 0:
            assert evaluation == p.evaluation
        elif evaluation is not None:  # worked despite the damage: then exactly as before
            assert evaluation == p.evaluation
        for args in (["cache", "ls", "--json"], ["cache", "info", p.fp, "--json"]):
            listed = invoke(*args, "--cache-dir", str(cache))
            if listed.exit_code == 0:
                strict_json(listed.stdout)
            else:
                one_line_error(listed)

        # repair: extract the same data again (and compact away damaged commit records)
        for dataset in p.datasets:
            result = invoke("extract", str(dataset), "--json", "--num-workers", "0", "--cache-dir", str(cache))
            if meta_damaged:
                one_line_error(result, "meta.json")
                passed("store_damage")
                return
            assert result.exit_code == 0, result.output
            strict_json(result.stdout)
        code, bad = verify_copy(p, cache)
        if code and all("commit record damaged" in b["problem"] for b in bad):
            assert invoke("cache", "compact", p.fp, "--json", "--cache-dir", str(cache)).exit_code == 0
            code, bad = verify_copy(p, cache)
        assert code == 0, f"after {changed} and a rerun of extract, verify still finds {bad}"
        assert readback(store_dir) == p.readback
        assert evaluate_copy(p, cache) == p.evaluation
    passed("store_damage")


# ---------------------------------------------------------------- what the fuzzers found
# Each bug the fuzzers found, with the test that reproduced it before it was fixed.


def test_a_rerun_of_extract_rewrites_a_damaged_snapshot(tmp_path):
    data, cache = tmp_path / "data", tmp_path / "cache"
    save_clip(data / "train" / "clip.npz", tiny_clip())
    fp = strict_json(invoke("extract", str(data), "--json", "--num-workers", "0", "--cache-dir", str(cache)).stdout)["fingerprint"]
    snapshot = cache / fp / "datasets" / "data.json"
    snapshot.write_bytes(b"x" + snapshot.read_bytes()[1:])
    assert invoke("cache", "verify", fp, "--cache-dir", str(cache)).exit_code == 1
    rerun = invoke("extract", str(data), "--json", "--num-workers", "0", "--cache-dir", str(cache))
    assert rerun.exit_code == 0, rerun.stderr
    assert invoke("cache", "verify", fp, "--cache-dir", str(cache)).exit_code == 0


READ_IN_A_SUBPROCESS = """
import resource, sys
resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))  # /dev/zero is read until memory runs out
from msgvip.data.clip import ClipError, read_clip
try:
    read_clip(sys.argv[1])
except ClipError as err:
    print("ClipError", err.field)
"""


@pytest.mark.parametrize("kind", ["fifo", "link_to_dev_zero"])
def test_a_clip_path_that_is_no_regular_file_is_refused_at_once(tmp_path, kind):
    path = tmp_path / "clip.npz"
    if kind == "fifo":
        os.mkfifo(path)
    else:
        os.symlink("/dev/zero", path)
    try:  # in a child with a memory cap and a timeout: in this process the bug would hang the run or exhaust memory
        result = subprocess.run([sys.executable, "-c", READ_IN_A_SUBPROCESS, str(path)], capture_output=True, text=True, timeout=5)
    except subprocess.TimeoutExpired:
        pytest.fail(f"read_clip of a {kind} still ran after 5 s")
    assert result.returncode == 0 and result.stdout.strip() == "ClipError <file>", result.stderr[-500:]


@pytest.mark.parametrize("group", ["../zarr.json", *GROUP_DOCUMENTS])
@pytest.mark.parametrize("damage", [b"{\xff", b"[]", b'{"zarr_format":3,"node_type":"array"}'])
def test_a_damaged_zarr_group_document_does_not_break_later_extracts(tmp_path, group, damage):
    data, cache = tmp_path / "data", tmp_path / "cache"
    save_clip(data / "train" / "a.npz", tiny_clip(seed=0))
    fp = strict_json(invoke("extract", str(data), "--json", "--num-workers", "0", "--cache-dir", str(cache)).stdout)["fingerprint"]
    (cache / fp / group).write_bytes(damage)
    assert invoke("cache", "verify", fp, "--cache-dir", str(cache)).exit_code == 0  # nothing a reader sees changed
    save_clip(data / "train" / "b.npz", tiny_clip(seed=1))  # a new clip: a new segment
    result = invoke("extract", str(data), "--json", "--num-workers", "0", "--cache-dir", str(cache))  # was: "unexpected UnicodeDecodeError ... a bug in msgvip"
    assert result.exit_code == 0
    assert invoke("cache", "verify", fp, "--cache-dir", str(cache)).exit_code == 0


def test_video_id_from_a_name_that_is_not_utf8_is_valid_unicode(tmp_path):
    path = save_clip(tmp_path / os.fsdecode(b"caf\xe9.npz"), {k: v for k, v in tiny_clip().items() if k != "video_id"})
    read_clip(path).video_id.encode("utf-8")


def test_train_and_predict_over_clips_whose_names_are_not_utf8(tmp_path):
    data, cache = tmp_path / "data", tmp_path / "cache"
    for i in range(4):
        save_clip(data / ("train" if i < 3 else "val") / os.fsdecode(b"caf\xe9_%d.npz" % i), tiny_clip(seed=i))
    fp = strict_json(invoke("extract", str(data), "--json", "--num-workers", "0", "--cache-dir", str(cache)).stdout)["fingerprint"]
    (tmp_path / "small.toml").write_text(SMALL_TOML)
    run = tmp_path / "run"
    trained = invoke("train", "--store", fp, "--cache-dir", str(cache), "--out", str(run), "--epochs", "1", "--config", str(tmp_path / "small.toml"),
                     "--device", "cpu")  # fmt: skip
    assert trained.exit_code == 0, trained.stderr
    predicted = invoke("predict", str(run), fp, "--cache-dir", str(cache), "--out", str(tmp_path / "ranking.csv"))
    assert predicted.exit_code == 0, predicted.stderr
