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
import json
import math
import os
import pickle
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from ..config import ConfigError
from ..store.feature_store import FeatureStore
from .dataset import ClipBatch, LabelOverrides, StoreDataset
from .losses import ranking_loss_terms
from .metrics import largest_box_scores, most_central_scores, ranking_metrics
from .model import ImportanceRanker, RankerConfig

CHECKPOINT_VERSION = 1


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 30
    batch_size: int = 8
    eval_batch_size: int = 32
    lr: float = 3e-4
    weight_decay: float = 0.01
    warmup_fraction: float = 0.05  # of all steps, linear warmup before the cosine decay
    grad_clip: float = 1.0
    margin: float = 1.0
    pairwise_weight: float = 0.5
    patience: int = 8  # epochs without a val Rank@1 gain of min_delta before stopping
    min_delta: float = 0.0
    seed: int = 0
    device: str = "auto"
    amp: bool = True  # autocast bf16 on CUDA; ignored on CPU
    permute_slots: bool = True
    in_memory: str = "auto"
    train_split: str = "train"
    val_split: str = "val"


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
        if not ok and not (isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool)):
            raise ConfigError(f"{source}: {cls.__name__}.{key} must be {type(default).__name__}, got {value!r}")
    try:
        return cls(**values)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{source}: {err}") from None


def load_config_file(path: Path) -> tuple[dict, dict]:
    """(model, train) sections of a JSON or TOML file; plain data only, never executed."""
    text = Path(path).read_text()
    if Path(path).suffix.lower() == ".toml":
        import tomllib

        record = tomllib.loads(text)
    else:
        record = json.loads(text)
    unknown = sorted(set(record) - {"model", "train"})
    if unknown:
        raise ConfigError(f"{path}: unknown sections {unknown}; use 'model' and 'train'")
    return dict(record.get("model", {})), dict(record.get("train", {}))


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
def score_dataset(model: torch.nn.Module, data: StoreDataset, runtime: Runtime, batch_size: int, amp: bool) -> np.ndarray:
    """Scores (C, N) of every clip, in ``data.entries`` order, gathered across ranks."""
    model.eval()
    scores = np.full((len(data), data.persons), -np.inf, dtype=np.float32)
    parts = []
    with torch.inference_mode(), _autocast(runtime, amp):
        for batch in data.batches(batch_size, rank=runtime.rank, world_size=runtime.world_size):
            logits = model(*_inputs(batch.to(runtime.device)))
            parts.append((batch.index.numpy(), logits.float().cpu().numpy()))
    for rank_parts in runtime.gather(parts):
        for index, logits in rank_parts:
            scores[index] = logits
    return scores


def baseline_metrics(data: StoreDataset) -> dict:
    """Metrics of the two heuristic baselines (empty without geometry)."""
    baseline = data.baseline_inputs()
    if baseline is None:
        return {}
    area, center_dist, mask = baseline
    target, valid = data.targets.numpy(), data.valid_slots().numpy()
    return {
        "largest_box": ranking_metrics(largest_box_scores(area, mask), target, valid),
        "most_central": ranking_metrics(most_central_scores(center_dist, mask), target, valid),
    }


def evaluate_scores(scores: np.ndarray, data: StoreDataset) -> dict:
    """Metrics of ``scores`` and of the two heuristic baselines on the same clips."""
    return {"model": ranking_metrics(scores, data.targets.numpy(), data.valid_slots().numpy()), **baseline_metrics(data)}


def write_predictions(path: Path, scores: np.ndarray, data: StoreDataset, split_name: str | None = None) -> None:
    """One row per valid person: clip, slot, score, rank (1 = most important), target."""
    valid = np.isfinite(scores)
    order = np.argsort(-np.where(valid, scores, -np.inf), axis=1, kind="stable")
    ranks = np.empty_like(order)
    np.put_along_axis(ranks, order, np.arange(1, scores.shape[1] + 1)[None].repeat(len(scores), 0), axis=1)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["split", "clip_id", "content_hash", "slot", "score", "rank", "target"])
        for c, entry in enumerate(data.entries):
            for slot in np.flatnonzero(valid[c]):
                writer.writerow([split_name or entry.split, entry.clip_id, entry.content_hash, slot, f"{scores[c, slot]:.6f}", ranks[c, slot], int(data.targets[c])])


def _inputs(batch: ClipBatch) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    return {k: v.float() for k, v in batch.features.items()}, batch.person_mask


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


def _lr_lambda(total_steps: int, warmup_fraction: float):
    warmup = max(1, int(total_steps * warmup_fraction))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total_steps - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return factor


def load_checkpoint(path: Path) -> dict:
    """A checkpoint, loaded weights-only: anything that would need code to unpickle is refused."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise ConfigError(f"{path}: not a weights-only checkpoint, refusing to unpickle it ({str(err).splitlines()[0]})") from None


def _save(path: Path, state: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def _plain_state_dict(model: torch.nn.Module) -> dict:
    return (model.module if hasattr(model, "module") else model).state_dict()


def train(
    store: FeatureStore,
    run_dir: Path,
    train_config: TrainConfig = TrainConfig(),
    model_config: RankerConfig = RankerConfig(),
    families: list[str] | None = None,
    labels: LabelOverrides | None = None,
    resume: bool = False,
    progress: bool = True,
    max_epochs_this_call: int | None = None,
) -> TrainSummary:
    """Train on the store's train split, select on its val split; see the module docstring.

    ``max_epochs_this_call`` stops after that many epochs without marking the run finished
    (used to test that a resumed run matches an uninterrupted one).
    """
    from tqdm import tqdm

    start = time.perf_counter()
    runtime = Runtime.setup(train_config.device)
    run_dir = Path(run_dir)
    cfg = train_config
    with store.lease():
        store.touch()
        train_data = StoreDataset(store, cfg.train_split, families, cfg.in_memory, labels)
        val_data = StoreDataset(store, cfg.val_split, train_data.families, cfg.in_memory, labels)
        if not len(train_data) or not len(val_data):
            raise ConfigError(f"{store.path}: needs clips in splits {cfg.train_split!r} and {cfg.val_split!r}; has {sorted({e.split for e in store.entries.values()})}")

        torch.manual_seed(cfg.seed)
        model = ImportanceRanker(model_config, train_data.feature_dims).to(runtime.device)
        optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        steps_per_epoch = math.ceil(math.ceil(len(train_data) / runtime.world_size) / cfg.batch_size)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(cfg.epochs * steps_per_epoch, cfg.warmup_fraction))
        config_record = {
            "train": asdict(cfg), "model": model_config.to_dict(), "families": train_data.families,
            "feature_dims": train_data.feature_dims, "fingerprint": store.fingerprint, "store": str(store.path),
        }  # fmt: skip
        history: list[dict] = []
        best = {"epoch": -1, "rank@1": -1.0, "since": 0}
        first_epoch = 0
        if resume and (run_dir / "latest.pt").exists():
            state = load_checkpoint(run_dir / "latest.pt")
            if state["fingerprint"] != store.fingerprint:
                raise ConfigError(f"{run_dir}: was trained on store {state['fingerprint']}, not {store.fingerprint}")
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            torch.set_rng_state(state["rng"])
            history, best, first_epoch = state["history"], state["best"], state["epoch"] + 1
        if runtime.world_size > 1:
            model = torch.nn.parallel.DistributedDataParallel(model)
        if runtime.is_main:
            run_dir.mkdir(parents=True, exist_ok=True)
            (run_dir / "config.json").write_text(json.dumps(config_record, indent=2, sort_keys=True) + "\n")
        baselines = baseline_metrics(val_data)  # once: they do not change between epochs

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
            batches = train_data.batches(cfg.batch_size, shuffle=True, permute_slots=cfg.permute_slots, seed=cfg.seed + epoch, rank=runtime.rank, world_size=runtime.world_size)
            bar = tqdm(total=steps_per_epoch, desc=f"epoch {epoch + 1}/{cfg.epochs}", unit="step", disable=not (progress and runtime.is_main), leave=False)
            while True:
                tick = time.perf_counter()
                batch = next(batches, None)
                if batch is None:
                    break
                batch = batch.to(runtime.device, non_blocking=True)
                wait += time.perf_counter() - tick
                with _autocast(runtime, cfg.amp):
                    features, mask = _inputs(batch)
                    logits = model(features, mask).float()
                valid = mask.any(1)
                terms = ranking_loss_terms(logits, batch.target, valid, cfg.margin, cfg.pairwise_weight)
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
            scores = score_dataset(model, val_data, runtime, cfg.eval_batch_size, cfg.amp)
            valid_val = val_data.valid_slots()
            val = ranking_metrics(scores, val_data.targets.numpy(), valid_val.numpy())
            val_logits = torch.from_numpy(np.where(valid_val.numpy(), scores, 0.0))
            val_loss = float(ranking_loss_terms(val_logits, val_data.targets, valid_val, cfg.margin, cfg.pairwise_weight).total)
            seconds = time.perf_counter() - epoch_start
            row = {
                "epoch": epoch + 1, "train_loss": runtime.mean(float(np.mean(losses))),
                "train_rank@1": runtime.mean(hits / max(counted, 1)), "val_loss": val_loss,
                "val_rank@1": val["rank@1"], "val_rank@3": val["rank@3"], "val_mrr": val["mrr"], "val_map": val["map"],
                "lr": scheduler.get_last_lr()[0], "seconds": seconds, "data_wait_fraction": runtime.mean(wait / seconds),
            }  # fmt: skip
            history.append(row)
            improved = val["rank@1"] > best["rank@1"] + cfg.min_delta
            best = {"epoch": epoch + 1, "rank@1": val["rank@1"], "since": 0} if improved else {**best, "since": best["since"] + 1}
            if runtime.is_main:
                state = {
                    "version": CHECKPOINT_VERSION, "epoch": epoch, "model": _plain_state_dict(model),
                    "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "rng": torch.get_rng_state(),
                    "config": config_record, "fingerprint": store.fingerprint, "history": history, "best": best, "val": val,
                }  # fmt: skip
                _save(run_dir / "latest.pt", state)
                if improved:
                    _save(run_dir / "best.pt", state)
                _write_metrics(run_dir, history)
                if progress:
                    print(f"epoch {epoch + 1}: loss {row['train_loss']:.3f}  val Rank@1 {val['rank@1']:.3f}  MRR {val['mrr']:.3f}  ({seconds:.1f} s)", flush=True)

        finished = max_epochs_this_call is None or last_epoch >= cfg.epochs or stopped_early
        best_val = {}
        if finished and runtime.is_main and (run_dir / "best.pt").exists():
            state = torch.load(run_dir / "best.pt", map_location="cpu", weights_only=True)
            (model.module if hasattr(model, "module") else model).load_state_dict(state["model"])
            best_val = {"model": state["val"], **baselines}
            write_predictions(run_dir / "predictions.csv", score_dataset(model, val_data, Runtime(runtime.device), cfg.eval_batch_size, cfg.amp), val_data)
            _plot_curves(run_dir, history)
    if runtime.world_size > 1:
        dist.barrier()
    seconds = [h["seconds"] for h in history]
    return TrainSummary(
        run_dir=str(run_dir), fingerprint=store.fingerprint, best_epoch=best["epoch"], epochs_run=len(history),
        stopped_early=stopped_early, val=best_val, seconds_per_epoch=float(np.mean(seconds)) if seconds else 0.0,
        data_wait_fraction=float(np.mean([h["data_wait_fraction"] for h in history])) if history else 0.0,
        seconds=time.perf_counter() - start, rank=runtime.rank,
    )  # fmt: skip


def _write_metrics(run_dir: Path, history: list[dict]) -> None:
    with open(run_dir / "metrics.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(history[0]))
        writer.writeheader()
        writer.writerows(history)


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
    ax_rank.set(xlabel="epoch", ylabel="Rank@1", title="Rank@1", ylim=(0, 1))
    for ax in (ax_loss, ax_rank):
        ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(run_dir / "curves.png", dpi=100)
    plt.close(fig)


# ---------------------------------------------------------------------------------------- reuse
def load_run(run_dir: Path, device: str = "cpu") -> tuple[ImportanceRanker, dict]:
    """The best model of a run and its config record."""
    path = Path(run_dir) / "best.pt"
    if not path.exists():
        raise ConfigError(f"{run_dir}: no best.pt (is it a finished msgvip run directory?)")
    state = load_checkpoint(path)
    config = state["config"]
    model = ImportanceRanker(RankerConfig(**config["model"]), config["feature_dims"])
    model.load_state_dict(state["model"])
    return model.to(device).eval(), config


def evaluate_run(run_dir: Path, store: FeatureStore, split: str = "test", labels: LabelOverrides | None = None, device: str = "cpu") -> dict:
    """Metrics of a run's best model and of the baselines on one split of ``store``."""
    model, config = load_run(run_dir, device)
    with store.lease():
        store.touch()
        data = StoreDataset(store, split, config["families"], labels=labels)
        if not len(data):
            raise ConfigError(f"{store.path}: no clips in split {split!r}; has {sorted({e.split for e in store.entries.values()})}")
        scores = score_dataset(model, data, Runtime(torch.device(device)), 32, amp=False)
    return {"split": split, "clips": len(data), "fingerprint": store.fingerprint, **evaluate_scores(scores, data)}


def predict_run(run_dir: Path, store: FeatureStore, out: Path, split: str | None = None, device: str = "cpu") -> int:
    """Write a ranking CSV for the store's clips (one split, or all); returns the clip count."""
    model, config = load_run(run_dir, device)
    with store.lease():
        store.touch()
        data = StoreDataset(store, split, config["families"])
        scores = score_dataset(model, data, Runtime(torch.device(device)), 32, amp=False)
    write_predictions(Path(out), scores, data)
    return len(data)


__all__ = [
    "ConfigError", "TrainConfig", "TrainSummary", "build_config", "evaluate_run", "load_config_file",
    "load_run", "predict_run", "train",
]  # fmt: skip
