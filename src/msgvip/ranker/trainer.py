"""Training, evaluation and prediction of the ranker from a feature store.

A run directory holds ``config.json``, ``metrics.csv`` (one row per epoch), ``curves.png``,
``latest.pt`` / ``best.pt`` (model, optimizer, scheduler, RNG state, config, store fingerprint;
loaded with ``weights_only=True``) and ``predictions.csv``. Each epoch's batch order comes from
``seed + epoch`` and the dropout RNG state is checkpointed, so ``resume`` continues exactly.
Under ``torchrun`` (``WORLD_SIZE`` > 1) the model is wrapped in DDP, each rank takes its share of
the clips, losses and validation scores are gathered across ranks and only rank 0 writes.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import pickle
import re
import time
import zipfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from ..config import ConfigError
from ..domains import check_fields, one_of, ranged
from ..files import read_regular_text
from ..progress import progress_bar
from ..store.feature_store import FeatureStore
from ..store.records import ClipRecord
from ..store.references import add_reference
from .dataset import ClipBatch, LabelOverrides, StoreDataset, unmatched_labels
from .layer_mix import layer_counts
from .losses import ranking_loss_terms
from .baselines import baseline_metrics
from .metrics import ranking_metrics
from .model import RankerConfig
from .probe import FittedProbe, fit_probe
from .presets import DEFAULT_PRESET, Preset, build_model, preset_named, preset_of

CHECKPOINT_VERSION = 1
PROBE_FILE = "probe.npz"  # the run's fitted probe (FittedProbe.save)
LOGGERS = ("csv", "tensorboard")  # TrainConfig.logger
KEEP = ("both", "best", "latest")  # TrainConfig.keep


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = ranged(30, 1)
    batch_size: int = ranged(8, 1)
    eval_batch_size: int = ranged(32, 1)
    lr: float = ranged(3e-4, 0)
    weight_decay: float = ranged(0.01, 0)
    warmup_fraction: float = ranged(0.05, 0, 1)  # of all steps, linear warmup before the cosine decay
    # The largest gradient norm (a value <= 0 would negate or zero every gradient)
    grad_clip: float = ranged(1.0, 0, low_open=True, infinite="no clipping")
    margin: float = ranged(1.0, 0)
    pairwise_weight: float = ranged(0.5, 0)
    patience: int = ranged(8, 1)  # epochs without a better checkpoint (see `improves`) before stopping
    min_delta: float = ranged(0.0, 0)
    # A model that carries its probe (RankerConfig.probe_prior) starts as the probe (epoch 0) and
    # leaves it only for an epoch whose val top-1 wins over the probe are significant at this level
    # (one-sided sign test over the val clips where the two disagree; see `clears_probe`).
    probe_p_value: float = ranged(0.05, 0, 1, low_open=True)
    seed: int = ranged(0, 0, 2**32 - 1)  # numpy's generators take no other seeds
    device: str = "auto"
    amp: bool = True  # autocast bf16 on CUDA; ignored on CPU
    permute_slots: bool = True
    in_memory: str = one_of("auto", ("auto", "yes", "no"))
    train_split: str = "train"
    val_split: str = "val"
    logger: str = one_of("csv", LOGGERS)  # metrics.csv is always written; "tensorboard" also writes RUN/tb/ event files
    # Fit the probe suite (`msgvip probe`) on the train split, chosen on val, as the run's baseline
    # (RUN/probe.npz): every table of the run sets the model beside it. Seconds on a demo store.
    probe: bool = True
    # The checkpoints a finished run keeps. best.pt holds the best epoch's model (no optimizer
    # state: nothing resumes from it); latest.pt the last epoch's full state, to resume or extend
    # the run. "both"; "best" (a third of the size: the run cannot be extended); "latest" (the
    # run is evaluated at its last epoch, not its best).
    keep: str = one_of("both", KEEP)
    # Intra-op CPU threads while training; 0: torch's own count (one per core). Float sums split
    # over another number of threads round differently, so config.json records the count used.
    threads: int = ranged(0, 0, 4096)

    def __post_init__(self) -> None:
        check_fields(self)  # a value outside its domain never trains silently the wrong way


def build_config(cls, values: Mapping, source: str):
    """A dataclass from a mapping, refusing unknown keys and values of the wrong type."""
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ConfigError(f"{source}: unknown {cls.__name__} keys {unknown}; known: {sorted(known)}")
    defaults = cls()
    for key, value in values.items():
        default = getattr(defaults, key)
        ok = isinstance(value, type(default)) and not (isinstance(value, bool) and not isinstance(default, bool))
        ok = ok or (isinstance(default, tuple) and isinstance(value, list))  # TOML and JSON have no tuples; the config converts
        if not ok and isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
            try:
                values = {**values, key: float(value)}
            except OverflowError:
                raise ConfigError(f"{source}: {cls.__name__}.{key} must be a float, got an integer of {value.bit_length()} bits, beyond the largest float") from None
        elif not ok:
            raise ConfigError(f"{source}: {cls.__name__}.{key} must be {type(default).__name__}, got {value!r}")
    try:
        return cls(**values)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{source}: {err}") from None


# ---------------------------------------------------------------------------------------- runtime
@dataclass
class Runtime:
    device: torch.device
    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def setup(cls, device: str) -> Runtime:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if world > 1 and not dist.is_initialized():
            dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
        rank = dist.get_rank() if world > 1 else 0
        if device == "cuda":
            device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
        return cls(torch.device(device), rank, world)

    def mean(self, value: float) -> float:
        if self.world_size == 1:
            return value
        t = torch.tensor([value], dtype=torch.float64, device=self.device if self.device.type == "cuda" else "cpu")
        dist.all_reduce(t)
        return float(t.item()) / self.world_size

    def gather(self, obj):
        if self.world_size == 1:
            return [obj]
        out = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out


# ---------------------------------------------------------------------------------------- scoring
def score_dataset(model: torch.nn.Module, data: StoreDataset, runtime: Runtime, batch_size: int, amp: bool, prior: np.ndarray | None = None) -> np.ndarray:
    """Scores (C, N) of every clip, in ``data.entries`` order, gathered across ranks. ``prior``
    (C, N): the probe's scores, for a model that adds them (``probe_prior``)."""
    model.eval()
    scores = np.full((len(data), data.persons), -np.inf, dtype=np.float32)
    parts = []
    with torch.inference_mode(), _autocast(runtime, amp):
        for batch in data.batches(batch_size, rank=runtime.rank, world_size=runtime.world_size, packed=_packed(model)):
            logits = model(*_inputs(batch.to(runtime.device)), **_prior_of(batch, prior, runtime.device))
            parts.append((batch.index.numpy(), logits.float().cpu().numpy()))
    for rank_parts in runtime.gather(parts):
        for index, logits in rank_parts:
            scores[index, : logits.shape[1]] = logits
    return scores


def evaluate_scores(scores: np.ndarray, data: StoreDataset) -> dict:
    """Metrics of ``scores`` and of the two heuristic baselines on the same clips."""
    target, valid = data.targets.numpy(), data.valid_slots().numpy()
    return {"model": ranking_metrics(scores, target, valid, scenes=[e.scene for e in data.entries]), **baseline_metrics(data)}


def probe_metrics(probe: FittedProbe, scores: np.ndarray, data: StoreDataset) -> dict:
    """Metrics of a run's probe from its scores (C, N) of ``data``, with what it is and its val Rank@1."""
    return {**ranking_metrics(scores, data.targets.numpy(), data.valid_slots().numpy()), "about": probe.about, "val_rank@1": probe.val["rank@1"]}


def below_probe_note(model_val_rank1: float, probe_val: dict) -> str | None:
    """One plain line when the model's best val Rank@1 is below its probe's, else None."""
    if not probe_val or not model_val_rank1 < probe_val["rank@1"]:
        return None
    return (f"NOTE: the model's best val Rank@1 ({model_val_rank1:.3f}) is below its probe's ({probe_val['rank@1']:.3f}, {probe_val['about']}): "
            "on this data a linear scorer of time-pooled per-person statistics does better; `msgvip probe` shows the suite")  # fmt: skip


def write_predictions(path: Path, scores: np.ndarray, data: StoreDataset, split_name: str | None = None) -> None:
    """One row per valid person: clip, slot, score, rank (1 = most important), target."""
    valid = np.isfinite(scores)
    order = np.argsort(-np.where(valid, scores, -np.inf), axis=1, kind="stable")
    ranks = np.empty_like(order)
    np.put_along_axis(ranks, order, np.arange(1, scores.shape[1] + 1)[None].repeat(len(scores), 0), axis=1)
    # surrogateescape: a clip key from a file name that is not UTF-8 is written back as its own bytes
    with open(path, "w", newline="", encoding="utf-8", errors="surrogateescape") as f:
        writer = csv.writer(f)
        writer.writerow(["split", "clip_id", "content_hash", "slot", "score", "rank", "target"])
        for c, entry in enumerate(data.entries):
            for slot in np.flatnonzero(valid[c]):
                writer.writerow([split_name or entry.split, entry.key, entry.content_hash, slot, f"{scores[c, slot]:.6f}", ranks[c, slot], int(data.targets[c])])


def _inputs(batch: ClipBatch) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    if batch.features and next(iter(batch.features.values())).dim() == 2:
        return batch.features, batch.person_mask  # packed rows: the model casts the valid rows only
    return {k: v.float() for k, v in batch.features.items()}, batch.person_mask


def _prior_of(batch: ClipBatch, prior: np.ndarray | None, device: torch.device) -> dict[str, torch.Tensor]:
    """``{"prior": (B, N)}``, the split's prior rows of the batch's clips in its slot order, or {} without one."""
    if prior is None:
        return {}
    rows = torch.from_numpy(prior[batch.index.numpy(), : batch.person_mask.shape[2]])  # (B, N) original slots
    return {"prior": rows.gather(1, batch.slot_order).to(device)}


def _unwrapped(model: torch.nn.Module) -> torch.nn.Module:
    """The model itself, out of a DDP wrapper if it is in one."""
    return model.module if hasattr(model, "module") else model


def _wants_prior(model: torch.nn.Module) -> bool:
    return getattr(_unwrapped(model), "accepts_prior", False)


def _packed(model: torch.nn.Module) -> bool:
    """Whether ``model`` (maybe DDP-wrapped) takes packed rows (faster: no padded (B, T, N, D) copy)."""
    return getattr(_unwrapped(model), "accepts_packed", False)


def _autocast(runtime: Runtime, amp: bool):
    enabled = amp and runtime.device.type == "cuda"
    return torch.autocast(runtime.device.type, dtype=torch.bfloat16, enabled=enabled)


# ---------------------------------------------------------------------------------------- training
@dataclass
class TrainSummary:
    run_dir: str
    fingerprint: str
    best_epoch: int
    epochs_run: int
    stopped_early: bool
    val: dict
    seconds_per_epoch: float
    data_wait_fraction: float
    seconds: float
    rank: int = 0  # the process's DDP rank; only rank 0 reports
    unmatched_labels: list[str] = field(default_factory=list)  # --labels keys that name no clip
    below_probe: str | None = None  # the line saying the model's best val Rank@1 is below its probe's
    checkpoints: dict[str, int] = field(default_factory=dict)  # the checkpoints the run kept, and their bytes


def improves(rank1: float, loss: float, best_rank1: float, best_loss: float, min_delta: float, clears: bool = True) -> bool:
    """Whether an epoch's val Rank@1 and val loss make a better checkpoint than the best so far:
    a Rank@1 higher by more than ``min_delta``, or the same Rank@1 with a lower loss; and, for a
    model that carries its probe, ``clears``: its wins over the probe are significant (`clears_probe`).

    Rank@1 on a few dozen val clips moves in steps of one clip, so epochs often tie; the loss
    tells the tied ones apart. Keeping the first of a tie instead picked an under-trained epoch
    (demo store, 3 seeds, test Rank@1: 0.952 mean with the loss, 0.933 with the first of a tie).
    """
    return clears and (rank1 > best_rank1 + min_delta or (rank1 == best_rank1 and loss < best_loss))


def clears_probe(wins: int, losses: int, p_value: float) -> bool:
    """Whether an epoch that gets ``wins`` val clips right at top-1 that its probe gets wrong, and
    ``losses`` the other way round, is better than the probe at ``p_value`` (one-sided sign test).

    Val Rank@1 above the probe's by a clip or two on a few dozen clips is as often chance as a
    better model: on the group-relative world, epochs one or two val clips above the probe were
    below it on test (3 seeds). The test asks for more wins the fewer val clips there are, and for
    hardly more than a majority on a val split of the user's size.
    """
    n = wins + losses
    return wins > losses and sum(math.comb(n, k) for k in range(wins, n + 1)) / 2**n <= p_value


def probe_duel(scores: np.ndarray, probe_scores: np.ndarray, targets: np.ndarray, valid: np.ndarray) -> tuple[int, int]:
    """(wins, losses) of scores (C, N) against the probe's on the labelled clips: clips whose top-1
    the model gets right and the probe wrong, and the reverse."""
    labelled = targets >= 0
    model_hit = np.where(valid, scores, -np.inf).argmax(1) == targets
    probe_hit = np.where(valid, probe_scores, -np.inf).argmax(1) == targets
    return int((model_hit & ~probe_hit & labelled).sum()), int((probe_hit & ~model_hit & labelled).sum())


def row_clears_probe(row: Mapping, probe_p_value: float) -> bool:
    """Whether a metrics.csv row (numbers or their text) may become best.pt as far as the probe
    goes: epoch 0 (the probe itself), a run whose model carries no probe (no duel columns), or an
    epoch whose duel with the probe :func:`clears_probe`."""
    if int(row["epoch"]) == 0 or "val_wins_vs_probe" not in row:
        return True
    return clears_probe(int(float(row["val_wins_vs_probe"])), int(float(row["val_losses_vs_probe"])), probe_p_value)


def best_epoch(history: Sequence[Mapping], min_delta: float = 0.0, probe_p_value: float = 0.05) -> Mapping | None:
    """The row of ``history`` (metrics.csv rows, numbers or their text) that the trainer kept as
    best.pt, by :func:`improves`; None when there is none. A run whose model carries its probe has
    an epoch-0 row (the probe itself, before training) and each epoch's duel with it."""
    best_row, best, best_loss = None, -1.0, math.inf
    for row in history:
        value, loss = float(row["val_rank@1"]), float(row.get("val_loss") or math.inf)
        if improves(value, loss, best, best_loss, min_delta, row_clears_probe(row, probe_p_value)):
            best_row, best, best_loss = row, value, loss
    return best_row


def read_metrics(run_dir: Path) -> list[dict[str, str]]:
    """The rows of a run's metrics.csv, as text."""
    return list(csv.DictReader(io.StringIO(read_regular_text(Path(run_dir) / "metrics.csv", within=run_dir), newline="")))


def _lr_lambda(total_steps: int, warmup_fraction: float):
    warmup = max(1, int(total_steps * warmup_fraction))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total_steps - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return factor


CHECKPOINT_KEYS = ("version", "epoch", "model", "config", "fingerprint", "history", "best", "val")


def load_weights_only(path: Path) -> object:
    """What ``torch.save`` wrote to ``path``, loaded weights-only: anything that would need code
    to unpickle is refused, and a missing, truncated or foreign file is a one-line error naming it."""
    if not Path(path).is_file():
        raise ConfigError(f"{path}: no such checkpoint file")
    if not zipfile.is_zipfile(path):  # torch.save writes a zip archive
        raise ConfigError(f"{path}: not a torch checkpoint (not a torch zip archive): truncated or damaged")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise ConfigError(f"{path}: holds objects a weights-only load refuses to unpickle ({str(err).splitlines()[0]})") from None
    except (RuntimeError, EOFError, OSError, ValueError, KeyError) as err:
        raise ConfigError(f"{path}: unreadable checkpoint ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else 'truncated'}); it is damaged") from None


def load_checkpoint(path: Path) -> dict:
    """An msgvip checkpoint (:func:`load_weights_only`) holding every key msgvip writes."""
    state = load_weights_only(path)
    missing = [k for k in CHECKPOINT_KEYS if not isinstance(state, dict) or k not in state]
    if missing:
        raise ConfigError(f"{path}: not an msgvip checkpoint (lacks {missing})")
    return state


def _check_same_model(run_dir: Path, recorded: dict, preset: Preset, options: dict) -> None:
    """Resuming continues the model a run recorded: other model options (a changed flag or
    config file, or defaults that moved since the run began) are a one-line error naming them."""
    recorded_preset = recorded.get("model_preset", DEFAULT_PRESET)
    if recorded_preset != preset.name:
        raise ConfigError(f"{run_dir}: was trained with model {recorded_preset!r}, not {preset.name!r}; resume it with --model {recorded_preset}")
    was = preset.complete_record(recorded.get("model", {}))
    differ = sorted(k for k in set(was) | set(options) if was.get(k) != options.get(k))
    if differ:
        changes = ", ".join(f"{k} {was.get(k)!r} -> {options.get(k)!r}" for k in differ)
        raise ConfigError(f"{run_dir}: was trained with other model options ({changes}); resume with the options in its config.json, or train a new run")


@contextmanager
def reproducible(threads: int = 0) -> Iterator[None]:
    """Deterministic kernels and a fixed thread count for the duration, restored after.

    On a CPU, the backward of indexing (``x[index]``) accumulates with ``index_put_(accumulate=
    True)``, whose parallel kernel adds rows in whatever order the threads reach them: on a busy
    machine two runs of one command parted in the 7th digit within an epoch. The deterministic
    kernel sorts the indices first; it cost nothing measurable in a demo-sized epoch (2.6 s both).
    ``warn_only``: an op with no deterministic kernel (some on CUDA) warns instead of stopping the run.
    """
    was = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    was_threads = torch.get_num_threads()
    torch.use_deterministic_algorithms(True, warn_only=True)
    if threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(was[0], warn_only=was[1])
        torch.set_num_threads(was_threads)


def _run_probe(run_dir: Path, train_data: StoreDataset, val_data: StoreDataset, resume: bool, progress: bool) -> tuple[FittedProbe | None, str | None]:
    """(probe, why there is none): on a resume the probe the run saved, else one fitted now. A
    split no probe can be fitted on (no train clip with two persons, ...) is said, and the run
    trains without one."""
    if resume and (run_dir / PROBE_FILE).exists():
        return FittedProbe.load(run_dir / PROBE_FILE), None
    try:
        probe = fit_probe(train_data, val_data)
    except ConfigError as err:
        if progress:
            print(f"no probe baseline: {err}", flush=True)
        return None, str(err)
    if progress:
        print(f"probe baseline: {probe.about}, val Rank@1 {probe.val['rank@1']:.3f} ({probe.seconds:.1f} s)", flush=True)
    return probe, None


def run_probe(run_dir: Path) -> FittedProbe | None:
    """The probe a run fitted as its baseline, or None (trained with --no-probe, or before probes)."""
    path = Path(run_dir) / PROBE_FILE
    return FittedProbe.load(path) if path.exists() else None


def clip_step_bytes(model_config: object, record: ClipRecord) -> int:
    """A floor on the memory one training step on clip ``record`` alone takes: the attention
    weights of the temporal layers (each present person's frames attend to each other, T^2 per
    head) and of the graph layers (each frame's persons, N^2 per head), float32, kept for the
    backward pass (x3). Features and activations come on top."""
    frames, persons = record.frames, max(1, -(-record.length // max(record.frames, 1)))  # present persons, on average
    temporal = persons * frames**2 * getattr(model_config, "temporal_heads", 1) * max(1, getattr(model_config, "temporal_layers", 1))
    graph = frames * persons**2 * getattr(model_config, "gat_heads", 1) * max(1, getattr(model_config, "gat_layers", 1))
    return 4 * 3 * (temporal + graph)


def _check_clip_memory(model_config: object, records: Sequence[ClipRecord], where: str, device: torch.device) -> None:
    """Refuse, before any epoch, a dataset whose largest clip cannot be trained on in this
    machine's memory (a 28 kB clip of 100,000 frames ran 865 s before it ran out of memory)."""
    if not records:
        return
    record = max(records, key=lambda r: clip_step_bytes(model_config, r))
    need, have = clip_step_bytes(model_config, record), _memory_bytes(device)
    if have and need > have:
        raise ConfigError(f"{where}: clip {record.content_hash} ({record.frames} frames x {record.persons} slots) needs at least {need / 2**30:,.0f} GiB "
                          f"for one training step (its attention alone), more than the {have / 2**30:,.0f} GiB of {device}; cut the clip or leave it out")


def _memory_bytes(device: torch.device) -> int:
    """Memory of ``device``: the GPU's, or this machine's physical memory (0 where the system does not say)."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 0


def _save(path: Path, state: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def train(
    store: FeatureStore,
    run_dir: Path,
    train_config: TrainConfig = TrainConfig(),
    model_config: object = RankerConfig(),
    families: list[str] | None = None,
    labels: LabelOverrides | None = None,
    resume: bool = False,
    progress: bool = True,
    max_epochs_this_call: int | None = None,
    dataset: str | None = None,
    allow_duplicates: bool = False,
    splits: tuple[StoreDataset, StoreDataset] | None = None,
    on_epoch: Callable[[dict], None] | None = None,
    probe: FittedProbe | None = None,
) -> TrainSummary:
    """Train on the train split of a dataset snapshot of the store (``dataset``, default its only
    one), select on its val split; see the module docstring. ``model_config`` is the config of a
    model preset (presets.py), which picks the model and its loss. A snapshot holding the same content
    in two splits is refused unless ``allow_duplicates``.

    ``max_epochs_this_call`` stops after that many epochs without marking the run finished
    (used to test that a resumed run matches an uninterrupted one). ``splits`` hands in the
    (train, val) datasets already read, so several runs in one process read the store once (a
    sweep); ``on_epoch(row)`` sees each epoch's metrics row after it is saved, and may raise to
    stop the run (a pruned trial). ``probe`` is the probe of those splits, fitted already (a
    sweep's worker fits it once); else it is fitted here unless ``train_config.probe`` is off.
    """
    start = time.perf_counter()
    runtime = Runtime.setup(train_config.device)
    run_dir = Path(run_dir)
    cfg = train_config
    with store.lease(), reproducible(cfg.threads):
        store.touch()
        snapshot = store.resolve_dataset(dataset)
        leaks = snapshot.leaks()
        if leaks and not allow_duplicates:
            pair, keys = next(iter(leaks.items()))
            raise ConfigError(
                f"{store.location}: dataset {snapshot.name!r} holds the same clip content in two splits ({pair}: {keys[0][0]} = {keys[0][1]}, "
                f"{sum(map(len, leaks.values()))} pairs in all; see `msgvip cache info {store.fingerprint[:12]}`); fix the data, or pass --allow-duplicates"
            )
        unmatched = unmatched_labels(snapshot, labels)
        preset = preset_of(model_config)
        if families is None and preset.families:  # what the preset consumes, e.g. svip: DINOv2 CLS + its own box geometry
            missing = sorted(set(preset.families) - set(store.families))
            if missing:
                raise ConfigError(f"{store.location}: model {preset.name!r} needs feature families {list(preset.families)}; the store lacks {missing} (extract with --features {','.join(preset.families)})")
            families = list(preset.families)
        if splits is not None:
            train_data, val_data = splits
        else:
            train_data = StoreDataset(store, cfg.train_split, families, cfg.in_memory, labels, snapshot.name)
            val_data = StoreDataset(store, cfg.val_split, train_data.families, cfg.in_memory, labels, snapshot.name)
        if not len(train_data) or not len(val_data):
            raise ConfigError(f"{store.location}: dataset {snapshot.name!r} needs clips in splits {cfg.train_split!r} and {cfg.val_split!r}; has {snapshot.splits()}")
        # The frame embedding must cover the longest clip of the dataset, in any split, so
        # evaluation and prediction on it never meet a clip the model cannot take.
        longest = max(store.clips[e.content_hash].frames for e in snapshot.entries if e.content_hash in store.clips)
        if hasattr(model_config, "max_frames"):
            model_config = replace(model_config, max_frames=max(model_config.max_frames, longest))
        _check_clip_memory(model_config, [store.clips[e.content_hash] for e in snapshot.entries if e.content_hash in store.clips], store.location, runtime.device)

        probe_error = None
        if not cfg.probe:
            probe = None
        elif probe is None:  # on every rank (the fit is deterministic): a probe_prior model needs it everywhere
            probe, probe_error = _run_probe(run_dir, train_data, val_data, resume, progress and runtime.is_main)
        if getattr(model_config, "probe_prior", False) and probe is None:
            # the model would add scores nobody computed: it trains alone, and its record says so
            model_config = replace(model_config, probe_prior=False)
            if progress and runtime.is_main:
                print(f"model.probe_prior is off for this run: it has no probe ({probe_error or 'train.probe is off'})", flush=True)

        torch.manual_seed(cfg.seed)
        feature_layers = layer_counts(store.specs, train_data.families)  # families stored as (L, D): the model mixes them
        try:
            model = build_model(model_config, train_data.feature_dims, feature_layers).to(runtime.device)
        except ValueError as err:
            raise ConfigError(f"{store.location}: {err}") from None
        loss_terms = model.loss_terms  # kept before a DDP wrap hides it
        optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        steps_per_epoch = train_data.steps(cfg.batch_size, runtime.world_size)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(cfg.epochs * steps_per_epoch, cfg.warmup_fraction))
        config_record = {
            "train": asdict(cfg), "model_preset": preset.name, "model": model_config.to_dict(), "families": train_data.families,
            "feature_dims": train_data.feature_dims, "feature_layers": feature_layers, "fingerprint": store.fingerprint, "store": store.location,
            "cache_root": store.storage.url, "dataset": snapshot.name, "leaks": leaks, "allow_duplicates": allow_duplicates,
            "extracted_from": {"data": snapshot.data, "settings": store.settings},  # to rebuild the store if it is removed
            "unmatched_labels": unmatched, "runtime": {"threads": torch.get_num_threads(), "torch": str(torch.__version__), "deterministic": True},
        }  # fmt: skip
        if probe is not None or probe_error is not None:
            config_record["probe"] = probe.record() if probe is not None else {"error": probe_error}
        val_probe_scores = probe.scores(val_data) if probe is not None else None  # once: for the tables and the prior
        # the probe's scores of the train clips from probes fitted without them (see probe_prior)
        train_prior, val_prior = (probe.cross_fitted(train_data), probe.prior_from(val_probe_scores)) if _wants_prior(model) else (None, None)
        history: list[dict] = []
        graph_history: list[dict] = []  # per-epoch diagnostics of models that keep them (rgt), records/graph_stats.csv
        best = {"epoch": -1, "rank@1": -1.0, "since": 0}
        first_epoch = 0
        if resume and not (run_dir / "latest.pt").exists() and (run_dir / "best.pt").exists():
            raise ConfigError(f"{run_dir}: kept only best.pt (train.keep = 'best'), which holds no optimizer state: it cannot be resumed; "
                              f"train a new run with --from-run {run_dir}")
        if resume and (run_dir / "latest.pt").exists():
            state = load_checkpoint(run_dir / "latest.pt")
            if state["fingerprint"] != store.fingerprint:
                raise ConfigError(f"{run_dir}: was trained on store {state['fingerprint']}, not {store.fingerprint}")
            _check_same_model(run_dir, state["config"], preset, config_record["model"])
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            torch.set_rng_state(state["rng"])
            history, best, first_epoch = state["history"], state["best"], state["epoch"] + 1
            graph_history = state.get("graph_history", [])
        if runtime.world_size > 1:
            model = torch.nn.parallel.DistributedDataParallel(model)
        if runtime.is_main:
            run_dir.mkdir(parents=True, exist_ok=True)
            (run_dir / "config.json").write_text(json.dumps(config_record, indent=2, sort_keys=True) + "\n")
            add_reference(store.storage, store.fingerprint, run_dir, snapshot.name)  # `cache gc` spares the store while the run lives
            if probe is not None:
                probe.save(run_dir / PROBE_FILE)
        baselines = baseline_metrics(val_data)  # once: they do not change between epochs
        if probe is not None:
            baselines = {"probe": probe_metrics(probe, val_probe_scores, val_data), **baselines}

        tensorboard = None
        if cfg.logger == "tensorboard" and runtime.is_main:
            from .loggers import TensorBoardLogger

            # on a resume, events a crashed run wrote past its last checkpoint are hidden
            tensorboard = TensorBoardLogger(run_dir, purge_step=first_epoch + 1 if first_epoch else None)
        diagnostics = getattr(_unwrapped(model), "diagnostics", None)
        val_targets, val_valid = val_data.targets.numpy(), val_data.valid_slots().numpy()

        def validate(model: torch.nn.Module, started: float, row: dict) -> tuple[dict, dict]:
            """The val metrics of ``model`` and ``row`` completed with them, the lr and the seconds since ``started``."""
            scores = score_dataset(model, val_data, runtime, cfg.eval_batch_size, cfg.amp, val_prior)
            val = ranking_metrics(scores, val_targets, val_valid)
            # the same ranking loss for every preset, so val losses of runs compare
            val_logits = torch.from_numpy(np.where(val_valid, scores, 0.0))
            val_loss = float(ranking_loss_terms(val_logits, val_data.targets, torch.from_numpy(val_valid), cfg.margin, cfg.pairwise_weight).total)
            row = {
                **row, "val_loss": val_loss, "val_rank@1": val["rank@1"], "val_rank@3": val["rank@3"], "val_mrr": val["mrr"],
                "val_map_trapezoid": val["map_trapezoid"], "lr": scheduler.get_last_lr()[0], "seconds": time.perf_counter() - started,
                "data_wait_fraction": 0.0,
            }  # fmt: skip
            if probe is not None:
                row["probe_val_rank@1"] = probe.val["rank@1"]  # the same every epoch: the line the curves are read against
            if val_prior is not None:
                row["val_wins_vs_probe"], row["val_losses_vs_probe"] = probe_duel(scores, val_probe_scores, val_targets, val_valid)
            return val, row

        def save_state(epoch: int, val: dict, improved: bool) -> None:
            state = {
                "version": CHECKPOINT_VERSION, "epoch": epoch, "model": _unwrapped(model).state_dict(), "config": config_record,
                "fingerprint": store.fingerprint, "history": history, "best": best, "val": val, "graph_history": graph_history,
            }  # fmt: skip
            if improved and cfg.keep != "latest":
                _save(run_dir / "best.pt", state)
            _save(run_dir / "latest.pt", {**state, "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "rng": torch.get_rng_state()})
            _write_metrics(run_dir, history)

        if val_prior is not None and not history:
            # epoch 0: the untrained model, which ranks exactly as its probe, is the checkpoint to beat
            val, row = validate(model, time.perf_counter(), {"epoch": 0, "train_loss": math.nan, "train_rank@1": math.nan})
            history.append(row)
            best = {"epoch": 0, "rank@1": val["rank@1"], "since": 0, "loss": row["val_loss"]}
            if runtime.is_main:
                save_state(-1, val, True)
                if tensorboard is not None:
                    tensorboard.log_epoch(row, step=0)
                if progress:
                    print(f"epoch 0 (the model before training ranks as its probe): val Rank@1 {val['rank@1']:.3f}  MRR {val['mrr']:.3f}", flush=True)
        last_epoch = cfg.epochs if max_epochs_this_call is None else min(cfg.epochs, first_epoch + max_epochs_this_call)
        stopped_early = False
        for epoch in range(first_epoch, last_epoch):
            if best["since"] >= cfg.patience:
                stopped_early = True
                break
            model.train()
            epoch_start = time.perf_counter()
            wait = 0.0
            losses, hits, counted = [], 0, 0
            batches = train_data.batches(cfg.batch_size, shuffle=True, permute_slots=cfg.permute_slots, seed=cfg.seed + epoch,
                                         rank=runtime.rank, world_size=runtime.world_size, packed=_packed(model))  # fmt: skip
            bar = progress_bar(total=steps_per_epoch, desc=f"epoch {epoch + 1}/{cfg.epochs}", unit="step", enabled=progress and runtime.is_main, leave=False)
            while True:
                tick = time.perf_counter()
                batch = next(batches, None)
                if batch is None:
                    break
                batch = batch.to(runtime.device, non_blocking=True)
                wait += time.perf_counter() - tick
                with _autocast(runtime, cfg.amp):
                    features, mask = _inputs(batch)
                    logits = model(features, mask, **_prior_of(batch, train_prior, runtime.device)).float()
                valid = mask.any(1)
                terms = loss_terms(logits, batch.target, valid, cfg)
                optimizer.zero_grad(set_to_none=True)
                terms.total.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                optimizer.step()
                scheduler.step()
                labeled = batch.target >= 0
                losses.append(float(terms.total.detach()))
                hits += int((logits.argmax(1) == batch.target)[labeled].sum())
                counted += int(labeled.sum())
                bar.update(1)
                bar.set_postfix(loss=f"{losses[-1]:.3f}")
            bar.close()
            graph_stats = diagnostics() if diagnostics is not None else {}
            if graph_stats:
                graph_history.append({"epoch": epoch + 1, **graph_stats})
            val, row = validate(model, epoch_start, {
                "epoch": epoch + 1, "train_loss": runtime.mean(float(np.mean(losses))), "train_rank@1": runtime.mean(hits / max(counted, 1)),
            })  # fmt: skip
            row["data_wait_fraction"] = runtime.mean(wait / row["seconds"])
            history.append(row)
            clears = row_clears_probe(row, cfg.probe_p_value)
            improved = improves(val["rank@1"], row["val_loss"], best["rank@1"], best.get("loss", math.inf), cfg.min_delta, clears)
            best = {"epoch": epoch + 1, "rank@1": val["rank@1"], "since": 0, "loss": row["val_loss"]} if improved else {**best, "since": best["since"] + 1}
            if runtime.is_main:
                save_state(epoch, val, improved)
                if graph_history:
                    _write_csv(run_dir / "records" / "graph_stats.csv", graph_history)
                if tensorboard is not None:
                    tensorboard.log_epoch(row, step=row["epoch"])
                if on_epoch is not None:
                    on_epoch(row)
                if progress:
                    duel = f"  vs probe +{row['val_wins_vs_probe']}/-{row['val_losses_vs_probe']} clips" if val_prior is not None else ""
                    print(f"epoch {epoch + 1}: loss {row['train_loss']:.3f}  val Rank@1 {val['rank@1']:.3f}  MRR {val['mrr']:.3f}{duel}  ({row['seconds']:.1f} s)", flush=True)

        if tensorboard is not None:
            tensorboard.close()
        finished = max_epochs_this_call is None or last_epoch >= cfg.epochs or stopped_early
        best_val, kept_epoch, kept = {}, best["epoch"], {}
        if finished and runtime.is_main and (run_dir / "latest.pt").exists():
            state = load_checkpoint(run_checkpoint(run_dir))
            _unwrapped(model).load_state_dict(state["model"])
            if cfg.keep == "best":
                (run_dir / "latest.pt").unlink()
            best_val, kept_epoch = {"model": state["val"], **baselines}, evaluated_epoch(state)
            kept = {name: (run_dir / name).stat().st_size for name in ("best.pt", "latest.pt") if (run_dir / name).exists()}
            write_predictions(run_dir / "predictions.csv", score_dataset(model, val_data, Runtime(runtime.device), cfg.eval_batch_size, cfg.amp, val_prior), val_data)
            _plot_curves(run_dir, history)
    if runtime.world_size > 1:
        dist.barrier()
    trained = [h for h in history if h["epoch"] > 0]  # not epoch 0, the probe before training
    return TrainSummary(
        run_dir=str(run_dir), fingerprint=store.fingerprint, best_epoch=kept_epoch, epochs_run=len(trained), checkpoints=kept,
        stopped_early=stopped_early, val=best_val, seconds_per_epoch=float(np.mean([h["seconds"] for h in trained])) if trained else 0.0,
        data_wait_fraction=float(np.mean([h["data_wait_fraction"] for h in trained])) if trained else 0.0,
        seconds=time.perf_counter() - start, rank=runtime.rank, unmatched_labels=config_record["unmatched_labels"],
        below_probe=below_probe_note(best_val["model"]["rank@1"], best_val.get("probe")) if best_val else None,
    )  # fmt: skip


def _write_metrics(run_dir: Path, history: list[dict]) -> None:
    _write_csv(run_dir / "metrics.csv", history)


def _write_csv(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def _plot_curves(run_dir: Path, history: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    fig, (ax_loss, ax_rank) = plt.subplots(1, 2, figsize=(10, 4))
    ax_loss.plot(epochs, [h["train_loss"] for h in history], label="train")
    ax_loss.plot(epochs, [h["val_loss"] for h in history], label="val")
    ax_loss.set(xlabel="epoch", ylabel="loss", title="loss")
    ax_rank.plot(epochs, [h["train_rank@1"] for h in history], label="train")
    ax_rank.plot(epochs, [h["val_rank@1"] for h in history], label="val")
    if "probe_val_rank@1" in history[0]:
        ax_rank.axhline(history[0]["probe_val_rank@1"], color="grey", linestyle="--", label="probe (val)")
    ax_rank.set(xlabel="epoch", ylabel="Rank@1", title="Rank@1", ylim=(0, 1))
    for ax in (ax_loss, ax_rank):
        ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(run_dir / "curves.png", dpi=100)
    plt.close(fig)


# ---------------------------------------------------------------------------------------- reuse
def run_checkpoint(run_dir: Path) -> Path:
    """The checkpoint a run is evaluated with: best.pt, or latest.pt in a run that kept only that
    (train.keep = 'latest', or an svip import)."""
    for name in ("best.pt", "latest.pt"):
        if (Path(run_dir) / name).exists():
            return Path(run_dir) / name
    raise ConfigError(f"{run_dir}: no best.pt or latest.pt (is it a finished msgvip run directory?)")


def evaluated_epoch(state: Mapping) -> int:
    """The epoch whose model a checkpoint of :func:`run_checkpoint` holds (0: the probe, before training)."""
    return int(state["epoch"]) + 1


def load_run(run_dir: Path, device: str = "cpu") -> tuple[torch.nn.Module, dict]:
    """The best model of a run (of its preset; runs from before presets are ``msgvip``) and its config record."""
    path = run_checkpoint(run_dir)
    state = load_checkpoint(path)
    config = state["config"]
    try:
        preset = preset_named(config.get("model_preset", DEFAULT_PRESET))
        model = build_model(preset.config_from_record(config["model"]), config["feature_dims"], config.get("feature_layers"))  # absent: a run from before layer mixing
        model.load_state_dict(state["model"])
    except (TypeError, KeyError, ValueError, RuntimeError) as err:
        raise ConfigError(f"{path}: its model does not match its config ({type(err).__name__}: {str(err).splitlines()[0]}); the checkpoint is damaged") from None
    return model.to(device).eval(), config


@dataclass(frozen=True)
class ScoredSplit:
    """A run's best model scored on one split: its clips, the model's scores (C, N) and, where the
    run has a probe and it was asked for (or the model adds it), the probe's scores (C, N)."""

    data: StoreDataset
    scores: np.ndarray
    probe: FittedProbe | None = None
    probe_scores: np.ndarray | None = None


def scored_split(run_dir: Path, store: FeatureStore, split: str | None, labels: LabelOverrides | None, device: str, dataset: str | None,
                 with_probe: bool = False) -> ScoredSplit:  # fmt: skip
    """A run's best model scored on one split of a dataset of ``store``; ``with_probe`` also scores
    the run's probe (each split is scored by the probe once, for the model's prior too)."""
    model, config = load_run(run_dir, device)
    with store.lease():
        store.touch()
        data = StoreDataset(store, split, config["families"], labels=labels, dataset=dataset)
        if not len(data):
            raise ConfigError(f"{store.location}: dataset {data.snapshot.name!r} has no clips in split {split!r}; has {data.snapshot.splits()}")
        max_frames = getattr(model.config, "max_frames", data.frames)
        if data.frames > max_frames:
            raise ConfigError(
                f"{store.location}: dataset {data.snapshot.name!r} has clips of {data.frames} frames, the model of {run_dir} takes at most "
                f"{max_frames}; subsample those clips' frames or train a model on data that includes them"
            )
        probe = run_probe(run_dir) if with_probe or _wants_prior(model) else None
        if probe is None and _wants_prior(model):
            raise ConfigError(f"{run_dir}: its model adds its probe's scores (probe_prior), but {PROBE_FILE} is missing; the run directory is damaged")
        probe_scores = probe.scores(data) if probe is not None else None
        prior = probe.prior_from(probe_scores) if _wants_prior(model) else None
        scores = score_dataset(model, data, Runtime(torch.device(device)), 32, amp=False, prior=prior)
    return ScoredSplit(data, scores, probe if with_probe else None, probe_scores if with_probe else None)


def evaluate_run(
    run_dir: Path, store: FeatureStore, split: str = "test", labels: LabelOverrides | None = None, device: str = "cpu", dataset: str | None = None,
    predictions: Path | None = None,
) -> dict:  # fmt: skip
    """Metrics of a run's best model and of the baselines on one split of a dataset of ``store``
    (default: the dataset the run was trained on); ``predictions``: also write the per-person
    scores they come from there (:func:`write_predictions`)."""
    scored = scored_split(run_dir, store, split, labels, device, dataset or run_config(run_dir).get("dataset"), with_probe=True)
    if predictions is not None:
        write_predictions(predictions, scored.scores, scored.data)
    return evaluation(run_dir, scored, store, labels)


def predictions_file(split: str) -> str:
    """The name of the file in a run directory holding the per-person scores of ``split`` (any
    character a file name should not hold is written as _)."""
    return "predictions-" + re.sub(r"[^\w.-]", "_", split)[:100] + ".csv"


def evaluation(run_dir: Path, scored: ScoredSplit, store: FeatureStore, labels: LabelOverrides | None = None) -> dict:
    """The record of :func:`evaluate_run` from a split scored already (``with_probe=True``)."""
    data = scored.data
    result = {"split": data.split, "dataset": data.snapshot.name, "clips": len(data), "fingerprint": store.fingerprint,
              "unmatched_labels": unmatched_labels(data.snapshot, labels), **evaluate_scores(scored.scores, data)}  # fmt: skip
    if scored.probe is not None:
        probe = scored.probe
        result["probe"] = probe_metrics(probe, scored.probe_scores, data)
        train_record = run_config(run_dir)["train"]
        best = best_epoch(read_metrics(run_dir), train_record.get("min_delta", 0.0), train_record.get("probe_p_value", 0.05))
        result["below_probe"] = below_probe_note(float(best["val_rank@1"]), {**probe.val, "about": probe.about}) if best else None
    return result


def predict_run(run_dir: Path, store: FeatureStore, out: Path, split: str | None = None, device: str = "cpu", dataset: str | None = None) -> int:
    """Write a ranking CSV for the clips of a dataset of ``store`` (one split, or all); returns the clip count."""
    scored = scored_split(run_dir, store, split, None, device, dataset)
    write_predictions(Path(out), scored.scores, scored.data)
    return len(scored.data)


def run_config(run_dir: Path) -> dict:
    """A run directory's config.json, with a one-line error when it is missing or damaged."""
    path = Path(run_dir) / "config.json"
    try:
        config = json.loads(read_regular_text(path, within=run_dir))
    except FileNotFoundError:
        raise ConfigError(f"{run_dir}: no config.json (is it an msgvip run directory?)") from None
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise ConfigError(f"{path}: unreadable ({err}); the run directory is damaged") from None
    missing = [k for k in ("fingerprint", "families", "feature_dims", "model") if not isinstance(config, dict) or k not in config]
    if missing:
        raise ConfigError(f"{path}: lacks {missing}; the run directory is damaged or not an msgvip run")
    return config


__all__ = [
    "PROBE_FILE", "ConfigError", "TrainConfig", "TrainSummary", "best_epoch", "build_config", "evaluate_run",
    "load_run", "predict_run", "read_metrics", "reproducible", "run_config", "run_probe", "ScoredSplit", "scored_split", "evaluation", "train",
]  # fmt: skip
