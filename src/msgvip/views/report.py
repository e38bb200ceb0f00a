"""`msgvip report`: one static HTML page about a run, readable from the file system offline.

The page holds the run's metrics on a split with their bootstrap intervals beside the two
heuristic baselines, the learning curves, the breakdowns by scene and by number of persons, the
distribution of the target's rank, a gallery of the worst mistakes (``msgvip show`` contact
sheets) and the run's whole config. Everything is inline (SVG charts, PNG images as data URIs,
no script, no font or style from elsewhere), so the one file can be mailed or archived; the
figures are also written beside it (``figures/*.svg``, ``gallery/*.png``) for papers.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import math
import re
import unicodedata
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..config import ConfigError
from ..files import file_name_of, read_regular_text
from ..data.clip import display_path
from ..ranker.trainer import evaluated_epoch, evaluation, load_checkpoint, run_checkpoint, run_config, scored_split
from ..store.feature_store import FeatureStore
from .show import ClipScores, render_clips, scores_from_model, worst_first

SECTIONS = {  # id -> heading, in page order
    "metrics": "Metrics",
    "curves": "Learning curves",
    "by-scene": "By scene",
    "by-persons": "By number of persons",
    "rank-distribution": "Rank of the target",
    "gallery": "Worst mistakes",
    "config": "Run config",
}
METHODS = {"model": "model", "probe": "probe", "largest_box": "largest box", "most_central": "most central"}
COLUMNS = {  # metric key -> column heading; "map" is the older name of map_trapezoid
    "rank@1": "Rank@1", "rank@2": "Rank@2", "rank@3": "Rank@3", "mrr": "MRR",
    "map_trapezoid": "mAP (trapezoid)", "map_standard": "mAP (standard)",
}  # fmt: skip
METHOD_COLOURS = {"model": "#2c7fb8", "probe": "#5aae61", "largest_box": "#9e9e9e", "most_central": "#e6a117"}
GALLERY_CLIPS = 8
MISSING = "\u2014"


def write_report(
    run_dir: Path, out_dir: Path | None = None, store: FeatureStore | None = None, split: str = "test", gallery: int = GALLERY_CLIPS, frames: int = 8
) -> Path:
    """Write ``out_dir/index.html`` (default ``out_dir``: ``run_dir/report``) for a finished run.

    Args:
        run_dir: a finished run directory.
        out_dir: where the page and its figure files go (created).
        store: the run's store (default: found as ``msgvip evaluate`` finds it).
        split: the split the metrics, breakdowns and gallery are about (default ``test``).
        gallery: most mistakes shown, worst first (default 8).
        frames: frames per gallery contact sheet (default 8).

    Returns:
        The path of the page.
    """
    run_dir = Path(run_dir)
    config = run_config(run_dir)
    if store is None:
        from ..pipelines.train import store_of_run

        store = store_of_run(run_dir, None)
    out_dir = Path(out_dir) if out_dir is not None else run_dir / "report"
    (out_dir / "figures").mkdir(parents=True, exist_ok=True)
    (out_dir / "gallery").mkdir(parents=True, exist_ok=True)

    history = read_history(run_dir / "metrics.csv")
    best_epoch = evaluated_epoch(load_checkpoint(run_checkpoint(run_dir)))  # no checkpoint: run_checkpoint says so, as scoring would
    scored = scored_split(run_dir, store, split, None, "cpu", config.get("dataset"), with_probe=True)  # once, for the metrics and the gallery
    result = evaluation(run_dir, scored, store)
    views = scores_from_model(scored.data.entries, scored.scores, scored.data.valid_slots().numpy())
    labeled = [v for v in views if v.entry.target >= 0]

    figures = {
        "curves": _curves_figure(history, best_epoch) if history else None,
        "by-scene": _breakdown_figure(result, "by_scene", "scene"),
        "by-persons": _breakdown_figure(result, "by_persons", "persons in the clip"),
        "rank-distribution": _rank_figure(labeled) if labeled else None,
    }
    for name, svg in figures.items():  # an earlier report's figure this one lacks is removed, not left to mislead
        (out_dir / "figures" / f"{name}.svg").unlink(missing_ok=True)
        if svg:
            (out_dir / "figures" / f"{name}.svg").write_text(svg)
    for stale in (out_dir / "gallery").glob("[0-9][0-9]-*.png"):
        stale.unlink()
    sections = {
        "metrics": _metrics_section(result),
        "curves": _figure_html(figures["curves"], "curves", "metrics.csv holds no epochs: no learning curves.", _curves_caption(history, best_epoch)),
        "by-scene": _breakdown_section(result, "by_scene", "scene", figures["by-scene"]),
        "by-persons": _breakdown_section(result, "by_persons", "persons", figures["by-persons"]),
        "rank-distribution": _rank_section(labeled, figures["rank-distribution"]),
        "gallery": _gallery_section(run_dir, labeled, store, out_dir, gallery, frames, split),
        "config": _config_section(config),
    }
    page = _page(run_dir, config, result, split, history, best_epoch, sections)
    path = out_dir / "index.html"
    path.write_text(page, encoding="utf-8")
    return path


# ---------------------------------------------------------------------------------------- inputs
def read_history(path: Path) -> list[dict[str, float]]:
    """The rows of a run's metrics.csv as numbers; [] when there is no such file."""
    try:
        rows = list(csv.DictReader(io.StringIO(read_regular_text(path, within=path.parent), newline="")))
    except FileNotFoundError:
        return []
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path}: unreadable ({err}); the run directory is damaged") from None
    history = []
    for number, row in enumerate(rows, start=2):
        try:
            history.append({k: float(v) for k, v in row.items()})
        except (TypeError, ValueError):
            bad = next((k for k, v in row.items() if not _is_number(v)), "?")
            raise ConfigError(f"{path}: row {number}: column {bad!r}: {row.get(bad)!r} is not a number; the run directory is damaged") from None
    return history


def _is_number(value) -> bool:
    try:
        float(value)
    except (TypeError, ValueError):
        return False
    return True


# ---------------------------------------------------------------------------------------- formatting
def _esc(value) -> str:
    return html.escape(display_path(str(value)), quote=True)


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _num(value, digits: int = 3) -> str:
    return f"{value:.{digits}f}" if _finite(value) else MISSING


def _metric(summary: dict | None, key: str) -> str:
    """A metric cell: the value, and its interval under it when the metrics carry one."""
    summary = summary or {}
    value = summary.get(key, summary.get("map") if key == "map_trapezoid" else None)
    interval = (summary.get("intervals") or {}).get(key)
    cell = _num(value)
    if interval and len(interval) == 2 and all(_finite(v) for v in interval):
        cell += f'<span class="ci">[{interval[0]:.3f}, {interval[1]:.3f}]</span>'
    return cell


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]], numeric_from: int = 1) -> str:
    """An HTML table; cells are HTML already; columns from ``numeric_from`` are right-aligned."""
    head = "".join(f'<th{" class=num" if i >= numeric_from else ""}>{h}</th>' for i, h in enumerate(headers))
    body = "".join("<tr>" + "".join(f'<td{" class=num" if i >= numeric_from else ""}>{c}</td>' for i, c in enumerate(row)) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _figure_html(svg: str | None, name: str, missing: str, caption: str = "") -> str:
    if not svg:
        return f'<p class="note">{_esc(missing)}</p>'
    link = f' <a href="figures/{name}.svg">SVG file</a>'
    return f'<figure class="chart">{svg}<figcaption>{caption}{link}</figcaption></figure>'


# ---------------------------------------------------------------------------------------- sections
def _metrics_section(result: dict) -> str:
    methods = [m for m in METHODS if m in result]
    rows = [[METHODS[m], str(result[m].get("n", MISSING)), *(_metric(result[m], k) for k in COLUMNS)] for m in methods]
    notes = []
    if result.get("below_probe"):
        notes.append(f"<b>{_esc(result['below_probe'])}</b>")
    if "probe" in result:
        notes.append(f"probe: {_esc(result['probe'].get('about'))}, the run's baseline: the probe suite of <code>msgvip probe</code> fitted on the "
                     f"train split and chosen on val Rank@1 ({_num(result['probe'].get('val_rank@1'))}).")  # fmt: skip
    boot = result.get("model", {}).get("bootstrap")
    if boot:
        notes.append(
            f"Brackets: {100 * boot.get('level', 0.95):.0f}% percentile bootstrap intervals over clips "
            f"({boot.get('resamples', '?')} resamples, seed {boot.get('seed', '?')}): how far a metric would move on another draw of clips like these."
        )
    else:
        notes.append("These metrics carry no intervals.")
    notes.append("mAP (trapezoid) is the important-people literature's: 1 at rank 1, 1/(2r) at rank r &gt; 1. "
                 "mAP (standard) is plain average precision, which equals MRR with one target per clip.")  # fmt: skip
    if result.get("model", {}).get("n_unlabeled"):
        notes.append(f"{result['model']['n_unlabeled']} unlabeled clips are left out of every metric.")
    return _table(["", "clips", *COLUMNS.values()], rows) + "".join(f'<p class="note">{n}</p>' for n in notes)


def _breakdown_methods(result: dict, key: str) -> list[str]:
    """The methods whose metrics hold the breakdown ``key`` (the model first)."""
    return [m for m in METHODS if isinstance((result.get(m) or {}).get(key), dict)]


def _breakdown_rows(result: dict, key: str) -> list[tuple[str, dict]]:
    """(group, {method: summary}) of the groups holding clips, in the model's metrics' order."""
    methods = _breakdown_methods(result, key)
    if "model" not in methods:
        return []
    return [(group, {m: result[m][key].get(group) for m in methods}) for group, summary in result["model"][key].items() if summary.get("n")]


def _breakdown_section(result: dict, key: str, label: str, svg: str | None) -> str:
    rows = _breakdown_rows(result, key)
    if not rows:
        return f'<p class="note">{MISSING} The metrics of this run hold no breakdown {"by scene" if key == "by_scene" else "by persons"}.</p>'
    methods = _breakdown_methods(result, key)
    headers = [label, "clips", *(f"{METHODS[m]} Rank@1" for m in methods), "model MRR"]
    table = _table(headers, [[_esc(group or MISSING), str(s["model"]["n"]), *(_metric(s.get(m), "rank@1") for m in methods), _metric(s["model"], "mrr")] for group, s in rows])
    return _figure_html(svg, key.replace("_", "-"), "", "Rank@1 per group, with its interval where the metrics carry one.") + table


def _rank_section(views: list[ClipScores], svg: str | None) -> str:
    if not views:
        return f'<p class="note">{MISSING} No labeled clips on this split.</p>'
    counts = Counter(v.target_rank for v in views)
    total, running, rows = len(views), 0, []
    for rank in range(1, max(counts) + 1):
        running += counts[rank]
        rows.append([str(rank), str(counts[rank]), f"{counts[rank] / total:.3f}", f"{running / total:.3f}"])
    caption = "How far down the model's ranking the labeled target sits (1 = ranked first); the cumulative share at r is Rank@r."
    return _figure_html(svg, "rank-distribution", "", caption) + _table(["rank of the target", "clips", "share", "cumulative (Rank@r)"], rows)


def _gallery_section(run_dir: Path, views: list[ClipScores], store: FeatureStore, out_dir: Path, count: int, frames: int, split: str) -> str:
    mistakes = [v for v in worst_first(views) if v.target_rank > 1][:count]
    if not mistakes:
        return f'<p class="note">No mistakes: the model ranks the target first in every labeled clip of split {_esc(split)}.</p>'
    parts = [f'<p class="note">The {len(mistakes)} clips where the target ranked lowest (ties: by how far its score fell short), worst first. '
             f"Box colour: the model's score; red ring: the labeled target; star: the model's top-1.</p>"]  # fmt: skip
    for i, view in enumerate(mistakes, start=1):
        name = f"{i:02d}-{file_name_of(view.entry.key)}.png"
        rendered = render_clips([view], store, out_dir / "gallery" / name, frames)
        image = base64.b64encode(rendered.path.read_bytes()).decode("ascii")
        command = f"msgvip show {run_dir} {view.entry.key} --out {Path(view.entry.key).name}.mp4"
        parts.append(  # the inline image opens the full-size file beside the page
            f'<figure class="sheet" id="clip-{i}"><a href="gallery/{name}"><img alt="{_esc(view.entry.key)}" src="data:image/png;base64,{image}"></a>'
            f"<figcaption><b>{_esc(view.entry.key)}</b>: target ranked {view.target_rank} of {len(view.scores)}, "
            f"{view.margin:.3f} below the top score. As a video: <code>{_esc(command)}</code></figcaption></figure>"
        )
    return "".join(parts)


def _config_section(config: dict) -> str:
    parts = []
    for group in ("train", "model"):
        values = config.get(group)
        if isinstance(values, dict):
            rows = [[_esc(k), f"<code>{_esc(json.dumps(v))}</code>"] for k, v in sorted(values.items())]
            parts.append(f"<div><h3>{group}</h3>" + _table(["key", "value"], rows, numeric_from=2) + "</div>")
    rest = [[_esc(k), f"<code>{_esc(json.dumps(v, sort_keys=True))}</code>"] for k, v in sorted(config.items()) if k not in ("train", "model")]
    parts.append("<div><h3>data and store</h3>" + _table(["key", "value"], rest, numeric_from=2) + "</div>")
    return f'<div class="columns">{"".join(parts)}</div>'


def _trained(history: list[dict]) -> int:
    """Epochs trained: the rows of metrics.csv but epoch 0 (the probe, before training)."""
    return sum(int(h["epoch"]) > 0 for h in history)


def _curves_caption(history: list[dict], best_epoch: int | None) -> str:
    if not history:
        return ""
    seconds = sum(h.get("seconds", 0.0) for h in history)
    best = f"; dashed line: the best epoch ({best_epoch}), whose checkpoint the metrics above are of" if best_epoch is not None else ""
    probe = "; epoch 0 is the model before training, which ranks as its probe" if int(history[0]["epoch"]) == 0 else ""
    return f"{_trained(history)} epochs, {seconds:.0f} s of training{best}{probe}."


def _page(run_dir: Path, config: dict, result: dict, split: str, history: list, best_epoch: int | None, sections: dict[str, str]) -> str:
    model = result.get("model", {})
    facts = [
        ("dataset", result.get("dataset", config.get("dataset"))), ("split", split), ("clips", result.get("clips")),
        ("store", str(config.get("fingerprint", ""))[:12]), ("families", ", ".join(config.get("families", []))),
        ("best epoch", MISSING if best_epoch is None else f"{best_epoch} of {_trained(history)}" + (" (the probe: no epoch beat it on val)" if best_epoch == 0 else "")),
        ("model Rank@1", _num(model.get("rank@1"))),
    ]  # fmt: skip
    summary = " &middot; ".join(f"{_esc(k)} <b>{_esc(v)}</b>" for k, v in facts)
    nav = " ".join(f'<a href="#{key}">{_esc(title)}</a>' for key, title in SECTIONS.items())
    body = "".join(f'<section id="{key}"><h2>{_esc(SECTIONS[key])}</h2>{sections[key]}</section>' for key in SECTIONS)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="icon" href="data:,">
<title>msgvip report: {_esc(run_dir.name)}</title>
<style>{_STYLE}</style></head>
<body><header><h1>Run report: {_esc(run_dir.name)}</h1><p class="path">{_esc(run_dir.resolve())}</p><p>{summary}</p><nav>{nav}</nav></header>
<main>{body}</main>
<footer>Written by <code>msgvip report</code>. Figures as files: figures/*.svg, gallery/*.png beside this page.</footer>
</body></html>
"""


_STYLE = """
:root { color-scheme: light; --ink: #1d1d1f; --muted: #6e6e73; --rule: #d2d2d7; --accent: #2c7fb8; }
body { font-family: -apple-system, "Segoe UI", "DejaVu Sans", Helvetica, Arial, sans-serif; color: var(--ink);
       margin: 0; background: #fafafa; line-height: 1.45; }
header, main, footer { max-width: 1800px; margin: 0 auto; padding: 0 24px; }
header { padding-top: 20px; border-bottom: 1px solid var(--rule); padding-bottom: 12px; background: #fff; }
h1 { margin: 0 0 4px; font-size: 1.6em; }
h2 { border-bottom: 2px solid var(--accent); padding-bottom: 4px; margin-top: 36px; }
h3 { margin-bottom: 6px; }
.path { color: var(--muted); margin: 0 0 6px; font-size: 0.9em; }
nav a { margin-right: 14px; color: var(--accent); text-decoration: none; font-weight: 600; }
table { border-collapse: collapse; background: #fff; margin: 10px 0; font-variant-numeric: tabular-nums; }
th, td { border-bottom: 1px solid var(--rule); padding: 5px 12px; text-align: left; vertical-align: top; }
th { background: #f0f0f3; }
td.num, th.num { text-align: right; }
.ci { display: block; color: var(--muted); font-size: 0.8em; }
.columns { display: flex; flex-wrap: wrap; gap: 0 40px; align-items: flex-start; }
.note { color: var(--muted); max-width: 60em; }
figure { margin: 12px 0 20px; }
figure.chart svg { max-width: 100%; height: auto; background: #fff; }
figure.sheet img { max-width: 100%; height: auto; border: 1px solid var(--rule); }
figcaption { color: var(--muted); font-size: 0.9em; }
code { font-size: 0.9em; word-break: break-all; }
footer { color: var(--muted); font-size: 0.85em; padding-top: 30px; padding-bottom: 30px; }
"""


# ---------------------------------------------------------------------------------------- figures
def _svg(fig, name: str) -> str:
    """A matplotlib figure as an inline <svg> element (call inside :func:`_style`), its ids
    prefixed with ``name``: matplotlib numbers them per figure (figure_1, patch_1, ...), so two
    figures on one page would otherwise share ids."""
    import matplotlib.pyplot as plt

    buffer = io.StringIO()
    fig.savefig(buffer, format="svg", metadata={"Date": None}, bbox_inches="tight")
    plt.close(fig)
    text = buffer.getvalue()
    text = text[text.index("<svg") :]  # the XML prolog and doctype have no place inside HTML
    text = re.sub(r'\bid="([^"]+)"', rf'id="{name}-\1"', text)
    text = re.sub(r"url\(#([^)]+)\)", rf"url(#{name}-\1)", text)
    return re.sub(r'href="#([^"]+)"', rf'href="#{name}-\1"', text)


def _style(name: str):
    """The figures' matplotlib settings, for the figure ``name`` only (the caller's stay as they are)."""
    import matplotlib

    matplotlib.use("Agg")
    # text as text (small, selectable), never parsed as mathtext ($x^{$ in a scene name is data);
    # a fixed hash salt, so the same run gives the same page
    return matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": f"msgvip-{name}", "font.size": 9, "text.parse_math": False,
                                  "axes.spines.top": False, "axes.spines.right": False, "axes.grid": True, "grid.alpha": 0.3})  # fmt: skip


def _drawable(text: str) -> str:
    """``text`` fit to draw into an SVG: control and direction-changing characters (invalid in
    XML, or reordering what follows them) written as their \\u escapes."""
    return "".join(f"\\u{ord(ch):04x}" if unicodedata.category(ch) in ("Cc", "Cf", "Cs", "Co", "Cn") else ch for ch in text)


def _curve_panels(columns: Sequence[str]) -> list[tuple[str, list[str]]]:
    """Panels of the curves figure: (title, columns), every numeric column but epoch in one."""
    panels: dict[str, list[str]] = {}
    for column in columns:
        if column == "epoch":
            continue
        if column.endswith("_vs_probe"):
            title = "val clips won and lost against the probe"
        elif "loss" in column:
            title = "loss"
        elif column.startswith(("train_rank@", "val_rank@", "probe_val_rank@")):
            title = "Rank@k"
        elif column.startswith(("train_", "val_")):
            title = "MRR and mAP"
        else:
            title = {"lr": "learning rate", "seconds": "seconds per epoch", "data_wait_fraction": "waiting for data (% of the epoch)"}.get(column, column)
        panels.setdefault(title, []).append(column)
    return list(panels.items())


def _curves_figure(history: list[dict], best_epoch: int | None) -> str:
    import matplotlib.pyplot as plt

    panels = _curve_panels(list(history[0]))
    columns = 3
    rows = math.ceil(len(panels) / columns)
    epochs = [h["epoch"] for h in history]
    with _style("curves"):
        fig, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 2.8 * rows), squeeze=False)
        _draw_curves(axes, panels, epochs, history, best_epoch)
        fig.tight_layout()
        return _svg(fig, "curves")


def _draw_curves(axes, panels, epochs, history, best_epoch) -> None:
    for ax, (title, names) in zip(axes.flat, panels):
        for name in names:
            scale = 100 if name == "data_wait_fraction" else 1  # in percent, as `msgvip train` prints it
            ax.plot(epochs, [h[name] * scale for h in history], marker="o", markersize=3, label=name)
        if best_epoch is not None:
            ax.axvline(best_epoch, color="#555", linestyle="--", linewidth=0.8)
        ax.set(title=title, xlabel="epoch")
        if title in ("Rank@k", "MRR and mAP"):
            ax.set_ylim(0, 1)
        if len(names) > 1:
            ax.legend(fontsize=8, frameon=False)
        ax.xaxis.get_major_locator().set_params(integer=True)
    for ax in list(axes.flat)[len(panels) :]:
        ax.set_visible(False)


def _breakdown_figure(result: dict, key: str, label: str) -> str | None:
    rows = _breakdown_rows(result, key)
    if not rows:
        return None
    import matplotlib.pyplot as plt

    methods = _breakdown_methods(result, key)
    with _style(key):
        fig, ax = plt.subplots(figsize=(max(4.5, 0.45 * len(rows) * len(methods) + 2), 3.0))
        _draw_breakdown(ax, rows, methods, label)
        fig.tight_layout()
        return _svg(fig, key.replace("_", "-"))


def _draw_breakdown(ax, rows, methods, label) -> None:
    width = 0.8 / len(methods)
    x = np.arange(len(rows))
    for i, method in enumerate(methods):
        summaries = [s.get(method) or {} for _, s in rows]
        values = [s.get("rank@1", float("nan")) for s in summaries]
        intervals = [(s.get("intervals") or {}).get("rank@1") for s in summaries]
        errors = None
        if all(iv and all(_finite(b) for b in iv) for iv in intervals) and all(_finite(v) for v in values):
            errors = np.array([[v - iv[0], iv[1] - v] for v, iv in zip(values, intervals)]).T  # (2, groups)
        ax.bar(x + (i - (len(methods) - 1) / 2) * width, values, width, yerr=errors, capsize=2, label=METHODS[method],
               color=METHOD_COLOURS[method], error_kw={"elinewidth": 0.8})  # fmt: skip
    ax.set_xticks(x, [f"{_drawable(str(group)) if group else MISSING}\n(n={s['model']['n']})" for group, s in rows])
    ax.set(ylabel="Rank@1", xlabel=label, ylim=(0, 1.05))
    ax.legend(fontsize=8, frameon=False, ncols=len(methods), loc="upper center", bbox_to_anchor=(0.5, 1.15))


def _rank_figure(views: list[ClipScores]) -> str:
    import matplotlib.pyplot as plt

    counts = Counter(v.target_rank for v in views)
    ranks = np.arange(1, max(counts) + 1)
    with _style("rank-distribution"):
        fig, ax = plt.subplots(figsize=(max(4.0, 0.5 * len(ranks) + 2), 3.0))
        bars = ax.bar(ranks, [counts[r] for r in ranks], color=METHOD_COLOURS["model"])
        ax.bar_label(bars, fontsize=8)
        ax.set(xlabel="rank of the labeled target (1 = the model's top-1)", ylabel="clips", xticks=ranks)
        ax.yaxis.get_major_locator().set_params(integer=True)  # counts of clips
        ax.margins(y=0.12)  # room for the labels on top of the bars
        ax.grid(axis="x", visible=False)
        fig.tight_layout()
        return _svg(fig, "rank-distribution")
