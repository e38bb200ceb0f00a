"""The `msgvip` command line: parse, call a library function, print. Nothing else lives here."""

from __future__ import annotations

import errno
import functools
import json
import math
import shutil
import sys
import textwrap
import traceback
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path

import click
from click.core import ParameterSource

from .config import ConfigError, ExtractConfig, check_device
from .data.sources import SourceError
from .files import refuse_link
from .data.synthetic import DIFFICULTIES
from .extract.registry import UnknownFeatureError
from .pipelines.extract import run_extract
from .pipelines.extract_run import ExtractAborted, ExtractSummary
from .store import cache as cache_mod
from .store.compact import compact as compact_store
from .store.feature_store import SCHEMA_VERSION, StoreError
from .store.locks import LeaseLost, LockTimeout
from .store.storage import StorageError, object_store_errors, parse_storage_options

USER_ERRORS = (StoreError, StorageError, SourceError, UnknownFeatureError, ExtractAborted, LockTimeout, LeaseLost, cache_mod.GcPolicyError, ConfigError,
               *object_store_errors())  # fmt: skip


def cache_dir_option(fn: Callable) -> Callable:
    """--cache-dir and --storage-option, handed to the command as ``cache_dir`` and
    ``storage_options`` (a dict)."""

    def to_dict(ctx, param, pairs):
        try:
            return parse_storage_options(pairs)
        except StorageError as err:
            raise click.BadParameter(str(err)) from None

    fn = click.option(
        "--storage-option", "storage_options", multiple=True, callback=to_dict, metavar="KEY=VALUE",
        help="Object-storage setting for an s3:// cache root, e.g. endpoint_url=http://127.0.0.1:9000 (repeatable).",
    )(fn)  # fmt: skip
    return click.option(
        "--cache-dir",
        type=str,  # a path, a file:// URL or s3://bucket/prefix
        default=None,
        help=f"Cache root holding the stores: a folder or s3://bucket/prefix [default: ${cache_mod.CACHE_ENV}, else the user cache dir].",
    )(fn)


dataset_option = click.option("--dataset", help="Dataset snapshot of the store to use [default: the store's only one].")
json_option = click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout instead of text.")


def model_options(fn: Callable) -> Callable:
    """Flags that choose what the model families compute (they reach the fingerprint)."""
    defaults = ExtractConfig()
    options = [
        click.option("--features", default="geometry", show_default=True, help="Comma-separated feature families: appearance, pose, face, geometry, svip_box."),
        click.option("--backbone", default=defaults.backbone, show_default=True, help="DINOv2 for appearance and face: hub id or local directory."),
        click.option("--pose-model", default=defaults.pose_model, show_default=True, help="ViTPose for pose and face: hub id or local directory."),
        click.option("--crop-size", default=defaults.crop_size, show_default=True, help="Appearance and face crop size in pixels."),
        click.option("--context", default=defaults.context, show_default=True, help="Context padding around each box, as a fraction of its size."),
        click.option("--pooling", type=click.Choice(["cls", "mean", "cls+mean"]), default=defaults.pooling, show_default=True, help="Appearance pooling of DINOv2 tokens."),
        click.option(
            "--layers", default=",".join(map(str, defaults.layers)), show_default=True, callback=_layer_list,
            help="Appearance: backbone layers to store, comma-separated indices into its hidden states (0 the patch embeddings, -1 the last), "
            "e.g. -1,-4,-8,-12. Several are stored as (L, D) rows, which `train` mixes with learned softmax weights.",
        ),
        click.option("--dtype", type=click.Choice(["auto", "float32", "bfloat16", "float16"]), default=defaults.dtype, show_default=True, help="Compute dtype (auto: bf16 autocast on CUDA, fp32 on CPU)."),
        click.option("--local-files-only", is_flag=True, help="Never reach the model hub; models must be local or cached."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def _layer_list(ctx: click.Context, param: click.Parameter, value: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in value.split(","))
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a comma-separated list of layer indices such as -1,-4,-8,-12") from None


def extract_config(features: str, **fields) -> ExtractConfig:
    return ExtractConfig(features=tuple(f.strip() for f in features.split(",") if f.strip()), **fields)


def user_errors(fn: Callable) -> Callable:
    """Turn the errors a user can cause (the library's expected errors, and OSErrors: a full disk,
    a path that cannot be written, a scheduler that cannot be reached) into one-line click errors:
    exit 1, no traceback. With --debug they keep their traceback. Every command wears this
    (tests/test_cli_errors.py checks); anything else it raises is a bug, for MsgvipGroup."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except USER_ERRORS as err:
            if debugging():
                raise
            raise click.ClickException(str(err)) from None
        except OSError as err:
            if debugging():
                raise
            raise click.ClickException(_os_error_message(err)) from None

    return wrapper


def _os_error_message(err: OSError) -> str:
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        return (
            f"no space left on the device while writing {err.filename or ''}: everything committed before "
            "is intact; free some space (msgvip cache gc) and rerun to finish"
        )
    if err.filename is None:
        return str(err)
    return f"{err.filename}: {err.strerror}" + (f" (and {err.filename2})" if err.filename2 else "")


def showing_progress() -> bool:
    """Whether progress is shown (bars on a terminal, lines in a log): not with msgvip --quiet."""
    return not click.get_current_context().find_root().params.get("quiet")


def debugging() -> bool:
    """Whether --debug (or MSGVIP_DEBUG=1) asked for tracebacks."""
    return bool(click.get_current_context().find_root().params.get("debug"))


class MsgvipGroup(click.Group):
    """The root group: whatever a command raises past `user_errors` (a bug) or a Ctrl-C ends in
    one line too, unless --debug lets the traceback through. Catching here, around every
    command and subgroup, means no command can forget it."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise  # already a one-liner or an exit code: click's own handling prints them
        except KeyboardInterrupt:
            if debugging():
                traceback.print_exc()
            click.echo("interrupted", err=True)
            ctx.exit(130)  # 128 + SIGINT, what a shell reports for a Ctrl-C
        except Exception as err:
            if debugging():
                raise
            first_line = (str(err).splitlines() or [""])[0]
            raise click.ClickException(
                f"unexpected {type(err).__name__}: {first_line} -- a bug in msgvip; "
                "rerun with --debug (or MSGVIP_DEBUG=1) for the traceback and report it"
            ) from None


def json_ready(value):
    """``value`` as standard JSON data: NaN and infinities become null (JSON has neither), numpy
    scalars and arrays become Python numbers and lists, recursively."""
    if isinstance(value, dict):
        return {json_ready(k): json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(v) for v in value]
    if hasattr(value, "tolist"):  # numpy scalar or array, torch tensor
        return json_ready(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def print_json(record) -> None:
    # allow_nan=False: a NaN that json_ready missed is a bug to hear about, not a non-standard token in the output
    click.echo(json.dumps(json_ready(record), indent=2, sort_keys=True, default=str, allow_nan=False))


def print_table(headers: Sequence[str], rows: Sequence[Sequence[object]], shrink: str | None = None, width: int | None = None) -> None:
    """Rows under their headers in aligned columns; a line wider than ``width`` (default: the
    terminal's, else 120) cuts the cells of column ``shrink`` to fit, ending them with …."""
    cells = [list(map(str, headers))] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    if shrink is not None:
        column = list(headers).index(shrink)
        over = sum(widths) + 2 * (len(widths) - 1) - (width or shutil.get_terminal_size((120, 24)).columns)
        if over > 0:
            widths[column] = max(len(shrink), 12, widths[column] - over)
            for row in cells:
                if len(row[column]) > widths[column]:
                    row[column] = row[column][: widths[column] - 1] + "…"
    for row in cells:
        click.echo("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())


@click.group(cls=MsgvipGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="msgvip", message=f"%(prog)s %(version)s (writes and reads store schema {SCHEMA_VERSION})")
@click.option("--debug", is_flag=True, envvar="MSGVIP_DEBUG", show_envvar=True, help="Let errors through with their traceback, for bug reports.")
@click.option("--quiet", is_flag=True, envvar="MSGVIP_QUIET", show_envvar=True, help="No progress: print only each command's final summary.")
def main(debug: bool, quiet: bool) -> None:
    """msgvip: extract frozen-backbone features once into a fingerprinted Zarr store, then train
    the graph + temporal important-person ranker from it many times."""
    # `debug` is read from the context where errors are handled (debugging()), not here


@main.command("demo-data")
@click.argument("out", type=click.Path(file_okay=False, path_type=Path))
@click.option("--clips", default=300, show_default=True, help="Number of clips.")
@click.option("--frames", default=32, show_default=True, help="Frames per clip (T).")
@click.option("--persons", default=8, show_default=True, help="Padded person slots (N).")
@click.option("--height", default=96, show_default=True, help="Frame height in pixels.")
@click.option("--width", default=160, show_default=True, help="Frame width in pixels.")
@click.option("--seed", default=0, show_default=True, help="Random seed; same seed, same bytes.")
@click.option("--difficulty", type=click.Choice(DIFFICULTIES), default="default", show_default=True,
              help="The world's cue (see msgvip.data.synthetic): default (all cues), hard (a chain of raised arms: only relations in time tell; "
                   "--frames >= 24, --persons >= 4), or one cue alone: presence, drift, group, appearance, pixel.")
@user_errors
def demo_data(out: Path, clips: int, frames: int, persons: int, height: int, width: int, seed: int, difficulty: str) -> None:
    """Write synthetic MSG_VIP clips to OUT/{train,val,test}/*.npz."""
    refuse_link(out, "OUT")
    from .data.synthetic import DemoDataConfig, write_demo_data

    try:
        config = DemoDataConfig(clips=clips, frames=frames, persons=persons, height=height, width=width, seed=seed, difficulty=difficulty)
    except ValueError as err:  # the config's own limits, e.g. "frames must be >= 4 ..., got 2"
        raise click.UsageError(str(err)) from None
    summary = write_demo_data(out, config, progress=showing_progress())
    splits = ", ".join(f"{n} {s}" for s, n in summary.clips_per_split.items())
    click.echo(f"wrote {sum(summary.clips_per_split.values())} clips ({splits}) to {summary.out} in {summary.seconds:.1f} s")


@main.command()
@click.argument("out", type=click.Path(file_okay=False, path_type=Path), default=Path("demo-run"))
@click.option("--difficulty", type=click.Choice(DIFFICULTIES), default="default", show_default=True,
              help="The world of the demo clips (see `msgvip demo-data --help`).")
@click.option("--set", "settings", multiple=True, metavar="SECTION.KEY=VALUE", help="A model or train setting of the ranker, as for `msgvip train --set` (repeatable).")
@user_errors
def demo(out: Path, difficulty: str, settings: tuple[str, ...]) -> None:
    """Run the whole chain on synthetic clips under OUT: demo data, extraction, training,
    evaluation against the heuristic baselines, the run's HTML report."""
    refuse_link(out, "OUT")
    from dataclasses import replace

    from .pipelines.demo import DEMO_DATA, run_demo

    result = run_demo(out, data=replace(DEMO_DATA, difficulty=difficulty), settings=settings, progress=showing_progress())
    click.echo(f"\ntest split, {result.test['clips']} clips:")
    _print_metrics_table(result.test)
    click.echo(f"\ndone in {result.seconds:.0f} s: clips in {out / 'data'}, store {result.extract.store}, run in {result.run_dir}")
    click.echo(f"report: {result.report}  (open it in a browser)")
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
@click.option("--dataset", help="Name of the dataset snapshot this run writes [default: DATA's folder or manifest name].")
@click.option("--max-clip-bytes", help="Refuse, unread, a clip whose arrays declare more decoded bytes (e.g. 500M, 16G) [default: 4 GiB].")
@json_option
@user_errors
def extract(data: Path, cache_dir: str | None, storage_options: dict, on_error: str, workers: int | None, scheduler: str | None,
            dataset: str | None, max_clip_bytes: str | None, as_json: bool, **fields) -> None:  # fmt: skip
    """Extract features of every clip under DATA (a folder of split folders, or a manifest .csv)
    into the store for this config, then record DATA's clips as a dataset snapshot. Clips already
    in the store are not extracted again."""
    if max_clip_bytes is not None:
        try:
            fields["max_clip_bytes"] = cache_mod.parse_size(max_clip_bytes)
        except ValueError as err:
            raise click.BadParameter(str(err), param_hint="--max-clip-bytes") from None
    config = extract_config(**fields)
    if scheduler is None:  # a remote cluster's workers have their own devices
        check_device(config.device)
    summary = run_extract(data, config, cache_dir=cache_dir, on_error=on_error, progress=showing_progress() and not as_json, workers=workers, scheduler=scheduler,
                          dataset=dataset, storage_options=storage_options)  # fmt: skip
    if as_json:
        print_json(summary.to_json())
    else:
        _print_extract_summary(summary)
    if not summary.ok:
        sys.exit(1)


def _print_extract_summary(s: ExtractSummary) -> None:
    rate = s.written / s.seconds if s.seconds else 0.0
    click.echo(f"extracted {s.written} clips, {s.cached} already cached, {s.failed} failed, in {s.seconds:.1f} s ({rate:.1f} clips/s)")
    if s.repaired:
        click.echo(f"re-extracted {s.repaired} clips whose stored rows were damaged")
    if any(s.repairs.values()):
        click.echo(f"boxes: {s.repairs['clipped_boxes']} clipped to the frame, {s.repairs['zero_area_boxes']} of zero area dropped")
    c = s.changes
    click.echo(f"dataset '{s.dataset}': {c['added']} added, {c['changed']} changed, {c['removed']} removed, {c['unchanged']} unchanged")
    if s.replaced_data:
        click.echo(f"note: dataset '{s.dataset}' held the clips of {s.replaced_data} before; pass --dataset NAME to keep datasets apart", err=True)
    _print_leaks(s.leaks)
    click.echo(f"store: {s.store}")
    click.echo(f"fingerprint: {s.fingerprint}")
    for err in s.errors:
        click.echo(f"failed: {err['path']}: field '{err['field']}': {err['message']}", err=True)
    if s.errors_csv:
        click.echo(f"errors listed in {s.errors_csv}", err=True)


def _print_unmatched(keys: list[str], labels: Path | None) -> None:
    if keys:
        shown = ", ".join(keys[:5]) + (f" and {len(keys) - 5} more" if len(keys) > 5 else "")
        click.echo(f"warning: {labels}: {len(keys)} rows match no clip of the dataset and were ignored: {shown}", err=True)


def _print_leaks(leaks: dict[str, list[list[str]]]) -> None:
    """Same content in two splits: a clip evaluated on may have been trained on."""
    for pair, keys in leaks.items():
        shown = "; ".join(f"{a} = {b}" for a, b in keys[:5]) + (f"; and {len(keys) - 5} more" if len(keys) > 5 else "")
        click.echo(f"LEAK {pair}: {len(keys)} clips with the same content in both splits: {shown}", err=True)


def _refuse_extraction_flags(model_fields: dict) -> None:
    """--store names features extracted already: flags that only steer extraction would be ignored."""
    ctx = click.get_current_context()
    flags = {p.name: p.opts[0] for p in ctx.command.params}
    given = [flags[name] for name in model_fields if ctx.get_parameter_source(name) not in (ParameterSource.DEFAULT, ParameterSource.DEFAULT_MAP)]
    if given:
        raise click.UsageError(
            f"{', '.join(given)} with --store: the store already fixes the features (train uses every family it "
            "holds; there is no option to train on a subset), so these flags only apply with --data, which extracts"
        )


def _presets() -> list[str]:
    from .ranker.presets import PRESETS

    return list(PRESETS)


RUN_FILES = ("config.json", "latest.pt", "best.pt", "metrics.csv", "curves.png", "predictions.csv")  # what ranker.train writes


def _earlier_run(run_dir: Path, overwrite: bool) -> list[Path]:
    """The files of an earlier run in ``run_dir``, to remove before training; refused without --overwrite."""
    if not any((run_dir / name).exists() for name in ("config.json", "latest.pt")):
        return []
    if not overwrite:
        raise click.UsageError(f"{run_dir} already holds a run; pass --resume to continue it or --overwrite to replace it")
    from .pipelines.runs import EVALUATE_FILE

    return [run_dir / name for name in RUN_FILES] + sorted(run_dir.glob("predictions-*.csv")) + [run_dir / EVALUATE_FILE]


def _default_run_dir(fingerprint: str) -> Path:
    import time

    return Path("runs") / f"{time.strftime('%Y%m%d-%H%M%S')}-{fingerprint[:8]}"


@main.command()
@click.option("--store", "store_ref", help="Store to train from: fingerprint, unique prefix, or path.")
@click.option("--data", type=click.Path(exists=True, path_type=Path), help="Clips to extract first (instead of --store), with the model flags below.")
@model_options
@cache_dir_option
@click.option("--out", "run_dir", type=click.Path(file_okay=False, path_type=Path), help="Run directory [default: runs/<time>-<fingerprint>].")
@click.option("--config", "config_file", type=click.Path(exists=True, dir_okay=False, path_type=Path), help="JSON or TOML with [model] and [train] sections, or a run's config.json.")
@click.option("--from-run", "from_run", type=click.Path(exists=True, file_okay=False, path_type=Path), help="Start from the settings RUN trained with (its config.json); --config, --set and flags go over them.")
@click.option("--model", "preset", type=click.Choice(sorted(_presets())), help="Model preset [default: the config file's model.preset, else msgvip].")
@click.option("--epochs", type=int, help="Epochs [default: 30].")
@click.option("--batch-size", type=int, help="Clips per step [default: 8].")
@click.option("--lr", type=float, help="Peak learning rate [default: 3e-4].")
@click.option("--seed", type=int, help="Seed [default: 0].")
@click.option("--device", help="cpu, cuda or auto [default: auto].")
@click.option("--patience", type=int, help="Early-stopping patience in epochs [default: 8].")
@click.option("--in-memory", type=click.Choice(["auto", "yes", "no"]), help="Hold the splits in RAM or stream them [default: auto].")
@click.option("--logger", type=click.Choice(["csv", "tensorboard"]), help="csv: metrics.csv only; tensorboard: also scalars in RUN/tb/ for `tensorboard --logdir` [default: csv].")
@click.option("--labels", type=click.Path(exists=True, dir_okay=False, path_type=Path), help="CSV overriding labels and/or splits: clip_id, content_hash or path column, then target and/or split.")
@click.option("--resume", is_flag=True, help="Continue the run in --out from its latest.pt, with its own settings and store (flags may add epochs or change the device).")
@click.option("--overwrite", is_flag=True, help="Replace the run in --out: its checkpoints, metrics and predictions are removed first.")
@dataset_option
@click.option("--allow-duplicates", is_flag=True, help="Train even when the same clip content sits in two splits (recorded in config.json).")
@click.option("--no-probe", "no_probe", is_flag=True, help="Do not fit the probe suite on the train split as the run's baseline.")
@click.option("--set", "settings", multiple=True, metavar="SECTION.KEY=VALUE",
              help="One model or train setting, typed and checked like the config file, e.g. --set model.hidden=32 --set train.lr=2e-3 (repeatable; over --config).")
@user_errors
def train(store_ref, data, cache_dir, storage_options, run_dir, config_file, from_run, preset, epochs, batch_size, lr, seed, device, patience, in_memory, logger,
          labels, resume, overwrite, dataset, allow_duplicates, no_probe, settings, **model_fields) -> None:  # fmt: skip
    """Train the ranker on a dataset's train split, selecting on its val split. With --data the
    dataset is DATA's own snapshot; with --store, --dataset names one (default: the only one)."""
    from .pipelines.train import resume_configs, store_for_training, store_of_run, train_configs
    from .ranker import read_label_overrides, train as train_run
    from .ranker.trainer import run_config

    if resume and run_dir is None:
        raise click.UsageError("--resume needs --out RUN_DIR")
    if run_dir is not None:
        refuse_link(run_dir, "--out")
    if resume and overwrite:
        raise click.UsageError("--resume continues the run in --out and --overwrite replaces it; pass one")
    if resume and from_run is not None:
        raise click.UsageError("--resume continues the run in --out with its own settings; --from-run starts a new run: pass one")
    if store_ref is not None:
        _refuse_extraction_flags(model_fields)
    overrides = {"epochs": epochs, "batch_size": batch_size, "lr": lr, "seed": seed, "device": device, "patience": patience, "in_memory": in_memory, "logger": logger,
                 "probe": False if no_probe else None}  # fmt: skip
    resuming = resume and (run_dir / "config.json").exists()
    if resuming:
        train_config, model_config = resume_configs(run_dir, config_file, overrides, preset, settings)
    else:
        train_config, model_config = train_configs(config_file, overrides, preset, settings, from_run)
    if train_config.device != "auto":  # auto picks what exists
        check_device(train_config.device)
    earlier = _earlier_run(run_dir, overwrite) if run_dir is not None and not resume else []
    if resuming and store_ref is None and data is None:  # the store the run trained on, and its dataset
        store, dataset = store_of_run(run_dir, cache_dir, storage_options), dataset or run_config(run_dir).get("dataset")
    else:
        store, dataset, _ = store_for_training(store_ref, data, extract_config(**model_fields), cache_dir, progress=showing_progress(), dataset=dataset,
                                               storage_options=storage_options)  # fmt: skip
    # removed only now that the store is found, so a failed lookup leaves the old run whole; every
    # torchrun rank may get here, and none writes before all have (the process group waits for them)
    for path in earlier:
        path.unlink(missing_ok=True)
    if earlier:  # the replaced run's events and diagnostics would otherwise show as the new run's
        shutil.rmtree(run_dir / "tb", ignore_errors=True)
        shutil.rmtree(run_dir / "records", ignore_errors=True)
    run_dir = run_dir or _default_run_dir(store.fingerprint)
    summary = train_run(store, run_dir, train_config, model_config, labels=read_label_overrides(labels) if labels else None, resume=resume,
                        dataset=dataset, allow_duplicates=allow_duplicates, progress=showing_progress())  # fmt: skip
    if summary.rank != 0:
        return
    _print_unmatched(summary.unmatched_labels, labels)
    if summary.val:
        click.echo(f"best epoch {summary.best_epoch} of {summary.epochs_run}{' (stopped early)' if summary.stopped_early else ''}, "
                   f"{summary.seconds_per_epoch:.1f} s/epoch, {100 * summary.data_wait_fraction:.1f}% waiting for data")
        if summary.best_epoch == 0 and train_config.keep != "latest":
            click.echo(f"epoch 0 is the model before training, which ranks as its probe: no epoch beat the probe on val at p <= {train_config.probe_p_value:g} "
                       "(train.probe_p_value), so the run keeps it")
        click.echo(f"\nval split (the split the best epoch was chosen on), {summary.val['model']['n']} labeled clips:")
        _print_metrics_table(summary.val)
        if summary.below_probe:
            click.echo(summary.below_probe)
    if summary.checkpoints:
        click.echo("kept " + ", ".join(f"{name} ({size / 1e6:.1f} MB)" for name, size in summary.checkpoints.items()))
    click.echo(f"run: {summary.run_dir}  ({summary.seconds:.0f} s)")


@main.command()
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--split", default="test", show_default=True, help="Split of the dataset to evaluate.")
@cache_dir_option
@click.option("--labels", type=click.Path(exists=True, dir_okay=False, path_type=Path), help="CSV overriding labels and/or splits: clip_id, content_hash or path column, then target and/or split.")
@click.option("--dataset", help="Dataset snapshot to evaluate on [default: the one the run was trained on].")
@json_option
@user_errors
def evaluate(run_dir: Path, split: str, cache_dir: str | None, storage_options: dict, labels: Path | None, dataset: str | None, as_json: bool) -> None:
    """Metrics of a run's best model against the heuristic baselines on one split."""
    from .pipelines.runs import EVALUATE_FILE
    from .pipelines.train import store_of_run
    from .ranker import evaluate_run, read_label_overrides
    from .ranker.trainer import predictions_file, run_config

    store = store_of_run(run_dir, cache_dir, storage_options)
    own = labels is None and dataset in (None, run_config(run_dir).get("dataset"))  # the run's own data, labels and splits
    predictions = run_dir / predictions_file(split) if own else None  # the scores every figure of the run's split is computed from
    result = evaluate_run(run_dir, store, split, labels=read_label_overrides(labels) if labels else None, dataset=dataset, predictions=predictions)
    if split == "test" and own:
        # the run's own test metrics, which `msgvip runs ls` lists; other labels or datasets would not compare between runs
        (run_dir / EVALUATE_FILE).write_text(json.dumps(json_ready(result), indent=2, sort_keys=True, allow_nan=False) + "\n")
    if as_json:
        print_json(result)
        return
    _print_unmatched(result["unmatched_labels"], labels)
    click.echo(f"{result['clips']} clips of split '{split}' of dataset '{result['dataset']}' in store {result['fingerprint'][:12]}")
    _print_metrics_table(result)
    if result.get("below_probe"):
        click.echo(result["below_probe"])
    if predictions is not None:
        click.echo(f"per-person scores: {predictions}")


@main.command()
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("data_or_store")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=Path("predictions.csv"), show_default=True)
@click.option("--split", help="Only this split [default: all clips].")
@cache_dir_option
@click.option("--dataset", help="Dataset snapshot: of the store given, or the name DATA's snapshot is written under [default: DATA's name].")
@user_errors
def predict(run_dir: Path, data_or_store: str, out: Path, split: str | None, cache_dir: str | None, storage_options: dict, dataset: str | None) -> None:
    """Rank the persons of every clip in DATA_OR_STORE and write a ranking CSV. Clips are
    extracted first, with the settings of the run's store, into the run's cache root under a
    snapshot of their own: what the run trains and evaluates on does not change."""
    from .pipelines.train import store_for_prediction
    from .ranker import predict_run

    store, dataset = store_for_prediction(run_dir, data_or_store, cache_dir, storage_options=storage_options, dataset=dataset)
    count = predict_run(run_dir, store, out, split, dataset=dataset)
    click.echo(f"ranked {count} clips -> {out}")


@main.command()
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("clip")
@click.option("--split", help="Only clips of this split [default: any split for a clip id or hash; test for worst:N / best:N].")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), help=".png contact sheet, or .gif / .mp4 of the whole clip [default: RUN_DIR/show/<CLIP>.png].")
@click.option("--frames", default=8, show_default=True, help="Frames on a .png contact sheet, evenly spaced.")
@click.option("--fps", default=8.0, show_default=True, help="Frames per second of a .gif or .mp4.")
@cache_dir_option
@user_errors
def show(run_dir: Path, clip: str, split: str | None, out: Path | None, frames: int, fps: float, cache_dir: str | None, storage_options: dict) -> None:
    """Draw CLIP as the run's best model ranks it: boxes coloured by score, ranks, the labeled
    target ringed, the model's top-1 starred. CLIP is a clip id (e.g. test/clip_00012), a
    content-hash prefix, or worst:N / best:N (the N clips where the target ranked lowest / highest)."""
    from .pipelines.train import store_of_run
    from .views import show_clip
    from .views.show import default_out

    rendered = show_clip(run_dir, clip, out or default_out(run_dir, clip), split=split, frames=frames,
                         store=store_of_run(run_dir, cache_dir, storage_options), fps=fps)  # fmt: skip
    for c in rendered.clips:
        verdict = "unlabeled" if c.correct is None else "right" if c.correct else f"wrong: target ranked {c.target_rank} of {len(c.ranks)}"
        click.echo(f"{c.clip_id} (scene {c.scene or '-'}): {verdict}")
    click.echo(f"wrote {rendered.path}")


@main.command()
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), help="Folder for index.html and its figures [default: RUN_DIR/report].")
@click.option("--split", default="test", show_default=True, help="Split the metrics, breakdowns and gallery are about.")
@cache_dir_option
@user_errors
def report(run_dir: Path, out_dir: Path | None, split: str, cache_dir: str | None, storage_options: dict) -> None:
    """Write one static HTML page about a run (metrics with intervals beside the heuristics,
    learning curves, breakdowns, rank of the target, worst mistakes, config); it opens from the
    file system in any browser, offline."""
    if out_dir is not None:
        refuse_link(out_dir, "--out")
    from .pipelines.train import store_of_run
    from .views import write_report

    path = write_report(run_dir, out_dir, store=store_of_run(run_dir, cache_dir, storage_options), split=split)
    click.echo(f"report: {path}")


@main.command()
@click.option("--store", "store_ref", required=True, help="Store to probe: fingerprint, unique prefix, or path.")
@cache_dir_option
@dataset_option
@click.option("--features", help="Comma-separated feature families to probe [default: every family the store holds].")
@click.option("--labels", type=click.Path(exists=True, dir_okay=False, path_type=Path), help="CSV overriding labels and/or splits: clip_id, content_hash or path column, then target and/or split.")
@json_option
@user_errors
def probe(store_ref: str, cache_dir: str | None, storage_options: dict, dataset: str | None, features: str | None, labels: Path | None, as_json: bool) -> None:
    """How far simple scorers get on time-pooled per-person statistics of a store: logistic
    regression, linear SVM and k-NN on each feature family and on all together, trained on train
    persons, hyper-parameters chosen on val Rank@1, test metrics beside the two heuristics."""
    from .ranker import read_label_overrides
    from .ranker.probe import format_probe_table, probe_store

    store = cache_mod.resolve_store(cache_mod.cache_root(cache_dir, storage_options), store_ref)
    families = [f.strip() for f in features.split(",") if f.strip()] if features else None
    report = probe_store(store, dataset, families, progress=showing_progress() and not as_json, labels=read_label_overrides(labels) if labels else None)
    if as_json:
        print_json(report.to_json())
        return
    click.echo(format_probe_table(report))


@main.command()
@click.option("--store", "store_ref", required=True, help="Store to train from: fingerprint, unique prefix, or path.")
@cache_dir_option
@dataset_option
@click.option("--space", "space_file", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="TOML search space: [train] and [model] keys set to one value, a list of choices or a {low, high} range (see examples/sweep_space.toml).")
@click.option("--trials", type=click.IntRange(min=1), help="Trials to run now [default: for a grid, every point not run yet; required otherwise].")
@click.option("--seeds", type=click.IntRange(min=1), default=1, show_default=True, help="Seeds per trial; its value is the mean of their best val Rank@1.")
@click.option("--jobs", type=click.IntRange(min=1), default=1, show_default=True, help="Trials at once, each in a worker process that reads the store once.")
@click.option("--storage", help="Optuna RDB URL of the study; a PostgreSQL one lets several machines join it [default: sqlite:///OUT/study.db].")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), help="Sweep folder: one run directory per trial and seed; names the study [default: runs/sweep-<time>-<fingerprint>].")
@click.option("--model", "preset", type=click.Choice(sorted(_presets())), help="Model preset [default: the space's model.preset, else msgvip].")
@click.option("--set", "settings", multiple=True, metavar="SECTION.KEY=VALUE", help="A value fixed for every trial, over the space file's, as for `msgvip train --set` (repeatable).")
@user_errors
def sweep(store_ref: str, cache_dir: str | None, storage_options: dict, dataset: str | None, space_file: Path, trials: int | None, seeds: int,
          jobs: int, storage: str | None, out: Path | None, preset: str | None, settings: tuple[str, ...]) -> None:  # fmt: skip
    """Search training and model options with an Optuna study (TPE, or a grid when the space
    holds lists only; median pruning on val Rank@1 per epoch). Each trial is an ordinary run
    directory in OUT; rerunning with the same OUT adds trials to the same study. See the runs with
    `msgvip runs ls OUT`, the study with `optuna-dashboard URL`."""
    import time

    from .pipelines.sweep import format_summary, run_sweep

    if out is not None:
        refuse_link(out, "--out")
    store = cache_mod.resolve_store(cache_mod.cache_root(cache_dir, storage_options), store_ref)
    out = out or Path("runs") / f"sweep-{time.strftime('%Y%m%d-%H%M%S')}-{store.fingerprint[:8]}"
    summary = run_sweep(store, space_file, out, trials=trials, seeds=seeds, jobs=jobs, storage=storage, dataset=dataset, preset=preset, settings=settings,
                        progress=showing_progress())  # fmt: skip
    click.echo(format_summary(summary))


@main.group()
def runs() -> None:
    """List training runs (compare two with `msgvip compare`)."""


@runs.command("ls")
@click.argument("root", metavar="[DIR]", required=False, default=Path("runs"), type=click.Path(file_okay=False, path_type=Path))
@click.option("--sort", "sort_by", metavar="METRIC", help="Best first by a val_* or test_* metric, e.g. val_rank@1 or test_mrr [default: by name].")
@click.option("--wide", is_flag=True, help="Every metric, and options uncut, however wide the lines get.")
@json_option
@user_errors
def runs_ls(root: Path, sort_by: str | None, wide: bool, as_json: bool) -> None:
    """The runs in DIR (default: runs), up to two folders deep: what sets each apart from its
    preset's defaults, its best val and its test metrics (from `msgvip evaluate`), and mean ± std
    over the seeds of each setting. A damaged run, or one whose store is gone, is listed with its
    problem below the table."""
    from .pipelines import runs as runs_mod

    rows = runs_mod.list_runs(root)
    if sort_by:
        rows = runs_mod.sort_runs(rows, sort_by)
    groups = runs_mod.group_by_seed(rows)
    if as_json:
        print_json(runs_mod.runs_json(rows, groups))
        return
    shrink = None if wide else "OPTIONS"
    if runs_mod.shared_options_str(rows):
        text = f"all runs: {runs_mod.shared_options_str(rows)}"
        click.echo(text if wide else textwrap.fill(text, shutil.get_terminal_size((120, 24)).columns, subsequent_indent="  ", break_on_hyphens=False))
    print_table(*runs_mod.runs_table(rows, wide), shrink=shrink)
    if groups:
        click.echo("over seeds (mean ± std):")
        print_table(*runs_mod.groups_table(groups, runs_mod.shared_options(rows), wide), shrink=shrink)
    for line in runs_mod.problems(rows):
        click.echo(f"problem: {line}")
    click.echo(f"{len(rows)} runs in {root}, {sum(r.problem is not None for r in rows)} with a problem")


@main.command()
@click.argument("run_a", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("run_b", type=click.Path(exists=True, file_okay=False, path_type=Path), required=False)
@click.option("--probe", "against_probe", is_flag=True, help="Compare RUN_A's model (B) with its own probe baseline (A) instead of with RUN_B.")
@click.option("--split", default="test", show_default=True, help="Split of the dataset both runs are scored on.")
@cache_dir_option
@click.option("--dataset", help="Dataset snapshot to score both runs on [default: the one each run was trained on].")
@json_option
@user_errors
def compare(run_a: Path, run_b: Path | None, against_probe: bool, split: str, cache_dir: str | None, storage_options: dict, dataset: str | None, as_json: bool) -> None:
    """Score two runs (or a run and its probe, --probe) on the same clips and say whether B differs
    from A by more than those clips can tell: a paired bootstrap (10,000 resamples) of B - A for
    Rank@1 and MRR."""
    from .pipelines.runs import compare_runs, compare_with_probe, comparison_summary_str, comparison_table
    from .pipelines.train import store_of_run

    if (run_b is None) != against_probe:
        raise click.UsageError("give two runs (RUN_A RUN_B), or one run and --probe")
    store_a = store_of_run(run_a, cache_dir, storage_options)
    if against_probe:
        result = compare_with_probe(run_a, store_a, split, dataset=dataset)
    else:
        result = compare_runs(run_a, run_b, store_a, split, dataset=dataset, store_b=store_of_run(run_b, cache_dir, storage_options))
    if as_json:
        print_json(result)
        return
    click.echo(comparison_summary_str(result))
    print_table(*comparison_table(result))


@main.group("import-checkpoint")
def import_checkpoint() -> None:
    """Turn a checkpoint of another trainer into an msgvip run directory (evaluate / predict take it)."""


@import_checkpoint.command("svip")
@click.argument("checkpoint", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--store", "store_ref", required=True, help="Store with appearance (--pooling cls) and svip_box features: fingerprint, unique prefix, or path.")
@click.option("--out", "run_dir", required=True, type=click.Path(file_okay=False, path_type=Path), help="Run directory to write (must not hold a run).")
@cache_dir_option
@dataset_option
@user_errors
def import_svip(checkpoint: Path, store_ref: str, run_dir: Path, cache_dir: str | None, storage_options: dict, dataset: str | None) -> None:
    """Import svip's last.pt / best.pt (github.com/yml2002/svip) as a run of the svip preset."""
    from .ranker.svip_import import import_svip_checkpoint

    store = cache_mod.resolve_store(cache_mod.cache_root(cache_dir, storage_options), store_ref)
    out = import_svip_checkpoint(checkpoint, store, run_dir, dataset)
    click.echo(f"imported {checkpoint} into {out} (model svip, store {store.fingerprint[:12]}); try `msgvip evaluate {out}`")


def _with_interval(metrics: dict, key: str) -> str:
    interval = metrics.get("intervals", {}).get(key)
    return f"{metrics[key]:.3f}" + (f" [{interval[0]:.2f}, {interval[1]:.2f}]" if interval else "")


def _print_metrics_table(result: dict) -> None:
    names = [n for n in ("model", "probe", "largest_box", "most_central") if n in result]
    columns = (("rank@1", True), ("rank@2", False), ("rank@3", False), ("mrr", True), ("map_trapezoid", False))
    rows = [[n, result[n]["n"], *(_with_interval(result[n], k) if wide else f"{result[n][k]:.3f}" for k, wide in columns)] for n in names]
    print_table(["", "CLIPS", "RANK@1 [95% CI]", "RANK@2", "RANK@3", "MRR [95% CI]", "mAP (trapezoid)"], rows)
    click.echo("mAP (trapezoid): 1 at rank 1, else 1/(2r), as the important-people papers report it; the one-relevant-item AP (1/r) equals MRR")
    if "probe" in result:
        click.echo(f"probe: {result['probe']['about']}, fitted on the train split and chosen on val Rank@1 ({result['probe']['val_rank@1']:.3f}), as `msgvip probe` fits it")
    model = result["model"]
    for title, key in (("persons", "by_persons"), ("scene", "by_scene")):
        parts = [f"{k}: {v['rank@1']:.3f} (n={v['n']})" for k, v in model.get(key, {}).items() if v["n"]]
        if parts:
            click.echo(f"model Rank@1 by {title}: " + ", ".join(parts))


@main.group()
def cache() -> None:
    """See, check and prune the feature stores."""


@cache.command("ls")
@cache_dir_option
@json_option
@click.option("-q", "--quiet", is_flag=True, help="Print fingerprints only.")
@user_errors
def cache_ls(cache_dir: str | None, storage_options: dict, as_json: bool, quiet: bool) -> None:
    """List the stores, most recently used first; a damaged store is listed as such."""
    root = cache_mod.cache_root(cache_dir, storage_options)
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
            [s.fingerprint[:12], ",".join(s.features) or "-", ",".join(s.models) or "-", ",".join(s.datasets) or "-", s.clips,
             s.size_on_disk_str, s.created_str if s.created else "-", s.last_used_str if s.last_used else "-", len(s.runs), "yes" if s.pinned else "", s.state_str]
            for s in scan.stores
        ]  # fmt: skip
        print_table(["FINGERPRINT", "FEATURES", "MODELS", "DATASETS", "CLIPS", "SIZE", "CREATED", "LAST USED", "RUNS", "PINNED", "STATE"], rows)
        click.echo(f"\n{len(scan.stores)} stores, {cache_mod.human_size(scan.size_on_disk)} on disk in {root.url}")


@cache.command("info")
@click.argument("fingerprint")
@cache_dir_option
@json_option
@user_errors
def cache_info(fingerprint: str, cache_dir: str | None, storage_options: dict, as_json: bool) -> None:
    """Config, datasets (clips per split, leaks between splits) and arrays of one store
    (FINGERPRINT may be a unique prefix)."""
    store = cache_mod.resolve_store(cache_mod.cache_root(cache_dir, storage_options), fingerprint)
    info = cache_mod.store_info(store.storage, store.fingerprint)
    record = {**info.to_json(), "config": store.config, "arrays": [a.to_json() for a in store.specs]}
    if as_json:
        print_json(record)
        return
    click.echo(f"fingerprint  {info.fingerprint}\nlocation     {info.location}\nclips        {info.clips} distinct contents")
    click.echo(f"size         {info.size_on_disk_str}\ncreated      {info.created_str}\nlast used    {info.last_used_str}")
    click.echo(f"pinned       {'yes' if info.pinned else 'no'}\nstate        {info.state_str}")
    for name, d in info.datasets.items():
        splits = ", ".join(f"{s}: {n}" for s, n in d["splits"].items()) or "none"
        failed = f", {d['failed']} failed at extraction" if d["failed"] else ""
        click.echo(f"dataset      {name}: {d['clips']} clips ({splits}{failed}) from {d['data']}")
        _print_leaks(d["leaks"])
    for a in store.specs:
        click.echo(f"array        {a.name} (row{''.join(', ' + d for d in a.dims)}) {a.dtype}")
    click.echo("config\n" + json.dumps(store.config, indent=2, sort_keys=True))


@cache.command("verify")
@click.argument("fingerprint")
@cache_dir_option
@json_option
@user_errors
def cache_verify(fingerprint: str, cache_dir: str | None, storage_options: dict, as_json: bool) -> None:
    """Check every byte that changes results: metadata, commit records, snapshots and every
    clip's rows; exit 1 if anything is bad."""
    store = cache_mod.resolve_store(cache_mod.cache_root(cache_dir, storage_options), fingerprint)
    with store.lease():
        problems = store.verify()
    bad = [{"what": what, "problem": problem} for what, problem in problems]
    if as_json:
        print_json({"fingerprint": store.fingerprint, "clips": len(store), "bad": bad, "ok": not bad})
    else:
        for b in bad:
            click.echo(f"BAD {b['what']}: {b['problem']}")
        click.echo(f"verified {len(store)} clips, {len(store.snapshot_names())} datasets and the metadata of {store.fingerprint}: {len(bad)} problems")
    if bad:
        sys.exit(1)


@cache.command("compact")
@click.argument("fingerprint")
@cache_dir_option
@json_option
@user_errors
def cache_compact(fingerprint: str, cache_dir: str | None, storage_options: dict, as_json: bool) -> None:
    """Merge a store's segments into one and drop rows no dataset snapshot references (left by
    killed writers, deleted or edited clips). Needs the store to itself."""
    store = cache_mod.resolve_store(cache_mod.cache_root(cache_dir, storage_options), fingerprint)
    summary = compact_store(store.storage, store.fingerprint)
    if as_json:
        print_json(asdict(summary))
        return
    click.echo(f"compacted {summary.segments_before} segments into one: kept {summary.clips_kept} clips, dropped {summary.clips_dropped} "
               f"no dataset references, {cache_mod.human_size(summary.bytes_before)} -> {cache_mod.human_size(summary.bytes_after)} "
               f"in {summary.seconds:.1f} s")  # fmt: skip
    for digest in summary.damaged:
        click.echo(f"dropped damaged clip {digest}: rerun `msgvip extract` on its data to re-extract it", err=True)


@cache.command("gc")
@cache_dir_option
@click.option("--keep-last", type=click.IntRange(min=0), help="Keep only the N most recently used stores.")
@click.option("--older-than", help="Remove stores last used longer ago than this (e.g. 30d, 12h).")
@click.option("--max-size", help="Evict least recently used stores until the cache fits (e.g. 20G).")
@click.option("--incomplete", is_flag=True, help="Remove stores whose last extraction did not complete.")
@click.option("--old-schema", is_flag=True, help="Remove stores written by an older msgvip (they cannot be read; rebuild them with extract).")
@click.option("--include-referenced", is_flag=True, help="Also remove stores that training runs use (their runs can no longer be evaluated).")
@click.option("--dry-run", is_flag=True, help="Print what would be removed; remove nothing.")
@user_errors
def cache_gc(cache_dir: str | None, storage_options: dict, keep_last: int | None, older_than: str | None, max_size: str | None,
             incomplete: bool, old_schema: bool, include_referenced: bool, dry_run: bool) -> None:  # fmt: skip
    """Remove stores by policy. Pinned stores, stores in use and damaged stores are never removed;
    stores a run uses (it registered when it trained) only with --include-referenced."""
    try:
        older = cache_mod.parse_duration(older_than) if older_than else None
        size = cache_mod.parse_size(max_size) if max_size else None
    except ValueError as err:
        raise click.BadParameter(str(err)) from None
    root = cache_mod.cache_root(cache_dir, storage_options)
    scan = cache_mod.scan_cache(root)
    plan = cache_mod.plan_gc(scan, keep_last=keep_last, older_than=older, max_size=size, incomplete=incomplete, old_schema=old_schema,
                             include_referenced=include_referenced)  # fmt: skip
    for info, reason in plan.spared:
        click.echo(f"keep   {info.fingerprint[:12]}  {info.size_on_disk_str:>7}  {reason}")
    for info, reason in plan.delete:
        click.echo(f"remove {info.fingerprint[:12]}  {info.size_on_disk_str:>7}  {reason}")
    if dry_run:
        click.echo(f"dry run: would free {cache_mod.human_size(plan.expected_freed)} in {root.url}")
        return
    if not plan.delete:
        click.echo(f"nothing to remove in {root.url}")
        return
    outcomes = cache_mod.execute_gc(plan, root, include_referenced)
    for info, outcome in outcomes:
        if outcome != "deleted":
            click.echo(f"{info.fingerprint[:12]}: {outcome}")
    freed = sum(i.size_on_disk for i, o in outcomes if o == "deleted")
    click.echo(f"freed {cache_mod.human_size(freed)} ({sum(o == 'deleted' for _, o in outcomes)} stores) in {root.url}")


def _set_pinned(fingerprint: str, cache_dir: str | None, storage_options: dict, pinned: bool) -> None:
    store = cache_mod.resolve_store(cache_mod.cache_root(cache_dir, storage_options), fingerprint)
    store.set_pinned(pinned)
    click.echo(f"{'pinned' if pinned else 'unpinned'} {store.fingerprint}")


@cache.command("pin")
@click.argument("fingerprint")
@cache_dir_option
@user_errors
def cache_pin(fingerprint: str, cache_dir: str | None, storage_options: dict) -> None:
    """Protect a store from gc."""
    _set_pinned(fingerprint, cache_dir, storage_options, True)


@cache.command("unpin")
@click.argument("fingerprint")
@cache_dir_option
@user_errors
def cache_unpin(fingerprint: str, cache_dir: str | None, storage_options: dict) -> None:
    """Let gc remove a store again."""
    _set_pinned(fingerprint, cache_dir, storage_options, False)


if __name__ == "__main__":
    main()
