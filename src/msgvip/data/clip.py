"""Reading and validating one MSG_VIP clip (DESIGN.md section 2).

A clip is one ``.npz`` holding ``frames`` (T, H, W, 3) uint8 (or (T, 3, H, W)), ``bboxes``
(T, N, 4) x1 y1 x2 y2 pixels, ``person_mask`` (T, N) bool, ``target_index`` (or ``target``) int
(-1 = unlabeled) and optionally ``frame_mask`` (T,), ``person_ids``, ``original_ids``, ``video_id``,
``scene_category``. Nothing is unpickled. Every problem raises :class:`ClipError` naming the
file and the field; two are repaired instead and counted: boxes reaching outside the frame are
clipped to it, and boxes with no area left after clipping are treated as absent.

Clips are untrusted input, so the reader looks before it decodes:

- **Budgets before bytes.** The ``.npy`` header of every field it will decode is read first (a
  few kB at most), and the declared dtype and shape are checked against the format (T at most
  :data:`MAX_FRAMES`, N at most :data:`MAX_PERSONS`, 4 coordinates, 3 channels, scalar fields of
  one value, text of at most :data:`MAX_TEXT_LENGTH` characters) and against ``max_clip_bytes``
  (default :data:`DEFAULT_MAX_CLIP_BYTES`), the sum of the declared decoded sizes. Working copies
  (channel-first frames transposed, boxes cast to float32) can add about one more frames-size.
  Frames whose axes 1 and 3 both have length 3 are refused: channel-first and channel-last cannot
  be told apart, and the reader does not guess.
- **No bombs.** The zip directory may take at most :data:`MAX_DIRECTORY_BYTES`. Only stored and
  deflated members are read (what numpy writes); a member whose zip entry declares a size other
  than its ``.npy`` header implies is refused before anything is decompressed, and a member is
  never read past that size.
- **Coordinates** are checked for NaN and infinity in their stored dtype, then clipped to the
  frame before the float32 cast, so a finite 1e300 is an out-of-frame box, not an overflow.
- **Text fields** (``video_id``, ``scene_category``) are one numpy unicode (``U``) or byte-string
  (``S``) value, or an integer (written in decimal). Byte strings are decoded as UTF-8; bytes that
  are not UTF-8, and code points a unicode array holds that are not text (surrogates, beyond
  U+10FFFF), are kept as backslash escapes such as ``\\xff``, so a text field is always valid
  Unicode. Trailing NUL padding is dropped, as numpy does.
- **File names** need not be UTF-8: paths are opened as given (surrogate escapes included), and
  messages show them through :func:`display_path`, which writes undecodable bytes as ``\\xNN``.
"""

from __future__ import annotations

import io
import math
import os
import re
import stat
import tokenize
import zipfile
import zlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from numpy.lib import format as npy_format

from ..store.fingerprint import content_hash

HASHED_FIELDS = ("frames", "bboxes", "person_mask", "frame_mask")
TARGET_FIELDS = ("target_index", "target")  # the first one present is the file's label
TEXT_FIELDS = ("scene_category", "video_id")

DEFAULT_MAX_CLIP_BYTES = 4 * 2**30  # decoded bytes of all fields read, as their headers declare
MAX_FRAMES = 100_000  # T: over an hour at 25 fps
MAX_PERSONS = 1024  # N: person slots per frame
MAX_TEXT_LENGTH = 4096  # characters (bytes for S) of a text field
MAX_HEADER_BYTES = 10_000  # numpy's own limit on a .npy header it will parse
MAX_DIRECTORY_BYTES = 2**20  # zip directory: ~1 kB for numpy's few fields; zipfile holds ~10x in objects
_PREFIX_BYTES = 12  # magic (6) + version (2) + header length (2 in v1.0, 4 in v2.0)
_READ_CHUNK = 4 * 2**20  # bytes per read, so a member is never held twice in full
_NPY_MAGIC = b"\x93NUMPY"
_ZIP_MAGIC = b"PK\x03\x04"
_HEADER_VERSIONS = {(1, 0): npy_format.read_array_header_1_0, (2, 0): npy_format.read_array_header_2_0}
_DTYPE_KINDS = "biufUS"  # bool, integers, floats, text; everything else is refused at the header
_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
# what zipfile raises for a damaged archive: NotImplementedError for features it lacks (a forged
# version or flag), ValueError for undecodable names, OSError for seeks the damage points outside
_ZIP_ERRORS = (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError, NotImplementedError)
_BOX_LIMIT = 2.0**60  # |coordinate| kept below this before the float32 cast: no overflow, no inf areas


def display_path(path: str | bytes | os.PathLike) -> str:
    """``path`` as printable one-line text: undecodable bytes (surrogate escapes) as ``\\xNN``,
    control characters as ``\\xNN`` / ``\\uNNNN``; everything else as is.

    >>> display_path(os.fsdecode(b"clips/caf\\xe9\\n.npz"))
    'clips/caf\\\\xe9\\\\x0a.npz'
    """
    return _UNPRINTABLE.sub(_escape, os.fsdecode(path))


def _escape(match: re.Match) -> str:
    code = ord(match.group())
    if 0xDC80 <= code <= 0xDCFF:  # os.fsdecode's escape of the byte code - 0xDC00
        return f"\\x{code - 0xDC00:02x}"
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


class ClipError(Exception):
    """A clip that cannot be used; ``str()`` reads ``<file>: field '<field>': <problem>``.

    ``path`` is the path as given (it may hold surrogate escapes); ``path_str`` is its printable
    form, the one the message uses.
    """

    def __init__(self, path: Path | str, field: str, message: str):
        self.path, self.field, self.message = str(path), field, message
        super().__init__(f"{self.path_str}: field '{field}': {message}")

    @property
    def path_str(self) -> str:
        return display_path(self.path)

    def __reduce__(self):  # decode workers send errors back to the main process
        return ClipError, (self.path, self.field, self.message)


@dataclass
class Clip:
    """A validated clip, boxes clipped to the frame and degenerate boxes masked out."""

    path: Path
    clip_id: str
    frames: np.ndarray  # (T, H, W, 3) uint8
    bboxes: np.ndarray  # (T, N, 4) float32 pixels, clipped; zeros where absent
    person_mask: np.ndarray  # (T, N) bool
    visible_fraction: np.ndarray  # (T, N) float32: share of the raw box inside the frame
    target: int  # -1 = unlabeled
    scene: str
    video_id: str
    content_hash: str
    repairs: dict[str, int] = field(default_factory=dict)

    @property
    def num_frames(self) -> int:
        return self.bboxes.shape[0]

    @property
    def num_slots(self) -> int:
        return self.bboxes.shape[1]

    @property
    def height(self) -> int:
        return self.frames.shape[1]

    @property
    def width(self) -> int:
        return self.frames.shape[2]


@dataclass(frozen=True)
class _Member:
    """One field's ``.npy`` member, as its header declares it; nothing decoded yet."""

    name: str  # field name (the member is "<name>.npy")
    info: zipfile.ZipInfo
    shape: tuple[int, ...]
    dtype: np.dtype
    fortran_order: bool
    data_offset: int  # bytes of magic + header before the array data

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


def read_clip(path: Path | str, clip_id: str | None = None, target: int | None = None, *, max_clip_bytes: int = DEFAULT_MAX_CLIP_BYTES) -> Clip:
    """Load, validate and repair one clip; ``target`` (from a manifest) overrides the file's.

    ``max_clip_bytes`` (default :data:`DEFAULT_MAX_CLIP_BYTES`) caps the decoded size of the
    fields read, checked against their headers before any is decoded.
    """
    path = Path(path)
    with _open_archive(path) as archive:
        members = _headers(path, archive, read_target=target is None)
        _check_sizes(path, members, max_clip_bytes)
        arrays = {name: _decode(path, archive, member) for name, member in members.items()}
    digest = content_hash({name: arrays[name] for name in HASHED_FIELDS if name in arrays})

    frames = arrays["frames"]
    if frames.shape[-1] != 3:
        frames = frames.transpose(0, 2, 3, 1)  # (T, 3, H, W) -> (T, H, W, 3)
    frames = np.ascontiguousarray(frames)
    n = arrays["bboxes"].shape[1]
    mask = _mask(path, "person_mask", arrays["person_mask"])
    if "frame_mask" in arrays:
        mask &= _mask(path, "frame_mask", arrays["frame_mask"])[:, None]

    bboxes = arrays["bboxes"]
    bad = mask & ~np.isfinite(bboxes).all(-1)  # on the stored dtype: 1e300 is finite, float32(1e300) is not
    if bad.any():
        f, s = np.argwhere(bad)[0]
        raise ClipError(path, "bboxes", f"non-finite coordinates on a present person (frame {f}, slot {s}: {bboxes[f, s].tolist()})")
    bboxes = np.where(mask[..., None], bboxes, 0).astype(np.float64)  # exact for float32 and int32 input
    bboxes = np.clip(bboxes, -_BOX_LIMIT, _BOX_LIMIT, out=bboxes).astype(np.float32)
    bboxes, mask, visible, repairs = _clip_boxes(bboxes, mask, frames.shape[1], frames.shape[2])
    if not mask.any():
        raise ClipError(path, "person_mask", "no valid person in any frame (after dropping zero-area boxes)")

    if target is None:
        name = next((f for f in TARGET_FIELDS if f in arrays), None)
        label = -1 if name is None else _check_target(path, name, int(arrays[name].reshape(())), n, mask)
    else:
        label = _check_target(path, "target", target, n, mask)
    return Clip(
        path=path,
        clip_id=clip_id or path.stem,
        frames=frames,
        bboxes=bboxes,
        person_mask=mask,
        visible_fraction=visible,
        target=label,
        scene=_text(arrays.get("scene_category")),
        video_id=_text(arrays.get("video_id")) or display_path(path.stem),  # valid Unicode, like a text field
        content_hash=digest,
        repairs=repairs,
    )


def _open_archive(path: Path) -> zipfile.ZipFile:
    try:
        # Not open(): a FIFO would block it for ever, and a device would be read without end.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            os.close(fd)
            if stat.S_ISDIR(mode):
                raise IsADirectoryError(path)  # reported below, with the other open errors
            raise ClipError(path, "<file>", "not a regular file (a FIFO, device or socket), expected an .npz file")
        with os.fdopen(fd, "rb") as f:
            start = f.read(len(_ZIP_MAGIC))
            end = zipfile._EndRecData(f)  # the directory record zipfile will trust (private, stable since Python 2)
    except FileNotFoundError:
        raise ClipError(path, "<file>", "not found") from None
    except IsADirectoryError:
        raise ClipError(path, "<file>", "is a folder, expected an .npz file") from None
    except OSError as err:
        raise ClipError(path, "<file>", f"cannot be read ({type(err).__name__}: {err.strerror or err})") from None
    if start == _NPY_MAGIC[: len(_ZIP_MAGIC)]:
        raise ClipError(path, "<file>", "holds a single .npy array, expected an .npz archive of named fields")
    if start != _ZIP_MAGIC:
        raise ClipError(path, "<file>", "not an .npz (zip) file" + (" (it is empty)" if not start else f" (it starts with {start!r})"))
    if end is None:
        raise ClipError(path, "<file>", "damaged .npz (zip) archive, truncated or corrupt (no end-of-archive record)")
    if end[zipfile._ECD_SIZE] > MAX_DIRECTORY_BYTES:
        raise ClipError(path, "<file>", f"its zip directory is {_size_str(end[zipfile._ECD_SIZE])}, over the {_size_str(MAX_DIRECTORY_BYTES)} an .npz clip may use")
    try:
        return zipfile.ZipFile(path)
    except _ZIP_ERRORS as err:
        raise ClipError(path, "<file>", f"damaged .npz (zip) archive, truncated or corrupt ({_one_line(err)})") from None


def _headers(path: Path, archive: zipfile.ZipFile, read_target: bool) -> dict[str, _Member]:
    """The headers of every field the reader uses, checked against the format; reads a few kB."""
    infos = archive.infolist()
    names = [i.filename[:-4] if i.filename.endswith(".npy") else i.filename for i in infos]
    wanted = [*HASHED_FIELDS, *(TARGET_FIELDS if read_target else ()), *TEXT_FIELDS]
    counts = Counter(names)
    for name in wanted:
        if counts[name] > 1:
            raise ClipError(path, name, f"appears {counts[name]} times in the archive")
    by_name = {n: i for n, i in zip(names, infos) if n in wanted and i.filename.endswith(".npy")}
    for name in ("frames", "bboxes", "person_mask"):
        if name not in by_name:
            shown = sorted(counts)[:20]
            more = f" and {len(counts) - 20} more" if len(counts) > 20 else ""
            raise ClipError(path, name, f"missing (the file has {shown}{more})")
    if read_target:  # only the first label field present is read
        for extra in [f for f in TARGET_FIELDS if f in by_name][1:]:
            del by_name[extra]
    members = {name: _header(path, archive, name, by_name[name]) for name in wanted if name in by_name}

    frames = members["frames"]
    if frames.dtype != np.uint8:
        raise ClipError(path, "frames", f"dtype {frames.dtype}, expected uint8 RGB")
    if len(frames.shape) != 4 or 3 not in (frames.shape[-1], frames.shape[1]):
        raise ClipError(path, "frames", f"shape {frames.shape}, expected (T, H, W, 3) or (T, 3, H, W)")
    if frames.shape[1] == 3 and frames.shape[3] == 3:
        raise ClipError(
            path, "frames",
            f"shape {frames.shape} is ambiguous: axes 1 and 3 both have length 3, so (T, H, W, 3) and (T, 3, H, W) "
            "cannot be told apart; re-save them channel-last, (T, H, W, 3) (frames 3 pixels high are not supported)",
        )  # fmt: skip
    if 0 in frames.shape:
        raise ClipError(path, "frames", f"shape {frames.shape} has an empty dimension")
    t = frames.shape[0]
    if t > MAX_FRAMES:
        raise ClipError(path, "frames", f"{t} frames, more than the {MAX_FRAMES} a clip may hold")

    bboxes = members["bboxes"]
    if bboxes.dtype.kind not in "fiu":
        raise ClipError(path, "bboxes", f"dtype {bboxes.dtype}, expected float pixel coordinates")
    if len(bboxes.shape) != 3 or bboxes.shape[0] != t or bboxes.shape[2] != 4:
        raise ClipError(path, "bboxes", f"shape {bboxes.shape}, expected (T={t}, N, 4) to match frames {frames.shape}")
    n = bboxes.shape[1]
    if n == 0:
        raise ClipError(path, "bboxes", "has no person slots (N = 0)")
    if n > MAX_PERSONS:
        raise ClipError(path, "bboxes", f"{n} person slots, more than the {MAX_PERSONS} a clip may hold")

    for name, shape in (("person_mask", (t, n)), ("frame_mask", (t,))):
        if name not in members:
            continue
        if members[name].shape != shape:
            raise ClipError(path, name, f"shape {members[name].shape}, expected {shape} (T, N as in frames and bboxes)")
        if members[name].dtype.kind not in "biu":
            raise ClipError(path, name, f"dtype {members[name].dtype}, expected bool (or integers 0/1)")
    for name in [f for f in TARGET_FIELDS if f in members]:
        if math.prod(members[name].shape) != 1 or members[name].dtype.kind not in "iu":
            raise ClipError(path, name, f"expected one integer, got dtype {members[name].dtype} shape {members[name].shape}")
    for name in [f for f in TEXT_FIELDS if f in members]:
        member = members[name]
        if math.prod(member.shape) != 1 or member.dtype.kind not in "USiu":
            raise ClipError(path, name, f"expected one string or integer, got dtype {member.dtype} shape {member.shape}")
        length = member.dtype.itemsize // (4 if member.dtype.kind == "U" else 1)
        if member.dtype.kind in "US" and length > MAX_TEXT_LENGTH:
            raise ClipError(path, name, f"text of up to {length} characters, longer than the {MAX_TEXT_LENGTH} allowed")
    return members


def _header(path: Path, archive: zipfile.ZipFile, name: str, info: zipfile.ZipInfo) -> _Member:
    """Parse one member's ``.npy`` header from its first bytes; refuse what needs pickle or is no plain array."""
    if info.flag_bits & 0x1:
        raise ClipError(path, name, "is encrypted")
    if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        raise ClipError(path, name, f"uses zip compression method {info.compress_type}; numpy writes only stored (0) or deflated (8) members")
    try:
        with archive.open(info) as stream:
            prefix = stream.read(MAX_HEADER_BYTES + _PREFIX_BYTES)
    except _ZIP_ERRORS as err:
        raise ClipError(path, name, f"corrupt data in the archive ({type(err).__name__}: {_one_line(err)})") from None
    if not prefix.startswith(_NPY_MAGIC) or len(prefix) < _PREFIX_BYTES:
        raise ClipError(path, name, "is not a .npy array (no numpy header)")
    version = (prefix[6], prefix[7])
    if version not in _HEADER_VERSIONS:
        raise ClipError(path, name, f".npy format version {version[0]}.{version[1]}, expected 1.0 or 2.0")
    length_bytes = 2 if version == (1, 0) else 4
    header_length = int.from_bytes(prefix[8 : 8 + length_bytes], "little")
    if header_length > MAX_HEADER_BYTES:  # numpy would read it all before checking
        raise ClipError(path, name, f".npy header of {header_length} bytes, over the {MAX_HEADER_BYTES} limit")
    stream = io.BytesIO(prefix)
    stream.seek(8)
    try:
        shape, fortran_order, dtype = _HEADER_VERSIONS[version](stream)
    except (ValueError, TypeError, tokenize.TokenError) as err:  # TokenError: numpy's fallback parser
        raise ClipError(path, name, f"unreadable .npy header ({_one_line(err)})") from None
    if dtype.hasobject:
        raise ClipError(path, name, "is an object array that needs pickle; save it as a numeric or string array")
    if dtype.kind not in _DTYPE_KINDS or dtype.itemsize == 0 or dtype.subdtype is not None:
        raise ClipError(path, name, f"dtype {dtype} is not a plain number, bool or string type")
    if any(d < 0 for d in shape) or len(shape) > 8:
        raise ClipError(path, name, f"declares an impossible shape {shape}")
    return _Member(name, info, tuple(int(d) for d in shape), dtype, fortran_order, 8 + length_bytes + header_length)


def _check_sizes(path: Path, members: dict[str, _Member], max_clip_bytes: int) -> None:
    """The declared sizes fit the budget, and each zip entry holds exactly what its header declares."""
    total = 0
    for member in members.values():
        total += member.nbytes
        if total > max_clip_bytes:
            earlier = f" (with the fields before it, {_size_str(total)})" if total != member.nbytes else ""
            raise ClipError(
                path, member.name,
                f"declares {member.shape} {member.dtype}, {_size_str(member.nbytes)} decoded{earlier}, "
                f"over the max_clip_bytes budget of {_size_str(max_clip_bytes)}",
            )  # fmt: skip
    for member in members.values():  # checked after the budget: an absurd header is the clearer message
        if member.info.file_size != member.data_offset + member.nbytes:
            raise ClipError(
                path, member.name,
                f"the zip entry holds {member.info.file_size} bytes but its .npy header implies {member.data_offset + member.nbytes} "
                f"({member.shape} {member.dtype}); the archive is damaged or forged",
            )  # fmt: skip


def _decode(path: Path, archive: zipfile.ZipFile, member: _Member) -> np.ndarray:
    """The member's array, read in chunks into one buffer of exactly the declared size."""
    flat = np.empty(math.prod(member.shape), member.dtype)
    if member.nbytes:
        buffer = memoryview(flat.view(np.uint8))
        try:
            with archive.open(member.info) as stream:
                stream.read(member.data_offset)
                filled = 0
                while filled < member.nbytes:
                    chunk = stream.read(min(_READ_CHUNK, member.nbytes - filled))
                    if not chunk:
                        raise ClipError(path, member.name, f"truncated: {filled} of {member.nbytes} data bytes present")
                    buffer[filled : filled + len(chunk)] = chunk
                    filled += len(chunk)
        except _ZIP_ERRORS as err:
            raise ClipError(path, member.name, f"corrupt data in the archive ({type(err).__name__}: {_one_line(err)})") from None
    if member.fortran_order:
        return flat.reshape(member.shape[::-1]).transpose()
    return flat.reshape(member.shape)


def _mask(path: Path, name: str, mask: np.ndarray) -> np.ndarray:
    if mask.dtype != np.bool_:
        if not np.isin(mask, (0, 1)).all():
            raise ClipError(path, name, f"dtype {mask.dtype} with values other than 0/1, expected bool")
        mask = mask.astype(bool)
    return mask.copy()


def _clip_boxes(bboxes: np.ndarray, mask: np.ndarray, height: int, width: int):
    """Clip boxes to the frame; boxes with no area left become absent. Both are counted."""
    limits = np.array([width, height, width, height], dtype=np.float32)
    raw_area = np.clip(bboxes[..., 2] - bboxes[..., 0], 0, None) * np.clip(bboxes[..., 3] - bboxes[..., 1], 0, None)
    clipped = np.clip(bboxes, 0, limits)
    area = (clipped[..., 2] - clipped[..., 0]).clip(0) * (clipped[..., 3] - clipped[..., 1]).clip(0)
    changed = mask & (clipped != bboxes).any(-1)
    degenerate = mask & (area <= 0)
    mask = mask & ~degenerate
    clipped[~mask] = 0.0
    visible = np.where(mask, area / np.maximum(raw_area, 1e-12), 0.0).astype(np.float32)
    repairs = {"clipped_boxes": int((changed & mask).sum()), "zero_area_boxes": int(degenerate.sum())}
    return clipped, mask, visible, repairs


def _check_target(path: Path, name: str, target: int, n: int, mask: np.ndarray) -> int:
    if target == -1:
        return -1
    if not 0 <= target < n:
        raise ClipError(path, name, f"slot {target} is outside [0, {n}) (use -1 for an unlabeled clip)")
    if not mask[:, target].any():
        raise ClipError(path, name, f"slot {target} holds no valid person in any frame")
    return target


def _text(value: np.ndarray | None) -> str:
    """A text field by the module docstring's rule; "" when absent."""
    if value is None:
        return ""
    value = value.reshape(())
    if value.dtype.kind in "iu":
        return str(int(value))
    if value.dtype.kind == "S":
        return value.tobytes().rstrip(b"\0").decode("utf-8", "backslashreplace")
    # U holds UTF-32 code units; decoding their bytes survives invalid ones, where .item() crashes
    raw = value.astype(value.dtype.newbyteorder("<")).tobytes()
    return raw.decode("utf-32-le", "backslashreplace").rstrip("\0")


def _size_str(nbytes: int) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if nbytes >= scale:
            return f"{nbytes / scale:.1f} {unit}"
    return f"{nbytes} B"


def _one_line(err: BaseException) -> str:
    """The first line of an exception's message, at most 200 characters (numpy's run longer)."""
    text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return text if len(text) <= 200 else text[:197] + "..."
