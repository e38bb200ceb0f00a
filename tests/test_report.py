"""`msgvip report`: one static HTML page about a run, opened from the file system in a real browser."""

from __future__ import annotations

import io
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from msgvip.config import ConfigError, ExtractConfig
from msgvip.data.synthetic import DemoDataConfig, write_demo_data
from msgvip.pipelines import run_extract
from msgvip.ranker import RankerConfig, TrainConfig, evaluate_run, train
from msgvip.store import FeatureStore
from msgvip.views import write_report
from msgvip.views.report import MISSING, SECTIONS, _breakdown_section, _metrics_section, read_history

TINY_MODEL = RankerConfig(hidden=16, gat_heads=2, temporal_heads=2, event_heads=2, pool_heads=2, relation_heads=2, ff_mult=2)


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> tuple[Path, Path, FeatureStore]:
    """(page, run dir, store): the report of a run trained for 2 epochs on synthetic clips."""
    root = tmp_path_factory.mktemp("report")
    # a test split of 10 clips: a 2-epoch model makes mistakes there for the gallery to show
    write_demo_data(root / "data", DemoDataConfig(clips=32, frames=6, persons=5, seed=1, splits=(("train", 0.5), ("val", 0.2), ("test", 0.3))))
    summary = run_extract(root / "data", ExtractConfig(features=("geometry",), num_workers=0), cache_dir=root / "cache", progress=False)
    store = FeatureStore.open(summary.store)
    train(store, root / "run", TrainConfig(epochs=2, batch_size=8, seed=0), TINY_MODEL, progress=False)
    return write_report(root / "run", store=store), root / "run", store


def test_the_page_holds_every_section_and_the_run_metrics(report):
    page, run_dir, store = report
    assert page == run_dir / "report" / "index.html"
    text = page.read_text()
    for key in SECTIONS:
        assert text.count(f'<section id="{key}">') == 1, key
    result = evaluate_run(run_dir, store, "test")
    for method in ("model", "largest_box", "most_central"):
        assert f"{result[method]['rank@1']:.3f}" in text and f"{result[method]['mrr']:.3f}" in text
    gallery = re.findall(r'<figure class="sheet"', text)
    mistakes = round(result["model"]["n"] * (1 - result["model"]["rank@1"]))
    assert len(gallery) == min(mistakes, 8) == len(list((page.parent / "gallery").glob("*.png")))
    assert {p.name for p in (page.parent / "figures").glob("*.svg")} >= {"curves.svg", "rank-distribution.svg", "by-persons.svg"}
    # nothing the page loads lies elsewhere: every src is inline, every href a fragment or a file beside it
    assert all(src.startswith("data:") for src in re.findall(r'\bsrc="([^"]*)"', text))
    assert all(not re.match(r"[a-z]+:", href) or href.startswith("data:") for href in re.findall(r'\bhref="([^"]*)"', text))
    assert "<script" not in text
    ids = re.findall(r'\bid="([^"]+)"', text)  # the inline SVGs' ids too: a clash would break their clip paths
    assert len(ids) == len(set(ids))
    assert set(re.findall(r"url\(#([^)]+)\)", text)) <= set(ids)


def test_metrics_without_intervals_or_scenes_show_what_they_have():
    older = {"model": {"n": 4, "rank@1": 0.5, "rank@2": 0.75, "rank@3": 1.0, "mrr": 0.7, "map": 0.625, "by_persons": {"2": {"n": 4, "rank@1": 0.5}}}}
    table = _metrics_section(older)
    assert "0.625" in table and MISSING in table and "carry no intervals" in table  # map read as map_trapezoid; map_standard absent
    assert "no breakdown by scene" in _breakdown_section(older, "by_scene", "scene", None)
    assert "0.500" in _breakdown_section(older, "by_persons", "persons", None)


def test_a_damaged_metrics_csv_is_a_one_line_error_naming_it(tmp_path):
    path = tmp_path / "metrics.csv"
    path.write_text("epoch,train_loss\n1,0.5\n2,oops\n")
    with pytest.raises(ConfigError, match=r"metrics\.csv: row 3: column 'train_loss': 'oops' is not a number"):
        read_history(path)
    assert read_history(tmp_path / "absent.csv") == []


@pytest.mark.skipif(shutil.which("chromium") is None, reason="no `chromium` on PATH: install Debian's chromium (.ci/run does) to open the report in a real browser")
def test_the_report_opens_in_headless_chromium_offline_and_clean(report):
    from playwright.sync_api import sync_playwright

    page_path, _, _ = report
    errors, requests = [], []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=shutil.which("chromium"))
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.on("console", lambda message: message.type == "error" and errors.append(message.text))
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.on("request", lambda request: requests.append(request.url))
            page.goto(page_path.as_uri(), wait_until="load")
            for key in SECTIONS:
                assert page.locator(f"section#{key} h2").is_visible(), key
            assert page.locator("section#curves svg").first.bounding_box()["height"] > 100
            widths = page.eval_on_selector_all("section#gallery img", "images => images.map(i => i.complete ? i.naturalWidth : 0)")
            assert widths, "the fixture's run made no mistake on the test split: the gallery is empty"
            assert min(widths) > 0  # every contact sheet decoded
            shot = page.screenshot(full_page=True)
        finally:
            browser.close()
    assert errors == []
    assert requests == [page_path.as_uri()]  # the page itself, nothing else: no network, no file beside it needed
    pixels = np.asarray(Image.open(io.BytesIO(shot)).convert("L"), dtype=np.float32)
    assert pixels.shape[0] > 2000 and pixels.std() > 20  # a long page of charts and images, not a blank one
