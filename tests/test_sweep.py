"""msgvip sweep: an Optuna study of ordinary run directories, the store read once per worker
process, pruning, grids, worker processes, and one-line errors for bad space files."""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import optuna
import psutil
import pytest
import torch
from conftest import save_clip

from msgvip.config import ConfigError, ExtractConfig
from msgvip.pipelines import run_extract
from msgvip.pipelines.runs import group_by_seed, list_runs
from msgvip.pipelines.sweep import WorkerReport, format_summary, read_space, run_sweep
from msgvip.ranker.trainer import load_checkpoint
from msgvip.store import FeatureStore

EXAMPLE = Path(__file__).parent.parent / "examples" / "sweep_space.toml"
# the model options a test space does not set: a model of a few thousand parameters
TINY_MODEL = {"gat_layers": "1", "temporal_layers": "1", "gat_heads": "2", "temporal_heads": "2", "event_heads": "2", "pool_heads": "2",
              "relation_heads": "2", "ff_mult": "2"}  # fmt: skip


def clip(seed: int, frames: int = 6, slots: int = 5, height: int = 48, width: int = 80) -> dict[str, np.ndarray]:
    """2 to 4 still people; the important one has by far the largest box, so a model that learns
    finds it within an epoch or two and one that does not learn stays near chance."""
    rng = np.random.default_rng(seed)
    people = rng.choice(slots, 2 + seed % 3, replace=False)
    bboxes = np.zeros((frames, slots, 4), np.float32)
    mask = np.zeros((frames, slots), bool)
    for i, slot in enumerate(people):
        w, h = (24.0, 30.0) if i == 0 else (rng.uniform(6, 12), rng.uniform(8, 14))
        x, y = rng.uniform(0, width - w), rng.uniform(0, height - h)
        bboxes[:, slot] = [x, y, x + w, y + h]
        mask[:, slot] = True
    return {"frames": np.zeros((frames, height, width, 3), np.uint8), "bboxes": bboxes, "person_mask": mask,
            "target_index": np.array(int(people[0])), "scene_category": np.array("03")}  # fmt: skip


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> FeatureStore:
    root = tmp_path_factory.mktemp("sweep-store")
    for i in range(48):
        save_clip(root / "data" / ("train" if i < 32 else "val") / f"clip_{i:02d}.npz", clip(i))
    summary = run_extract(root / "data", ExtractConfig(num_workers=0), cache_dir=root / "cache", progress=False)
    return FeatureStore.open(summary.store)


@pytest.fixture
def one_thread():
    """Trials in this process on one torch thread: two threads on a shared two-core machine spin
    against each other and take many times longer."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def write_space(path: Path, train: str, model: dict[str, str] | None = None, sweep: str = "") -> Path:
    """A space file: ``train`` and ``sweep`` as TOML lines, ``model`` as key -> TOML value over TINY_MODEL."""
    model_lines = "".join(f"{k} = {v}\n" for k, v in {**TINY_MODEL, **(model or {})}.items())
    path.write_text(f"[train]\n{train}\n[model]\n{model_lines}" + (f"[sweep]\n{sweep}\n" if sweep else ""))
    return path


def test_tpe_sweep_prunes_reads_the_store_once_and_lists_mean_and_std_over_seeds(store, tmp_path, monkeypatch, one_thread):
    reads = []
    real_read_clips = FeatureStore.read_clips

    def counted(self, records, *args, **kwargs):
        reads.append(len(records))
        return real_read_clips(self, records, *args, **kwargs)

    monkeypatch.setattr(FeatureStore, "read_clips", counted)
    # lr down to 1e-7 cannot learn in two epochs: such trials fall below the median and are pruned
    # (without the probe in the model: with it, every trial starts level with its probe)
    space = write_space(tmp_path / "space.toml", "epochs = 2\nbatch_size = 4\nin_memory = 'yes'\nlr = {low = 1e-7, high = 1e-1, log = true}",
                        {"hidden": "[8, 16]", "probe_prior": "false"}, "prune_startup_trials = 2")  # fmt: skip
    out = tmp_path / "sweep"
    summary = run_sweep(store, space, out, trials=8, seeds=2, progress=False)

    assert summary.sampler == "tpe" and [t.number for t in summary.trials] == list(range(8)) and summary.study_trials == 8
    assert summary.pruned >= 1 and summary.failed == 0
    complete = [t for t in summary.trials if t.state == "complete"]
    assert len(complete) >= 2
    # read once: the train and the val split, each in one bulk read of all their clips, for 16 trainings
    assert reads == [32, 16]
    assert summary.workers == (WorkerReport(worker=0, pid=os.getpid(), trials=8, split_loads=1),)

    for t in summary.trials:
        names = [Path(d).name for d in t.run_dirs]
        if t.state == "complete":
            assert names == [f"trial-{t.number}-seed-0", f"trial-{t.number}-seed-1"]
            assert all((Path(d) / "predictions.csv").is_file() for d in t.run_dirs)
            assert t.value == pytest.approx(np.mean(t.seed_values))
        else:  # pruned on the first seed: the second never ran
            assert names == [f"trial-{t.number}-seed-0"]
            rows = (Path(t.run_dirs[0]) / "metrics.csv").read_text().splitlines()
            assert len(rows) - 1 == t.pruned_at and not (Path(t.run_dirs[0]) / "predictions.csv").exists()
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == sorted(Path(d).name for t in summary.trials for d in t.run_dirs)

    assert (out / "study.db").is_file() and summary.storage == f"sqlite:///{out / 'study.db'}"
    assert summary.dashboard_str == f"optuna-dashboard sqlite:///{out / 'study.db'}"
    study = optuna.load_study(study_name="sweep", storage=summary.storage)
    assert [t.state.name.lower() for t in study.trials] == [t.state for t in summary.trials]
    best = max(complete, key=lambda t: (t.value, t.mrr, -t.number))
    assert summary.best == best and summary.best.params == study.trials[best.number].params

    rows = list_runs(out)
    assert len(rows) == 2 * len(complete) + summary.pruned and not [r.problem for r in rows if r.problem]
    groups = {g.runs: g for g in group_by_seed(rows)}
    for t in complete:
        group = groups[(f"trial-{t.number}-seed-0", f"trial-{t.number}-seed-1")]
        assert group.seeds == (0, 1)
        assert group.mean["val_rank@1"] == pytest.approx(t.value)
        assert group.std["val_rank@1"] == pytest.approx(np.std(t.seed_values, ddof=1))
        assert "±" in group.metric_str("val_rank@1")


def test_grid_visits_every_point_across_reruns_and_fails_only_bad_combinations(store, tmp_path, capsys, one_thread):
    # hidden 10 is not divisible by the 4 temporal heads: those trials fail, the sweep goes on
    space = write_space(tmp_path / "grid.toml", "epochs = 1\nbatch_size = 8\nlr = [1e-3, 1e-2]", {"hidden": "[8, 10]", "temporal_heads": "4"})
    out = tmp_path / "grid"
    first = run_sweep(store, space, out, trials=3)
    assert first.sampler == "grid" and len(first.trials) == 3
    printed = capsys.readouterr().out.splitlines()
    assert printed[0] == f"study 'grid' in sqlite:///{out / 'study.db'} (0 trials so far); look at it with: optuna-dashboard sqlite:///{out / 'study.db'}"
    assert [line.split("  ")[0] for line in printed[2:]] == [f"trial {t.number}" for t in first.trials]  # one line per trial, as it ends
    rest = run_sweep(store, space, out, trials=10, progress=False)  # more than the grid has left: only its last point runs
    assert [t.number for t in rest.trials] == [3] and rest.study_trials == 4
    trials = first.trials + rest.trials
    assert sorted((t.params["model.hidden"], t.params["train.lr"]) for t in trials) == sorted(itertools.product([8, 10], [1e-3, 1e-2]))
    failed = [t for t in trials if t.state == "failed"]
    assert sorted(t.params["model.hidden"] for t in failed) == [10, 10] and all(str(space) in t.message and "\n" not in t.message for t in failed)
    assert all(t.state == "complete" and (out / f"trial-{t.number}-seed-0" / "best.pt").is_file() for t in trials if t not in failed)
    kept = [sorted(p.name for p in (out / f"trial-{t.number}-seed-0").glob("*.pt")) for t in trials if t not in failed]
    assert kept == [["best.pt"]] * 2  # a trial keeps one checkpoint, without optimizer state
    assert all("optimizer" not in load_checkpoint(out / f"trial-{t.number}-seed-0" / "best.pt") for t in trials if t not in failed)

    done = run_sweep(store, space, out, progress=False)
    assert done.trials == () and done.study_trials == 4 and done.best == max((t for t in trials if t not in failed), key=lambda t: (t.value, t.mrr, -t.number))
    assert f"best: trial {done.best.number}  val Rank@1 {done.best.value:.3f}" in format_summary(done)
    other = write_space(tmp_path / "other.toml", "epochs = 1\nlr = [1e-3, 3e-3]")
    with pytest.raises(ConfigError, match="made with another space"):
        run_sweep(store, other, out, progress=False)


def test_jobs_run_trials_in_worker_processes_that_read_the_store_once_and_end(store, tmp_path):
    space = write_space(tmp_path / "space.toml", "epochs = 1\nbatch_size = 8\nlr = {low = 1e-4, high = 1e-2, log = true}", {"hidden": "8"})
    summary = run_sweep(store, space, tmp_path / "sweep", trials=3, jobs=2, progress=False)
    assert len(summary.trials) == 3 and {t.state for t in summary.trials} <= {"complete", "pruned"}
    workers = summary.workers
    assert [w.worker for w in workers] == [0, 1] and [w.split_loads for w in workers] == [1, 1] and sum(w.trials for w in workers) == 3
    pids = {w.pid for w in workers}
    assert len(pids) == 2 and os.getpid() not in pids
    assert not [p for p in psutil.Process().children(recursive=True) if p.pid in pids], "a worker outlived the sweep"
    assert all((tmp_path / "sweep" / f"trial-{t.number}-seed-0" / "metrics.csv").is_file() for t in summary.trials)


@pytest.mark.parametrize(
    ("text", "key", "problem"),
    [
        ("[train]\nbogus = [1, 2]\n", "train.bogus", "unknown TrainConfig key"),
        ("[model]\nhidden = {low = 64, high = 16}\n", "model.hidden", "low 64 is above high 16"),
        ("[train]\nlr = {low = 0.0, high = 0.1, log = true}\n", "train.lr", "a log range needs low > 0"),
        ("[train]\nlr = {low = 1e-4, high = 1e-2, log = true, step = 1e-4}\n", "train.lr", "not both"),
        ("[model]\ndropout = {low = 0.0, high = 0.5, step = 0.2}\n", "model.dropout", "whole number of steps of 0.2"),
        ("[train]\nlr = {low = 1e-4}\n", "train.lr", "{low = ..., high = ...}"),
        ("[train]\nepochs = [2, 'three']\n", "train.epochs[1]", "must be int, got 'three'"),
        ("[train]\nlr = []\n", "train.lr", "an empty list"),
        ("[train]\nlr = [1e-3, 0.001]\n", "train.lr", "repeated"),
        ("[train]\nseed = [0, 1]\n", "train.seed", "--seeds"),
        ("[train]\namp = {low = 0, high = 1}\n", "train.amp", "give a list of choices"),
        ("[model]\nhidden = 16\n", "searches nothing", ""),
        ("[model]\npreset = 'nope'\nhidden = [8]\n", "model.preset", "unknown model preset 'nope'"),
        ("[sweep]\nprune_startup_trials = -1\n[train]\nlr = [1e-3]\n", "sweep.prune_startup_trials", "must be an integer >= 0, got -1"),
        ("[sampler]\nname = 'tpe'\n", "unknown section [sampler]", ""),
        ("[train\n", "invalid TOML", "line 1"),
        ("[train]\nepochs = 0\nlr = [1e-3]\n", "train.epochs", "must be an integer >= 1, got 0"),
        ("[train]\nbatch_size = {low = 0, high = 0}\n", "train.batch_size", "must be an integer >= 1, got 0"),
        ("[train]\ngrad_clip = [1.0, -1.0]\n", "train.grad_clip", "must be a number > 0 (inf: no clipping), got -1.0"),
        ("[model]\nhidden = {low = 16, high = 1099511627776}\n", "model.hidden", "must be an integer in [1, 65536], got 1099511627776"),
        ("[train]\nlr = {low = 1e-4, high = 1e400}\n", "train.lr.high", "finite"),
        ("[train]\nlr = " + "[" * 100_000 + "]" * 100_000 + "\n", "nested too deeply", ""),
    ],
)
def test_bad_space_files_are_one_line_errors_naming_file_and_key(tmp_path, text, key, problem):
    path = tmp_path / "space.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        read_space(path)
    message = str(err.value)
    assert message.startswith(f"{path}: ") and key in message and problem in message and "\n" not in message


def test_a_grid_too_large_to_list_is_refused_with_its_size(tmp_path):
    keys = ("lr", "weight_decay", "margin", "pairwise_weight", "min_delta")  # 100 choices each: 10^10 points
    path = tmp_path / "space.toml"
    path.write_text("[train]\n" + "".join(f"{key} = {[round(0.001 * (i + 1), 3) for i in range(100)]}\n" for key in keys))
    with pytest.raises(ConfigError, match=r"a grid of 1e\+10 points .* at most 100,000 can be run"):
        read_space(path)


def test_set_fixes_a_value_for_every_trial_and_refuses_a_searched_one(tmp_path):
    space = write_space(tmp_path / "space.toml", "lr = [1e-3, 2e-3]")
    fixed = read_space(space, settings=["model.hidden=32", "train.epochs=2"]).fixed
    assert (fixed["model"]["hidden"], fixed["train"]["epochs"]) == (32, 2) and read_space(space).fixed["model"].get("hidden") != 32
    with pytest.raises(ConfigError, match=r"--set train.lr: .* searches it"):
        read_space(space, settings=["train.lr=0.1"])
    with pytest.raises(ConfigError, match=r"--set model.hidden: RankerConfig.hidden must be an integer in \[1, 65536\], got 0"):
        read_space(space, settings=["model.hidden=0"])


def test_sweep_refuses_counts_and_storage_it_cannot_use(store, tmp_path):
    space = write_space(tmp_path / "space.toml", "lr = {low = 1e-4, high = 1e-2}")
    with pytest.raises(ConfigError, match=r"has ranges, so it is no grid of known size: give the number of trials \(--trials N\)"):
        run_sweep(store, space, tmp_path / "a", progress=False)
    with pytest.raises(ConfigError, match="--jobs must be a positive integer, got 0"):
        run_sweep(store, space, tmp_path / "a", trials=2, jobs=0, progress=False)
    with pytest.raises(ConfigError, match=r"--storage postgresql://me:\*\*\*@nowhere/db: cannot open it"):
        run_sweep(store, space, tmp_path / "a", trials=2, storage="postgresql://me:secret@nowhere/db", progress=False)


def test_example_space_is_valid_and_every_combination_of_its_ends_makes_a_config():
    space = read_space(EXAMPLE)
    assert not space.is_grid and {p.name.split(".")[0] for p in space.params} == {"train", "model"}
    ends = [p.choices if p.kind == "categorical" else (p.low, p.high) for p in space.params]
    for values in itertools.product(*ends):
        space.configs(dict(zip((p.name for p in space.params), values)))


def _sweep_process(store: FeatureStore, space: Path, out: Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "msgvip", "sweep", "--store", str(store.path), "--space", str(space), "--out", str(out)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip


def _states(out: Path) -> list[tuple[str, float | None]]:
    study = optuna.load_study(study_name=out.name, storage=f"sqlite:///{out / 'study.db'}")
    return [(t.state.name, t.params.get("train.lr")) for t in study.get_trials(deepcopy=False)]


def test_a_sweep_killed_mid_trial_resumes_without_running_or_repeated_points(store, tmp_path):
    space = write_space(tmp_path / "grid.toml", "epochs = 40\npatience = 100\nbatch_size = 4\nlr = [1e-3, 2e-3, 3e-3]", {"hidden": "8"})
    out = tmp_path / "grid"
    proc = _sweep_process(store, space, out)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not any((out / f"trial-{n}-seed-0" / "metrics.csv").exists() for n in (1, 2)):
        time.sleep(0.1)  # killed in its second or third trial, once the first is complete
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert ("RUNNING", 2e-3) in _states(out) or ("RUNNING", 3e-3) in _states(out)

    resumed = run_sweep(store, space, out, progress=False)
    states = _states(out)
    assert "RUNNING" not in {state for state, _ in states}
    complete = sorted(lr for state, lr in states if state == "COMPLETE")
    assert complete == [1e-3, 2e-3, 3e-3], states  # each point once, the killed one again
    assert resumed.study_trials == len(states)


def test_two_sweeps_at_once_on_one_storage_complete_each_point_once(store, tmp_path):
    space = write_space(tmp_path / "grid.toml", "epochs = 2\nbatch_size = 8\nlr = [1e-3, 2e-3, 3e-3, 4e-3]", {"hidden": "8"})
    out = tmp_path / "shared"
    first = _sweep_process(store, space, out)
    time.sleep(0.5)  # the first makes the study; both then run trials side by side
    second = _sweep_process(store, space, out)
    for proc in (first, second):
        output, _ = proc.communicate(timeout=300)
        assert proc.returncode == 0, output
    complete = sorted(lr for state, lr in _states(out) if state == "COMPLETE")
    assert complete == [1e-3, 2e-3, 3e-3, 4e-3], _states(out)


def test_storage_of_another_application_or_optuna_version_is_refused(store, tmp_path):
    import sqlite3

    space = write_space(tmp_path / "grid.toml", "epochs = 1\nlr = [1e-3]", {"hidden": "8"})
    foreign = tmp_path / "app.db"
    with sqlite3.connect(foreign) as db:
        db.execute("create table invoices (id integer primary key, total real)")
    with pytest.raises(ConfigError, match=r"holds tables Optuna did not make \(invoices\)"):
        run_sweep(store, space, tmp_path / "a", storage=f"sqlite:///{foreign}", progress=False)
    with sqlite3.connect(foreign) as db:
        assert [name for (name,) in db.execute("select name from sqlite_master where type = 'table'")] == ["invoices"]  # untouched

    other = tmp_path / "other.db"
    run_sweep(store, space, tmp_path / "b", storage=f"sqlite:///{other}", progress=False)
    with sqlite3.connect(other) as db:
        db.execute("update version_info set library_version = '0.9.0'")
        db.execute("update alembic_version set version_num = 'v1.2.0.a'")  # a schema revision of an old Optuna
    with pytest.raises(ConfigError, match=r"--storage sqlite:///.*other.db: .*0\.9\.0.* \(this is optuna "):
        run_sweep(store, space, tmp_path / "b", storage=f"sqlite:///{other}", progress=False)
