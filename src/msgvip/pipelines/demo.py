"""`msgvip demo`: the whole chain on synthetic clips, in a few minutes on a laptop CPU.

demo data -> extraction into a store -> training -> evaluation on the test split, with the
model's metrics printed beside the two heuristic baselines -> the run's HTML report.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..config import ExtractConfig
from ..data.synthetic import DemoDataConfig, write_demo_data
from ..ranker import evaluate_run, train
from ..store.feature_store import FeatureStore
from ..views import write_report
from .extract import run_extract
from .extract_run import ExtractSummary
from .train import train_configs

DEMO_FEATURES = ("appearance", "face", "geometry", "pose")
DEMO_DATA = DemoDataConfig(clips=240, frames=24, persons=8, height=96, width=160, seed=0)


@dataclass
class DemoResult:
    out: Path
    extract: ExtractSummary
    run_dir: Path
    val: dict  # best epoch's validation metrics, with the baselines
    test: dict
    report: Path  # the run's HTML report (index.html)
    seconds: float


def run_demo(out: Path, features: tuple[str, ...] = DEMO_FEATURES, data: DemoDataConfig = DEMO_DATA, settings: Sequence[str] = (),
             progress: bool = True) -> DemoResult:  # fmt: skip
    """Run every stage under ``out``: ``data/``, ``models/`` (tiny random backbones, when a model
    family is asked for), ``cache/`` (the store), ``run/`` (the ranker). The ranker trains with
    what ``msgvip train --store FP`` trains with, under ``settings`` (``--set`` pairs)."""
    start = time.perf_counter()
    training, model = train_configs(settings=settings)
    out = Path(out)
    say = print if progress else (lambda *a, **k: None)
    say(f"[1/5] synthetic clips -> {out / 'data'}")
    write_demo_data(out / "data", data, progress=progress)
    config = ExtractConfig(features=features)
    if set(features) - {"geometry"}:
        from ..extract.backbones import DEMO_CROP_SIZE, make_demo_backbones

        models = make_demo_backbones(out / "models")
        config = ExtractConfig(features=features, crop_size=DEMO_CROP_SIZE, backbone=str(models["backbone"]), pose_model=str(models["pose_model"]))
        say(f"      NOTE: the demo backbones in {out / 'models'} are tiny and RANDOMLY initialised (no download);")
        say("      their features are real computations but carry no pretrained knowledge. Use --backbone for real runs.")
    say(f"[2/5] extract {','.join(features)} -> {out / 'cache'}")
    summary = run_extract(out / "data", config, cache_dir=out / "cache", progress=progress)
    store = FeatureStore.open(Path(summary.store))
    say(f"      store {summary.fingerprint[:12]}: {summary.written} clips extracted, {summary.cached} cached")
    say(f"[3/5] train the ranker -> {out / 'run'}")
    trained = train(store, out / "run", training, model, progress=progress)
    say("[4/5] evaluate on the test split")
    test = evaluate_run(out / "run", store, "test")
    say(f"[5/5] report -> {out / 'run' / 'report'}")
    report = write_report(out / "run", store=store)
    return DemoResult(out, summary, out / "run", trained.val, test, report, time.perf_counter() - start)
