"""``msgvip import-checkpoint svip``: a checkpoint of the user's svip trainer as an msgvip run.

svip (github.com/yml2002/svip at 26674fd) saves ``last.pt`` / ``best.pt`` as a dict whose
``model_trainable`` holds its trainable parameters by name (the frozen DINOv2 is absent), beside
``optimizer``, ``scheduler``, ``epoch``, ``global_step`` and ``metrics``. The parameters map onto
:class:`~msgvip.ranker.svip.SvipRanker` by the few renames of :data:`RENAMES`; every one must be
there with the shape the model expects. The result is a run directory like the one ``train``
writes (``config.json``, ``best.pt``; no ``latest.pt``, so it cannot be resumed), so
``evaluate`` and ``predict`` take it. svip's optimizer state is not carried over: its moments
are indexed by svip's parameter order and are of no use to scoring.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path

import numpy as np
from torch import Tensor

from ..config import ConfigError
from ..files import refuse_link
from ..store.feature_store import FeatureStore
from .svip import FAMILIES, TRAIN_DEFAULTS, SvipConfig, SvipRanker
from .trainer import CHECKPOINT_VERSION, TrainConfig, _save, load_weights_only

__all__ = ["RENAMES", "SVIP_EXTRACT_HINT", "UNUSED", "import_svip_checkpoint", "load_svip_weights", "read_svip_checkpoint", "svip_name"]

#: (svip's name prefix, SvipRanker's): svip wraps each Transformer in a module of its own, its box
#: MLP in ``geom.mlp`` and the projection of a CLS token of another width in its VisionEncoder.
RENAMES = (
    ("vision._proj.", "vision_proj."),
    ("geom.mlp.", "geom."),
    ("temporal_encoder.encoder.", "temporal_encoder."),
    ("event_ctx.event_temporal.encoder.", "event_ctx.event_temporal."),
)
#: svip parameters its forward never uses (its VideoLevelAggregator builds an attention pooling
#: that pooling="mean" leaves idle); dropped on import.
UNUSED = ("temporal_agg.temporal_attention.", "temporal_agg.aggregation_query", "temporal_agg.query_projection.")

#: The extraction closest to svip's: DINOv2-base CLS of the bare box. svip resizes boxes to 192 x 192,
#: which the patch-14 model reads as 13 x 13 patches; msgvip needs a multiple of the patch size.
SVIP_EXTRACT_HINT = "msgvip extract DATA --features appearance,svip_box --backbone facebook/dinov2-base --pooling cls --crop-size 196 --context 0"


def svip_name(name: str) -> str:
    """svip's name for the SvipRanker parameter ``name``."""
    for theirs, ours in RENAMES:
        if name.startswith(ours):
            return theirs + name[len(ours) :]
    return name


def read_svip_checkpoint(path: Path) -> dict:
    """An svip checkpoint, loaded weights-only; one-line ConfigErrors name the file otherwise."""
    payload = load_weights_only(path)
    trainable = payload.get("model_trainable") if isinstance(payload, dict) else None
    if not isinstance(trainable, dict) or not all(isinstance(k, str) and isinstance(v, Tensor) for k, v in trainable.items()):
        raise ConfigError(f"{path}: not an svip checkpoint (no 'model_trainable' dict of tensors, which svip's trainer writes in last.pt and best.pt)")
    return payload


def load_svip_weights(model: SvipRanker, trainable: Mapping[str, Tensor], source: str) -> None:
    """Load svip's ``model_trainable`` into ``model``: every parameter present, known and of the
    model's shape, else a one-line ConfigError naming ``source`` and the parameter."""
    ours = model.state_dict()
    wanted = {svip_name(name): name for name in ours}  # svip name -> ours
    missing = [name for name in wanted if name not in trainable]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise ConfigError(f"{source}: lacks parameter {missing[0]}{more}, which svip's model with this config has; was it trained with another svip config?")
    extra = sorted(name for name in trainable if name not in wanted and not name.startswith(UNUSED))
    if extra:
        more = f" (and {len(extra) - 1} more)" if len(extra) > 1 else ""
        raise ConfigError(f"{source}: holds parameter {extra[0]}{more}, which svip's model with this config lacks; was it trained with another svip config?")
    for theirs, name in wanted.items():
        got, expected = tuple(trainable[theirs].shape), tuple(ours[name].shape)
        if got != expected:
            raise ConfigError(f"{source}: parameter {theirs} has shape {got}, svip's model with this config and these features expects {expected}")
    model.load_state_dict({name: trainable[theirs] for theirs, name in wanted.items()})


def import_svip_checkpoint(checkpoint: Path, store: FeatureStore, out: Path, dataset: str | None = None, config: SvipConfig = SvipConfig()) -> Path:
    """Write the run directory ``out`` holding svip's ``checkpoint`` as an ``svip`` preset model
    over ``store``'s ``appearance`` and ``svip_box`` features; returns ``out``.

    ``dataset`` is the store's snapshot the run evaluates on by default (default: the store's
    only one). ``config`` must be the svip config the checkpoint was trained with (default:
    svip's). The appearance features must be the DINOv2 CLS token (``--pooling cls``); see
    :data:`SVIP_EXTRACT_HINT` for the extraction closest to svip's.
    """
    checkpoint, out = Path(checkpoint), Path(out)
    refuse_link(out, "--out")
    taken = [name for name in ("config.json", "best.pt") if (out / name).exists()]
    if taken:
        raise ConfigError(f"{out}: already holds a run ({', '.join(taken)}); choose another --out or remove it")
    specs = {s.name: s for s in store.specs}
    lacking = [family for family in FAMILIES if family not in specs]
    if lacking:
        raise ConfigError(f"{store.location}: has no {' or '.join(lacking)} features, which svip consumes; extract them with `{SVIP_EXTRACT_HINT}`")
    pooling = store.config.get("features", {}).get("appearance", {}).get("pooling")
    if pooling != "cls":
        raise ConfigError(f"{store.location}: its appearance features are DINOv2 {pooling!r} pooling, svip consumes the CLS token; extract with `{SVIP_EXTRACT_HINT}`")
    feature_dims = {family: int(np.prod(specs[family].shape)) for family in FAMILIES}

    payload = read_svip_checkpoint(checkpoint)
    model = SvipRanker(config, feature_dims)
    load_svip_weights(model, payload["model_trainable"], str(checkpoint))
    with store.lease():
        store.touch()
        snapshot = store.resolve_dataset(dataset)

    epoch = payload["epoch"] if isinstance(payload.get("epoch"), int) else 0  # svip counts from 0, as msgvip does
    metrics = payload.get("metrics") if isinstance(payload.get("metrics"), dict) else {}
    config_record = {
        "train": asdict(TrainConfig(**TRAIN_DEFAULTS)), "model_preset": "svip", "model": config.to_dict(), "families": list(FAMILIES),
        "feature_dims": feature_dims, "fingerprint": store.fingerprint, "store": store.location, "cache_root": store.storage.url,
        "dataset": snapshot.name, "leaks": snapshot.leaks(), "allow_duplicates": False, "unmatched_labels": [],
        "imported_from": {
            "format": "svip", "checkpoint": str(checkpoint.absolute()), "epoch": epoch + 1,
            # svip's own validation numbers (percent for rank@k), finite ones only: config.json is standard JSON
            "metrics": {k: v for k, v in ((k, _finite(v)) for k, v in metrics.items()) if v is not None},
        },
    }  # fmt: skip
    state = {
        "version": CHECKPOINT_VERSION, "epoch": epoch, "model": model.state_dict(), "config": config_record,
        "fingerprint": store.fingerprint, "history": [], "best": {"epoch": epoch + 1, "rank@1": -1.0, "since": 0}, "val": {},
    }  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(config_record, indent=2, sort_keys=True) + "\n")
    _save(out / "best.pt", state)
    return out


def _finite(value: object) -> float | None:
    """``value`` as a finite float, or None (not a number, or beyond a float: svip's 10**400)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        value = float(value)
    except OverflowError:
        return None
    return value if math.isfinite(value) else None
