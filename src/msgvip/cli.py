"""The `msgvip` command line: parse, call a library function, print. Nothing else lives here."""

from __future__ import annotations

import errno
import functools
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import click

from .config import ConfigError, ExtractConfig
from .data.sources import SourceError
from .extract.registry import UnknownFeatureError
from .pipelines.extract import ExtractAborted, ExtractSummary, run_extract
from .store import cache as cache_mod
from .store.feature_store import FeatureStore, StoreError
from .store.locks import LockTimeout

USER_ERRORS = (StoreError, SourceError, UnknownFeatureError, ExtractAborted, LockTimeout, cache_mod.GcPolicyError, ConfigError)

cache_dir_option = click.option(
    "--cache-dir",
    type=str,  # a path or a file:// URL; other URLs are refused with a reason
    default=None,
    help=f"Cache root holding the stores [default: ${cache_mod.CACHE_ENV}, else the user cache dir].",
)
json_option = click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout instead of text.")


def model_options(fn: Callable) -> Callable:
    """Flags that choose what the model families compute (they reach the fingerprint)."""
    defaults = ExtractConfig()
    options = [
        click.option("--features", default="geometry", show_default=True, help="Comma-separated feature families: appearance, pose, face, geometry."),
        click.option("--backbone", default=defaults.backbone, show_default=True, help="DINOv2 for appearance and face: hub id or local directory."),
        click.option("--pose-model", default=defaults.pose_model, show_default=True, help="ViTPose for pose and face: hub id or local directory."),
        click.option("--crop-size", default=defaults.crop_size, show_default=True, help="Appearance and face crop size in pixels."),
        click.option("--context", default=defaults.context, show_default=True, help="Context padding around each box, as a fraction of its size."),
        click.option("--pooling", type=click.Choice(["cls", "mean", "cls+mean"]), default=defaults.pooling, show_default=True, help="Appearance pooling of DINOv2 tokens."),
        click.option("--dtype", type=click.Choice(["auto", "float32", "bfloat16", "float16"]), default=defaults.dtype, show_default=True, help="Compute dtype (auto: bf16 autocast on CUDA, fp32 on CPU)."),
        click.option("--local-files-only", is_flag=True, help="Never reach the model hub; models must be local or cached."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def extract_config(features: str, **fields) -> ExtractConfig:
    return ExtractConfig(features=tuple(f.strip() for f in features.split(",") if f.strip()), **fields)


def user_errors(fn: Callable) -> Callable:
    """Turn the library's expected errors into one-line click errors (exit 1, no traceback)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except USER_ERRORS as err:
            raise click.ClickException(str(err)) from None
        except OSError as err:
            if err.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            raise click.ClickException(
                f"no space left on the device while writing {err.filename or ''}: everything committed before "
                "is intact; free some space (msgvip cache gc) and rerun to finish"
            ) from None

    return wrapper


def print_json(record) -> None:
    click.echo(json.dumps(record, indent=2, sort_keys=True, default=str))


def print_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    cells = [list(map(str, headers))] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    for row in cells:
        click.echo("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="msgvip")
def main() -> None:
    """msgvip: extract frozen-backbone features once into a fingerprinted Zarr store, then train
    the graph + temporal important-person ranker from it many times."""


@main.command("demo-data")
@click.argument("out", type=click.Path(file_okay=False, path_type=Path))
@click.option("--clips", default=300, show_default=True, help="Number of clips.")
@click.option("--frames", default=32, show_default=True, help="Frames per clip (T).")
@click.option("--persons", default=8, show_default=True, help="Padded person slots (N).")
@click.option("--height", default=96, show_default=True, help="Frame height in pixels.")
@click.option("--width", default=160, show_default=True, help="Frame width in pixels.")
@click.option("--seed", default=0, show_default=True, help="Random seed; same seed, same bytes.")
def demo_data(out: Path, clips: int, frames: int, persons: int, height: int, width: int, seed: int) -> None:
    """Write synthetic MSG_VIP clips to OUT/{train,val,test}/*.npz."""
    from .data.synthetic import DemoDataConfig, write_demo_data

    config = DemoDataConfig(clips=clips, frames=frames, persons=persons, height=height, width=width, seed=seed)
    summary = write_demo_data(out, config, progress=True)
    splits = ", ".join(f"{n} {s}" for s, n in summary.clips_per_split.items())
    click.echo(f"wrote {sum(summary.clips_per_split.values())} clips ({splits}) to {summary.out} in {summary.seconds:.1f} s")


@main.command()
@click.argument("out", type=click.Path(file_okay=False, path_type=Path), default=Path("demo-run"))
@user_errors
def demo(out: Path) -> None:
    """Run the whole chain on synthetic clips under OUT: demo data, extraction, training,
    evaluation against the heuristic baselines."""
    from .pipelines.demo import run_demo

    result = run_demo(out)
    click.echo(f"\ntest split, {result.test['clips']} clips:")
    _print_metrics_table(result.test)
    click.echo(f"\ndone in {result.seconds:.0f} s: clips in {out / 'data'}, store {result.extract.store}, run in {result.run_dir}")
    click.echo(f"next: msgvip cache ls --cache-dir {out / 'cache'}   |   msgvip evaluate {result.run_dir} --split val")


@main.command()
@click.argument("data", type=click.Path(exists=True, path_type=Path))
@model_options
@cache_dir_option
@click.option("--on-error", type=click.Choice(["skip", "fail"]), default="skip", show_default=True, help="Skip a broken clip (and report it) or stop the run.")
@click.option("--batch-size", default=ExtractConfig.batch_size, show_default=True, help="Crops per model call (does not change the features).")
@click.option("--num-workers", default=ExtractConfig.num_workers, show_default=True, help="Clip-decoding worker processes (does not change the features).")
@click.option("--device", default=ExtractConfig.device, show_default=True, help="Where the models run: cpu, cuda, cuda:1 (does not change the features).")
@click.option("--workers", type=click.IntRange(min=1), help="Spread clips over a local dask cluster of N workers (one per GPU with --device cuda).")
@click.option("--scheduler", help="Spread clips over an existing dask cluster at this address (tcp://host:8786).")
@json_option
@user_errors
def extract(data: Path, cache_dir: Path | None, on_error: str, workers: int | None, scheduler: str | None, as_json: bool, **fields) -> None:
    """Extract features of every clip under DATA (a folder of split folders, or a manifest .csv)
    into the store for this config. Clips already in the store are skipped."""
    config = extract_config(**fields)
    summary = run_extract(data, config, cache_dir=cache_dir, on_error=on_error, progress=not as_json, workers=workers, scheduler=scheduler)
    if as_json:
        print_json(summary.to_json())
    else:
        _print_extract_summary(summary)
    if not summary.ok:
        sys.exit(1)


def _print_extract_summary(s: ExtractSummary) -> None:
    rate = s.written / s.seconds if s.seconds else 0.0
    click.echo(f"extracted {s.written} clips, {s.cached} already cached, {s.failed} failed, in {s.seconds:.1f} s ({rate:.1f} clips/s)")
    if any(s.repairs.values()):
        click.echo(f"repaired: {s.repairs['clipped_boxes']} boxes clipped to the frame, {s.repairs['zero_area_boxes']} zero-area boxes dropped")
    if s.relabeled:
        click.echo(f"updated labels/splits of {s.relabeled} cached clips")
    click.echo(f"store: {s.store}")
    click.echo(f"fingerprint: {s.fingerprint}")
    for err in s.errors:
        click.echo(f"failed: {err['path']}: field '{err['field']}': {err['message']}", err=True)
    if s.errors_csv:
        click.echo(f"errors listed in {s.errors_csv}", err=True)


def _train_configs(config_file: Path | None, overrides: dict) -> tuple:
    from .ranker import RankerConfig, TrainConfig, build_config, load_config_file

    model_values, train_values = load_config_file(config_file) if config_file else ({}, {})
    train_values.update({k: v for k, v in overrides.items() if v is not None})
    source = str(config_file) if config_file else "command line"
    return build_config(TrainConfig, train_values, source), build_config(RankerConfig, model_values, source)


def _default_run_dir(fingerprint: str) -> Path:
    import time

    return Path("runs") / f"{time.strftime('%Y%m%d-%H%M%S')}-{fingerprint[:8]}"


@main.command()
@click.option("--store", "store_ref", help="Store to train from: fingerprint, unique prefix, or path.")
@click.option("--data", type=click.Path(exists=True, path_type=Path), help="Clips to extract first (instead of --store), with the model flags below.")
@model_options
@cache_dir_option
@click.option("--out", "run_dir", type=click.Path(file_okay=False, path_type=Path), help="Run directory [default: runs/<time>-<fingerprint>].")
@click.option("--config", "config_file", type=click.Path(exists=True, dir_okay=False, path_type=Path), help="JSON or TOML with [model] and [train] sections.")
@click.option("--epochs", type=int, help="Epochs [default: 30].")
@click.option("--batch-size", type=int, help="Clips per step [default: 8].")
@click.option("--lr", type=float, help="Peak learning rate [default: 3e-4].")
@click.option("--seed", type=int, help="Seed [default: 0].")
@click.option("--device", help="cpu, cuda or auto [default: auto].")
@click.option("--patience", type=int, help="Early-stopping patience in epochs [default: 8].")
@click.option("--in-memory", type=click.Choice(["auto", "yes", "no"]), help="Hold the splits in RAM or stream them [default: auto].")
@click.option("--labels", type=click.Path(exists=True, dir_okay=False, path_type=Path), help="CSV overriding labels and/or splits: clip_id, content_hash or path column, then target and/or split.")
@click.option("--resume", is_flag=True, help="Continue the run in --out from its latest.pt.")
@user_errors
def train(store_ref, data, cache_dir, run_dir, config_file, epochs, batch_size, lr, seed, device, patience, in_memory, labels, resume, **model_fields) -> None:
    """Train the ranker on a store's train split, selecting on its val split."""
    from .pipelines.train import store_for_training
    from .ranker import read_label_overrides, train as train_run

    if resume and run_dir is None:
        raise click.UsageError("--resume needs --out RUN_DIR")
    overrides = {"epochs": epochs, "batch_size": batch_size, "lr": lr, "seed": seed, "device": device, "patience": patience, "in_memory": in_memory}
    train_config, model_config = _train_configs(config_file, overrides)
    store, _ = store_for_training(store_ref, data, extract_config(**model_fields), cache_dir)
    run_dir = run_dir or _default_run_dir(store.fingerprint)
    summary = train_run(store, run_dir, train_config, model_config, labels=read_label_overrides(labels) if labels else None, resume=resume)
    if summary.rank != 0:
        return
    if summary.val:
        click.echo(f"best epoch {summary.best_epoch} of {summary.epochs_run}{' (stopped early)' if summary.stopped_early else ''}, "
                   f"{summary.seconds_per_epoch:.1f} s/epoch, {100 * summary.data_wait_fraction:.1f}% waiting for data")
        _print_metrics_table(summary.val)
    click.echo(f"run: {summary.run_dir}  ({summary.seconds:.0f} s)")


@main.command()
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--split", default="test", show_default=True, help="Split of the run's store to evaluate.")
@cache_dir_option
@click.option("--labels", type=click.Path(exists=True, dir_okay=False, path_type=Path), help="CSV overriding labels and/or splits: clip_id, content_hash or path column, then target and/or split.")
@json_option
@user_errors
def evaluate(run_dir: Path, split: str, cache_dir: Path | None, labels: Path | None, as_json: bool) -> None:
    """Metrics of a run's best model against the heuristic baselines on one split."""
    from .pipelines.train import store_of_run
    from .ranker import evaluate_run, read_label_overrides

    result = evaluate_run(run_dir, store_of_run(run_dir, cache_dir), split, labels=read_label_overrides(labels) if labels else None)
    if as_json:
        print_json(result)
        return
    click.echo(f"{result['clips']} clips of split '{split}' in store {result['fingerprint'][:12]}")
    _print_metrics_table(result)


@main.command()
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("data_or_store")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=Path("predictions.csv"), show_default=True)
@click.option("--split", help="Only this split of the store [default: all clips].")
@cache_dir_option
@user_errors
def predict(run_dir: Path, data_or_store: str, out: Path, split: str | None, cache_dir: Path | None) -> None:
    """Rank the persons of every clip in DATA_OR_STORE (clips are extracted first, with the
    settings of the run's store) and write a ranking CSV."""
    from .pipelines.train import store_for_prediction
    from .ranker import predict_run

    store = store_for_prediction(run_dir, data_or_store, cache_dir)
    count = predict_run(run_dir, store, out, split)
    click.echo(f"ranked {count} clips -> {out}")


def _print_metrics_table(result: dict) -> None:
    names = [n for n in ("model", "largest_box", "most_central") if n in result]
    rows = [[n, result[n]["n"], *(f"{result[n][k]:.3f}" for k in ("rank@1", "rank@2", "rank@3", "mrr", "map"))] for n in names]
    print_table(["", "CLIPS", "RANK@1", "RANK@2", "RANK@3", "MRR", "MAP"], rows)
    by = result["model"]["by_persons"]
    click.echo("model Rank@1 by persons: " + ", ".join(f"{k}: {v['rank@1']:.3f} (n={v['n']})" for k, v in by.items() if v["n"]))


@main.group()
def cache() -> None:
    """See, check and prune the feature stores."""


@cache.command("ls")
@cache_dir_option
@json_option
@click.option("-q", "--quiet", is_flag=True, help="Print fingerprints only.")
@user_errors
def cache_ls(cache_dir: Path | None, as_json: bool, quiet: bool) -> None:
    """List the stores, most recently used first."""
    root = cache_mod.cache_root(cache_dir)
    scan = cache_mod.scan_cache(root)
    for warning in scan.warnings:
        click.echo(f"warning: {warning}", err=True)
    if as_json:
        print_json([s.to_json() for s in scan.stores])
    elif quiet:
        for s in scan.stores:
            click.echo(s.fingerprint)
    else:
        rows = [
            [s.fingerprint[:12], ",".join(s.features), ",".join(s.models) or "-", s.clips, s.size_on_disk_str,
             s.created_str, s.last_used_str, "yes" if s.pinned else "", "complete" if s.complete else "incomplete"]
            for s in scan.stores
        ]  # fmt: skip
        print_table(["FINGERPRINT", "FEATURES", "MODELS", "CLIPS", "SIZE", "CREATED", "LAST USED", "PINNED", "STATE"], rows)
        click.echo(f"\n{len(scan.stores)} stores, {cache_mod.human_size(scan.size_on_disk)} on disk in {root}")


@cache.command("info")
@click.argument("fingerprint")
@cache_dir_option
@json_option
@user_errors
def cache_info(fingerprint: str, cache_dir: Path | None, as_json: bool) -> None:
    """Full config and clip counts per split of one store (FINGERPRINT may be a unique prefix)."""
    path = cache_mod.resolve_store(cache_mod.cache_root(cache_dir), fingerprint)
    info = cache_mod.store_info(path)
    store = FeatureStore.open(path)
    record = {**info.to_json(), "config": store.config, "arrays": [a.to_json() for a in store.arrays], "state": store.state()}
    if as_json:
        print_json(record)
        return
    click.echo(f"fingerprint  {info.fingerprint}\npath         {info.path}")
    click.echo(f"clips        {info.clips} ({', '.join(f'{s}: {n}' for s, n in info.clips_per_split.items()) or 'none'})")
    click.echo(f"size         {info.size_on_disk_str}\ncreated      {info.created_str}\nlast used    {info.last_used_str}")
    click.echo(f"pinned       {'yes' if info.pinned else 'no'}\nstate        {'complete' if info.complete else 'incomplete'}")
    for a in store.arrays:
        click.echo(f"array        {a.name} (clip, frame, person{''.join(', ' + d for d in a.dims)}) {a.dtype}")
    click.echo("config\n" + json.dumps(store.config, indent=2, sort_keys=True))


@cache.command("verify")
@click.argument("fingerprint")
@cache_dir_option
@json_option
@user_errors
def cache_verify(fingerprint: str, cache_dir: Path | None, as_json: bool) -> None:
    """Re-read every clip of a store and check its checksums; exit 1 if any clip is bad."""
    store = FeatureStore.open(cache_mod.resolve_store(cache_mod.cache_root(cache_dir), fingerprint))
    index_problem = store.index_problem()
    if index_problem:
        raise click.ClickException(index_problem)
    with store.lease():
        problems = store.verify()
    bad = [{"clip_id": e.clip_id, "content_hash": e.content_hash, "row": e.row, "problem": p} for e, p in problems]
    if as_json:
        print_json({"fingerprint": store.fingerprint, "clips": len(store), "bad": bad, "ok": not bad})
    else:
        for b in bad:
            click.echo(f"BAD {b['clip_id']} (row {b['row']}): {b['problem']}")
        n_bad = len({b["content_hash"] for b in bad})
        click.echo(f"verified {len(store)} clips of {store.fingerprint}: {n_bad} bad")
    if bad:
        sys.exit(1)


@cache.command("gc")
@cache_dir_option
@click.option("--keep-last", type=click.IntRange(min=0), help="Keep only the N most recently used stores.")
@click.option("--older-than", help="Remove stores last used longer ago than this (e.g. 30d, 12h).")
@click.option("--max-size", help="Evict least recently used stores until the cache fits (e.g. 20G).")
@click.option("--incomplete", is_flag=True, help="Remove stores whose extraction did not complete.")
@click.option("--dry-run", is_flag=True, help="Print what would be removed; remove nothing.")
@user_errors
def cache_gc(cache_dir: Path | None, keep_last: int | None, older_than: str | None, max_size: str | None, incomplete: bool, dry_run: bool) -> None:
    """Remove stores by policy. Pinned stores and stores in use are never removed."""
    try:
        older = cache_mod.parse_duration(older_than) if older_than else None
        size = cache_mod.parse_size(max_size) if max_size else None
    except ValueError as err:
        raise click.BadParameter(str(err)) from None
    root = cache_mod.cache_root(cache_dir)
    scan = cache_mod.scan_cache(root)
    plan = cache_mod.plan_gc(scan, keep_last=keep_last, older_than=older, max_size=size, incomplete=incomplete)
    for info, reason in plan.spared:
        click.echo(f"keep   {info.fingerprint[:12]}  {info.size_on_disk_str:>7}  {reason}")
    for info, reason in plan.delete:
        click.echo(f"remove {info.fingerprint[:12]}  {info.size_on_disk_str:>7}  {reason}")
    if dry_run:
        click.echo(f"dry run: would free {cache_mod.human_size(plan.expected_freed)} in {root}")
        return
    if not plan.delete:
        click.echo(f"nothing to remove in {root}")
        return
    outcomes = cache_mod.execute_gc(plan, root)
    for info, outcome in outcomes:
        if outcome != "deleted":
            click.echo(f"{info.fingerprint[:12]}: {outcome}")
    freed = sum(i.size_on_disk for i, o in outcomes if o == "deleted")
    click.echo(f"freed {cache_mod.human_size(freed)} ({sum(o == 'deleted' for _, o in outcomes)} stores) in {root}")


def _set_pinned(fingerprint: str, cache_dir: Path | None, pinned: bool) -> None:
    store = FeatureStore.open(cache_mod.resolve_store(cache_mod.cache_root(cache_dir), fingerprint))
    store.set_pinned(pinned)
    click.echo(f"{'pinned' if pinned else 'unpinned'} {store.fingerprint}")


@cache.command("pin")
@click.argument("fingerprint")
@cache_dir_option
@user_errors
def cache_pin(fingerprint: str, cache_dir: Path | None) -> None:
    """Protect a store from gc."""
    _set_pinned(fingerprint, cache_dir, True)


@cache.command("unpin")
@click.argument("fingerprint")
@cache_dir_option
@user_errors
def cache_unpin(fingerprint: str, cache_dir: Path | None) -> None:
    """Let gc remove a store again."""
    _set_pinned(fingerprint, cache_dir, False)


if __name__ == "__main__":
    main()
