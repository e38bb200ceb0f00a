"""How msgvip's user-facing commands grow with the data, on a Temporal-VIP-size store (issue #19).

For each fraction of Temporal-VIP's 9,249 clips (5,549 train / 1,850 val / 1,850 test, the
fraction keeps those shares) this writes a feature store of synthetic clips at the real shape
through the store's own writer, as `msgvip extract` writes one: ``FeatureStore.create`` under a
store lease, with extract's fingerprint record and settings, ``SegmentWriter.add`` per clip and
its commit records, then the dataset snapshot (``store.write_snapshot``). It reports the write's
seconds (generating the clips excluded) and the store's size on disk. Then it times the commands
as a user runs them, each a fresh ``python -m msgvip`` process with ``MSGVIP_CACHE`` at the
store's cache root (``OMP_NUM_THREADS`` and the rest of the environment as they are); the
names on the left are what ``--commands`` takes:

    train           train --store FP --out RUN --epochs 1 --no-probe   (the default model)
    train-streamed  the same with --in-memory no
    evaluate        evaluate RUN --split test
    probe           probe --store FP --features geometry
    report          report RUN --split test
    runs-ls         runs ls DIR   (RUN and 49 copies of its config.json, metrics.csv, evaluate-test.json)
    train-seed1     the same as train with --seed 1, into RUN2
    compare         compare RUN RUN2
    predict         predict RUN FP --out CSV
    cache-verify    cache verify FP
    cache-compact   cache compact FP
    cache-gc        cache gc --dry-run --keep-last 0

Each is timed by wall clock, and its peak RSS is the largest resident set of the process (and of
any process it waited for), from the rusage ``os.wait4`` returns for it. A command that fails is
marked skipped with its last stderr line, and so is every command that needs its output; the
others still run. The growth exponent is log(t2/t1) / log(n2/n1) between the two largest
fractions: 1 is linear in the clips, 0 a cost that does not grow. Of each train it also prints
epoch 1's seconds and share of the epoch spent waiting for data (RUN/metrics.csv). train-seed1
does train's work again: the gap between the two shows how much a busy machine moves the figures.

Clips: T=120 frames, N=20 person slots, 6-14 people per clip, each present in one stretch of
72-100% of the frames (about 8.6 present per frame). ``geometry`` is the geometry extractor's 18
columns, computed from random-walk boxes; the target's box is 1.5x as wide as the others' on
average, so there is something (a little) to learn. Every other family (``appearance`` and
``face``: float16 of the width given; ``pose``: (17, 3) float32) is a vector per person plus
per-frame noise. Each clip comes from a numpy generator seeded by its index: every run writes
the same stores.

    .venv/bin/python benchmarks/bench_scale.py [--families appearance:768,geometry] [--scale 0.005,0.01] [--commands NAME ...] [--keep DIR] [--json]

``--families``: NAME or NAME:WIDTH, comma-separated, of appearance (default width 768; 1024 for
DINOv2 ViT-L), face (771), geometry (18 columns) and pose (17 x 3). ``--scale``: fractions of the
9,249 clips; the default takes about 8 minutes on 2 busy CPU cores. ``--commands``: the names
above (default: all); a command that one named needs runs too.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from importlib.metadata import version
from pathlib import Path

import numpy as np

from msgvip.cli import json_ready, print_table
from msgvip.config import ExtractConfig
from msgvip.extract.geometry import GeometryExtractor, geometry_features
from msgvip.store import ArraySpec, FeatureStore, Snapshot, SnapshotEntry, cache_root, content_hash, fingerprint
from msgvip.store.feature_store import MASK_ARRAY, SCHEMA_VERSION
from msgvip.store.locks import store_lease

SEED = 0x19
TEMPORAL_VIP = {"train": 5549, "val": 1850, "test": 1850}  # clips per split
TEMPORAL_VIP_CLIPS = sum(TEMPORAL_VIP.values())
FRAMES, SLOTS = 120, 20
FRAME_WIDTH, FRAME_HEIGHT = 1920, 1080  # pixels
TARGET_WIDER = 1.5  # the target's box width over the others', on average
DATASET = "bench_scale"
DATA = "synthetic clips of benchmarks/bench_scale.py (none on disk)"
RUN_COPIES = 49  # `runs ls` lists these and RUN: 50 runs
MB = 1 << 20

GEOMETRY = GeometryExtractor()
FIXED_FAMILIES = {
    "geometry": GEOMETRY.arrays()[0],
    "pose": ArraySpec("pose", (17, 3), "float32", ("keypoint", "keypoint_xys")),  # COCO keypoints x (x, y, score), as the pose extractor stores them
}
WIDE_FAMILIES = {"appearance": (768, "appearance_dim"), "face": (771, "face_feature")}  # default width, dim name; face: ViT-B's 768 + yaw, pitch, visibility


# ----------------------------------------------------------------------------------- arguments
def families_arg(text: str) -> list[ArraySpec]:
    """``appearance:768,geometry`` -> the families' array specs, in extract's order (by name)."""
    specs: dict[str, ArraySpec] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, _, width = item.partition(":")
        if name in specs:
            raise argparse.ArgumentTypeError(f"family {name!r} given twice")
        if name in FIXED_FAMILIES:
            spec = FIXED_FAMILIES[name]
            if width and int(width) != math.prod(spec.shape):
                raise argparse.ArgumentTypeError(f"{item!r}: {name} has the fixed shape {spec.shape}; give it without a width")
        elif name in WIDE_FAMILIES:
            default, dim = WIDE_FAMILIES[name]
            if width and (not width.isdigit() or int(width) < 1):
                raise argparse.ArgumentTypeError(f"{item!r}: the width must be a positive integer")
            spec = ArraySpec(name, (int(width or default),), "float16", (dim,))
        else:
            raise argparse.ArgumentTypeError(f"unknown family {name!r}; choose from {sorted({*FIXED_FAMILIES, *WIDE_FAMILIES})}")
        specs[name] = spec
    if not specs:
        raise argparse.ArgumentTypeError("name at least one family")
    return [specs[name] for name in sorted(specs)]


def scale_arg(text: str) -> list[float]:
    fractions = sorted({float(part) for part in text.split(",") if part.strip()})
    if not fractions or not all(0 < f <= 1 for f in fractions):
        raise argparse.ArgumentTypeError(f"{text!r}: give fractions in (0, 1], comma-separated")
    return fractions


def split_sizes(fraction: float) -> dict[str, int]:
    """Clips per split of ``fraction`` of Temporal-VIP, in its shares (at least one val and test clip)."""
    clips = round(fraction * TEMPORAL_VIP_CLIPS)
    val, test = (max(1, round(clips * TEMPORAL_VIP[s] / TEMPORAL_VIP_CLIPS)) for s in ("val", "test"))
    if clips - val - test < 1:
        raise SystemExit(f"--scale {fraction}: {clips} clips leave none to train on; use a larger fraction")
    return {"train": clips - val - test, "val": val, "test": test}


# ----------------------------------------------------------------------------------- clips
@dataclass
class SyntheticClip:
    content_hash: str
    target: int  # person slot
    features: dict[str, np.ndarray]  # person_mask (T, N) and each family (T, N, ...)


def synthetic_clip(index: int, specs: Sequence[ArraySpec]) -> SyntheticClip:
    """Clip ``index``: 6-14 people in the 20 slots, each present in one stretch of 72-100% of the frames."""
    rng = np.random.default_rng([SEED, index])
    people = np.sort(rng.choice(SLOTS, int(rng.integers(6, 15)), replace=False))
    mask = np.zeros((FRAMES, SLOTS), bool)  # (T, N)
    for slot in people:
        stay = int(rng.integers(int(0.72 * FRAMES), FRAMES + 1))
        start = int(rng.integers(0, FRAMES - stay + 1))
        mask[start : start + stay, slot] = True
    target = int(rng.choice(people))
    boxes = random_boxes(rng, target)
    features = {MASK_ARRAY: mask}
    for spec in specs:
        if spec.name == "geometry":
            features["geometry"] = geometry_features(boxes, mask, FRAME_HEIGHT, FRAME_WIDTH, mask.astype(np.float32))
        else:
            features[spec.name] = person_vectors(rng, mask, spec)
    return SyntheticClip(content_hash({MASK_ARRAY: mask, "bboxes": boxes}), target, features)


def random_boxes(rng: np.random.Generator, target: int) -> np.ndarray:
    """(T, N, 4) pixel boxes x1 y1 x2 y2: a size per person (the target's wider), centres on a random walk."""
    width = rng.uniform(40, 160, SLOTS)  # (N,)
    width[target] *= TARGET_WIDER
    size = np.stack([width, width * rng.uniform(1.8, 3.0, SLOTS)], -1)  # (N, 2)
    start = rng.uniform([0.1 * FRAME_WIDTH, 0.2 * FRAME_HEIGHT], [0.9 * FRAME_WIDTH, 0.8 * FRAME_HEIGHT], (SLOTS, 2))
    centre = start + np.cumsum(rng.normal(0, 4, (FRAMES, SLOTS, 2)), axis=0)  # (T, N, 2)
    return np.concatenate([centre - size / 2, centre + size / 2], -1).astype(np.float32)


def person_vectors(rng: np.random.Generator, mask: np.ndarray, spec: ArraySpec) -> np.ndarray:
    """(T, N, *shape) in the family's dtype: a vector per person plus per-frame noise, zeros where absent."""
    frame, slot = np.nonzero(mask)
    person = rng.standard_normal((SLOTS, *spec.shape), dtype=np.float32)
    noise = rng.standard_normal((len(slot), *spec.shape), dtype=np.float32)
    dense = np.zeros((*mask.shape, *spec.shape), spec.dtype)
    dense[frame, slot] = person[slot] + 0.3 * noise
    return dense


# ----------------------------------------------------------------------------------- the store
@dataclass
class StoreBuild:
    fingerprint: str
    splits: dict[str, int]
    rows: int  # valid person-frames
    write_seconds: float  # creating the store, the writer's adds and commits, the snapshot; generating the clips excluded
    generate_seconds: float
    size_bytes: int

    @property
    def clips(self) -> int:
        return sum(self.splits.values())


def family_record(spec: ArraySpec) -> dict:
    """What the fingerprint record holds of a family: geometry's own spec (the heuristic
    baselines and the probe find its columns by name), a description of the generator otherwise."""
    if spec.name == "geometry":
        return GEOMETRY.spec()
    return {"feature_version": 1, "generator": f"benchmarks/bench_scale.py, seed {SEED}", "shape": list(spec.shape), "output_dtype": spec.dtype}


def write_store(cache: Path, specs: Sequence[ArraySpec], splits: dict[str, int]) -> StoreBuild:
    """The store of ``splits`` clips under the cache root ``cache``, written as ExtractRun writes one."""
    record = {"schema_version": SCHEMA_VERSION, "features": {s.name: family_record(s) for s in specs}}  # as registry.identity builds it
    fp, root = fingerprint(record), cache_root(cache)
    settings = ExtractConfig(features=tuple(s.name for s in specs)).settings()
    entries, rows, generating = [], 0, 0.0
    start = time.perf_counter()
    with store_lease(root, fp):
        store = FeatureStore.create(root, fp, record, specs, settings)
        store.touch()
        with store.writer() as writer:
            index = 0
            for split, count in splits.items():
                for _ in range(count):
                    tick = time.perf_counter()
                    clip = synthetic_clip(index, specs)
                    generating += time.perf_counter() - tick
                    writer.add(clip.content_hash, clip.features)
                    key = f"{split}/clip_{index:05d}"
                    entries.append(SnapshotEntry(key, clip.content_hash, split, clip.target, "synthetic", f"{DATA}: {key}"))
                    rows += int(clip.features[MASK_ARRAY].sum())
                    index += 1
        store.write_snapshot(Snapshot(DATASET, DATA, time.time(), tuple(sorted(entries, key=lambda e: e.key))))
    seconds = time.perf_counter() - start
    return StoreBuild(fp, splits, rows, seconds - generating, generating, root.size(fp))


# ----------------------------------------------------------------------------------- the commands
@dataclass(frozen=True)
class Work:
    """Where one fraction's store and runs live."""

    root: Path
    fingerprint: str

    @property
    def cache(self) -> Path:
        return self.root / "cache"

    @property
    def runs(self) -> Path:
        return self.root / "runs"

    @property
    def run(self) -> Path:
        return self.runs / "run-00"

    @property
    def run_streamed(self) -> Path:
        return self.root / "run-streamed"

    @property
    def run_seed1(self) -> Path:
        return self.root / "run-seed1"


@dataclass(frozen=True)
class Command:
    name: str
    shown: str  # as the table names it
    args: Callable[[Work], list[str]]
    needs: tuple[str, ...] = ()  # commands whose output it reads
    trains: str | None = None  # the Work attribute naming the run directory it writes
    prepare: Callable[[Work], None] | None = None  # untimed, before it runs


def train_args(run: str, *extra: str) -> Callable[[Work], list[str]]:
    """One epoch of the default model into the run directory ``Work.<run>``, no probe."""
    return lambda w: ["train", "--store", w.fingerprint, "--out", str(getattr(w, run)), "--epochs", "1", "--no-probe", *extra]


def copy_runs(work: Work) -> None:
    """RUN_COPIES copies of RUN's small files beside it, so `runs ls` lists 50 runs."""
    for i in range(1, RUN_COPIES + 1):
        copy = work.runs / f"copy-{i:02d}"
        copy.mkdir()
        for name in ("config.json", "metrics.csv", "evaluate-test.json"):
            shutil.copy2(work.run / name, copy / name)


COMMANDS = (
    Command("train", "train --store FP --out RUN --epochs 1 --no-probe", train_args("run"), trains="run"),
    Command("train-streamed", "train ... --in-memory no", train_args("run_streamed", "--in-memory", "no"), trains="run_streamed"),
    Command("evaluate", "evaluate RUN --split test", lambda w: ["evaluate", str(w.run), "--split", "test"], ("train",)),
    Command("probe", "probe --store FP --features geometry", lambda w: ["probe", "--store", w.fingerprint, "--features", "geometry"]),
    Command("report", "report RUN --split test", lambda w: ["report", str(w.run), "--split", "test"], ("train",)),
    Command("runs-ls", f"runs ls DIR ({RUN_COPIES + 1} runs)", lambda w: ["runs", "ls", str(w.runs)], ("evaluate",), prepare=copy_runs),
    Command("train-seed1", "train ... --seed 1 (RUN2)", train_args("run_seed1", "--seed", "1"), trains="run_seed1"),
    Command("compare", "compare RUN RUN2", lambda w: ["compare", str(w.run), str(w.run_seed1)], ("train", "train-seed1")),
    Command("predict", "predict RUN FP --out CSV", lambda w: ["predict", str(w.run), w.fingerprint, "--out", str(w.root / "predictions.csv")], ("train",)),
    Command("cache-verify", "cache verify FP", lambda w: ["cache", "verify", w.fingerprint]),
    Command("cache-compact", "cache compact FP", lambda w: ["cache", "compact", w.fingerprint]),
    Command("cache-gc", "cache gc --dry-run --keep-last 0", lambda w: ["cache", "gc", "--dry-run", "--keep-last", "0"]),
)
BY_NAME = {c.name: c for c in COMMANDS}


def with_needs(names: Sequence[str]) -> list[Command]:
    """The commands named and every command they need, in COMMANDS order."""
    wanted, todo = set(), list(names)
    while todo:
        name = todo.pop()
        if name not in wanted:
            wanted.add(name)
            todo += BY_NAME[name].needs
    return [c for c in COMMANDS if c.name in wanted]


@dataclass
class Outcome:
    ok: bool
    seconds: float | None = None
    peak_rss_mb: float | None = None
    reason: str | None = None  # why it was skipped
    epoch_seconds: float | None = None  # a train's epoch 1, from its metrics.csv
    data_wait_fraction: float | None = None


def run_msgvip(args: list[str], work: Work, log: Path) -> Outcome:
    """``python -m msgvip ARGS`` as a fresh process: its wall seconds and peak RSS (from wait4)."""
    env = {**os.environ, "MSGVIP_CACHE": str(work.cache)}
    with open(log.with_suffix(".out"), "wb") as out, open(log.with_suffix(".err"), "wb") as err:
        start = time.perf_counter()
        child = subprocess.Popen([sys.executable, "-m", "msgvip", *args], stdout=out, stderr=err, env=env, cwd=work.root)
        _, status, usage = os.wait4(child.pid, 0)
        seconds = time.perf_counter() - start
    child.returncode = os.waitstatus_to_exitcode(status)  # reaped by wait4: Popen must not wait for it again
    if child.returncode != 0:
        lines = [line.strip() for line in log.with_suffix(".err").read_text(errors="replace").replace("\r", "\n").splitlines() if line.strip()]
        return Outcome(False, reason=f"exit {child.returncode}: {lines[-1] if lines else '(no stderr)'}")
    rss_bytes = usage.ru_maxrss * (1 if sys.platform == "darwin" else 1024)  # bytes on macOS, KiB on Linux
    return Outcome(True, seconds, rss_bytes / MB)


def first_epoch(run_dir: Path) -> dict[str, float]:
    """Epoch 1's ``seconds`` and ``data_wait_fraction`` from a run's metrics.csv."""
    with open(run_dir / "metrics.csv", newline="") as f:
        row = next(r for r in csv.DictReader(f) if int(r["epoch"]) == 1)
    return {"epoch_seconds": float(row["seconds"]), "data_wait_fraction": float(row["data_wait_fraction"])}


def time_commands(commands: Sequence[Command], work: Work, say: Callable) -> dict[str, Outcome]:
    logs = work.root / "logs"
    logs.mkdir()
    outcomes: dict[str, Outcome] = {}
    for command in commands:
        failed = [n for n in command.needs if not outcomes[n].ok]
        if failed:
            outcome = Outcome(False, reason=f"needs {', '.join(failed)}, which was skipped")
        else:
            if command.prepare is not None:
                command.prepare(work)
            outcome = run_msgvip(command.args(work), work, logs / command.name)
            if outcome.ok and command.trains is not None:
                outcome = Outcome(**{**asdict(outcome), **first_epoch(getattr(work, command.trains))})
        outcomes[command.name] = outcome
        say(f"  {command.name}: " + (f"{outcome.seconds:.1f} s, {outcome.peak_rss_mb:.0f} MB" if outcome.ok else f"skipped ({outcome.reason})"))
    return outcomes


# ----------------------------------------------------------------------------------- results
@dataclass
class Fraction:
    fraction: float
    store: StoreBuild
    commands: dict[str, Outcome]


def growth(a: Fraction, b: Fraction, name: str) -> float | None:
    """log(t_b / t_a) / log(n_b / n_a) of a command's seconds, where both ran."""
    ta, tb = a.commands[name], b.commands[name]
    if not (ta.ok and tb.ok) or a.store.clips == b.store.clips:
        return None
    return math.log(tb.seconds / ta.seconds) / math.log(b.store.clips / a.store.clips)


def machine() -> dict:
    return {"cpus": os.cpu_count(), "ram_gib": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / (1 << 30),
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS"), "python": sys.version.split()[0], "msgvip": version("msgvip")}  # fmt: skip


def print_results(fractions: Sequence[Fraction], commands: Sequence[Command]) -> None:
    print("\nstore writes (SegmentWriter, generating the clips excluded):")
    print_table(["CLIPS", "TRAIN/VAL/TEST", "PERSON-FRAMES", "WRITE S", "GENERATE S", "SIZE MB", "BYTES/ROW"],
                [[f.store.clips, "/".join(map(str, f.store.splits.values())), f.store.rows, f"{f.store.write_seconds:.1f}",
                  f"{f.store.generate_seconds:.1f}", f"{f.store.size_bytes / MB:.1f}", f"{f.store.size_bytes / f.store.rows:.0f}"] for f in fractions])  # fmt: skip
    headers = ["COMMAND", *(f"{f.store.clips} CLIPS {unit}" for f in fractions for unit in ("S", "MB"))]
    rows = []
    for c in commands:
        cells = [c.shown]
        for f in fractions:
            o = f.commands[c.name]
            cells += [f"{o.seconds:.1f}", f"{o.peak_rss_mb:.0f}"] if o.ok else ["skipped", "-"]
        if len(fractions) > 1:
            exponent = growth(fractions[-2], fractions[-1], c.name)
            cells.append("-" if exponent is None else f"{exponent:.2f}")
        rows.append(cells)
    if len(fractions) > 1:
        headers.append(f"GROWTH {fractions[-2].store.clips}->{fractions[-1].store.clips}")
    print("\ncommands (fresh process each: wall seconds, peak RSS MB):")
    print_table(headers, rows)
    trains = [c for c in commands if c.trains is not None]
    if trains:
        print("\nepoch 1 of each train (RUN/metrics.csv: seconds, share waiting for data):")
        print_table(["RUN", *(f"{f.store.clips} CLIPS" for f in fractions)],
                    [[c.shown, *(f"{o.epoch_seconds:.1f} s, {100 * o.data_wait_fraction:.1f}% wait" if o.ok else "skipped"
                                 for o in (f.commands[c.name] for f in fractions))] for c in trains])  # fmt: skip
    for f in fractions:
        for name, o in f.commands.items():
            if not o.ok:
                print(f"skipped at {f.store.clips} clips: {name}: {o.reason}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", type=families_arg, default="appearance:768,geometry", help="NAME[:WIDTH],... of appearance, face, geometry, pose [default: %(default)s]")
    parser.add_argument("--scale", type=scale_arg, default="0.005,0.01", help="fractions of Temporal-VIP's 9,249 clips [default: %(default)s]")
    parser.add_argument("--commands", nargs="+", choices=list(BY_NAME), default=list(BY_NAME), metavar="NAME", help=f"commands to time: {', '.join(BY_NAME)} [default: all]")
    parser.add_argument("--keep", type=Path, help="build everything under this directory and keep it [default: a temporary one]")
    parser.add_argument("--json", action="store_true", help="print one JSON document instead of the tables")
    args = parser.parse_args()
    if len({sum(split_sizes(f).values()) for f in args.scale}) < len(args.scale):
        parser.error(f"--scale: two fractions give the same number of clips ({', '.join(f'{f:g}' for f in args.scale)})")
    say = (lambda *a: None) if args.json else (lambda *a: print(*a, flush=True))
    commands = with_needs(args.commands)
    host = machine()
    say(f"machine: {host['cpus']} CPUs, {host['ram_gib']:.1f} GiB RAM, OMP_NUM_THREADS={host['omp_num_threads'] or 'unset'}; "
        f"python {host['python']}, msgvip {host['msgvip']}")  # fmt: skip
    say(f"families: {', '.join(f'{s.name} {s.shape} {s.dtype}' for s in args.families)}; T={FRAMES}, N={SLOTS}")
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        base = args.keep or Path(tmp)
        for fraction in args.scale:
            splits = split_sizes(fraction)
            root = base / f"clips-{sum(splits.values())}"
            if root.exists() and any(root.iterdir()):
                raise SystemExit(f"{root} is not empty; give --keep a new or empty directory")
            root.mkdir(parents=True, exist_ok=True)
            store = write_store(root / "cache", args.families, splits)
            say(f"{store.clips} clips (fraction {fraction}): wrote {store.rows} person-frames in {store.write_seconds:.1f} s "
                f"(+{store.generate_seconds:.1f} s generating), {store.size_bytes / MB:.1f} MB on disk; store {store.fingerprint}")  # fmt: skip
            results.append(Fraction(fraction, store, time_commands(commands, Work(root, store.fingerprint), say)))
    if args.json:
        exponents = {c.name: growth(results[-2], results[-1], c.name) for c in commands} if len(results) > 1 else {}
        doc = {"machine": host, "families": [s.to_json() for s in args.families], "fractions": [asdict(r) for r in results], "growth": exponents}
        print(json.dumps(json_ready(doc), indent=2, allow_nan=False))
        return
    print_results(results, commands)


if __name__ == "__main__":
    main()
