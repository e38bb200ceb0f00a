"""Security review: one test per finding of SECURITY.md.

Every test that could be fooled by a payload that silently does nothing first proves the payload
is live (it does run when loaded unsafely), then checks that msgvip never runs it.
"""

from __future__ import annotations

import ast
import json
import os
import pickle
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import save_clip, tiny_clip

import msgvip
from msgvip.cli import main
from msgvip.pipelines import run_extract
from msgvip.ranker import RankerConfig, TrainConfig, train
from msgvip.store import FeatureStore, open_storage
from msgvip.store.hash_cache import HASH_CACHE_FILE
from msgvip.store.feature_store import COMMITS, DATASETS, SEGMENTS, ZARR_DIR

SRC = Path(msgvip.__file__).parent
REPO = SRC.parents[1]
SMALL_TOML = "[model]\nhidden = 16\ngat_heads = 2\ntemporal_heads = 2\nevent_heads = 2\npool_heads = 2\nrelation_heads = 2\nff_mult = 2\n"
SMALL_MODEL = RankerConfig(hidden=16, gat_heads=2, temporal_heads=2, event_heads=2, pool_heads=2, relation_heads=2, ff_mult=2)


# ------------------------------------------------------------------------------------- helpers
class Payload:
    """Unpickling this object creates ``marker`` (via builtins.open): proof that code ran."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def run(*args: str):
    return CliRunner().invoke(main, [str(a) for a in args])


def snapshot(root: Path) -> dict[str, object]:
    """Everything under ``root`` without following links: path -> bytes, 'dir' or 'link:<target>'."""
    if not root.exists():
        return {}
    tree: dict[str, object] = {}
    for dirpath, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(dirpath) / name
            key = str(path.relative_to(root))
            if path.is_symlink():
                tree[key] = f"link:{os.readlink(path)}"
            elif path.is_dir():
                tree[key] = "dir"
            else:
                tree[key] = path.read_bytes()
    return tree


def extract(data: Path, cache: Path) -> dict:
    result = run("extract", data, "--cache-dir", cache, "--json")
    if result.exit_code != 0:
        raise RuntimeError(f"extract failed: {result.output}")
    return json.loads(result.stdout)


@pytest.fixture
def fp(tiny_data, cache_dir) -> str:
    """A real store extracted from ``tiny_data`` into ``cache_dir``; its fingerprint."""
    return extract(tiny_data, cache_dir)["fingerprint"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(cache root, fingerprint, run dir) of a one-epoch run of a tiny ranker, shared by the module."""
    base = tmp_path_factory.mktemp("trained")
    data = base / "data"
    for i in range(8):
        save_clip(data / ("train" if i < 6 else "val") / f"clip_{i}.npz", tiny_clip(seed=i))
    summary = run_extract(data, cache_dir=base / "cache", progress=False)
    store = FeatureStore.open(Path(summary.store))
    train(store, base / "run", TrainConfig(epochs=1, batch_size=4, patience=100, device="cpu"), SMALL_MODEL, progress=False)
    (base / "small.toml").write_text(SMALL_TOML)
    return base / "cache", summary.fingerprint, base / "run"


# ------------------------------------------------------------------------------ 1. no unpickling
def test_clip_with_pickled_object_array_is_refused_unrun(tmp_path, cache_dir):
    marker = tmp_path / "payload-ran"
    clip = tiny_clip()
    clip["video_id"] = np.array([Payload(marker)], dtype=object)  # np.savez pickles object arrays
    path = save_clip(tmp_path / "data" / "train" / "evil.npz", clip)
    with np.load(path, allow_pickle=True) as live:  # the payload is live when loaded unsafely
        live["video_id"]
    assert marker.exists()
    marker.unlink()

    result = run("extract", tmp_path / "data", "--json")
    assert result.exit_code == 1
    summary = json.loads(result.stdout)
    assert summary["failed"] == 1 and summary["errors"][0]["field"] == "video_id" and "pickle" in summary["errors"][0]["message"]
    assert not marker.exists()


@pytest.mark.parametrize("command", ["evaluate", "predict", "train --resume"])
def test_checkpoint_with_pickle_payload_is_refused_unrun(trained, tmp_path, command):
    cache, fp, run_dir = trained
    evil_run = tmp_path / "run"
    shutil.copytree(run_dir, evil_run)
    marker = tmp_path / "payload-ran"
    checkpoint = evil_run / ("latest.pt" if command == "train --resume" else "best.pt")
    state = torch.load(checkpoint, weights_only=True)
    torch.save({**state, "model": Payload(marker)}, checkpoint)
    torch.load(checkpoint, weights_only=False)  # the payload is live when loaded unsafely
    assert marker.exists()
    marker.unlink()

    if command == "evaluate":
        result = run("evaluate", evil_run, "--split", "val", "--cache-dir", cache)
    elif command == "predict":
        result = run("predict", evil_run, fp, "--cache-dir", cache, "--out", tmp_path / "pred.csv")
    else:
        result = run("train", "--store", fp, "--cache-dir", cache, "--out", evil_run, "--resume", "--epochs", "2",
                     "--config", run_dir.parent / "small.toml", "--device", "cpu")  # fmt: skip
    assert result.exit_code != 0
    assert isinstance(result.exception, pickle.UnpicklingError) or "weights" in result.output.lower()
    assert not marker.exists()


@pytest.mark.parametrize("layout", ["zarr v3 codec numcodecs.pickle", "zarr v2 pickle filter"])
def test_store_array_declaring_a_pickle_codec_is_refused_unrun(fp, cache_dir, tmp_path, layout):
    marker = tmp_path / "payload-ran"
    blob = pickle.dumps(Payload(marker))
    pickle.loads(blob)  # the payload is live when unpickled
    assert marker.exists()
    marker.unlink()

    (array,) = (cache_dir / fp / ZARR_DIR / SEGMENTS).glob("*/geometry")
    if layout.startswith("zarr v3"):
        meta = json.loads((array / "zarr.json").read_text())
        meta["codecs"] = [{"name": "numcodecs.pickle"}, *meta["codecs"]]
        (array / "zarr.json").write_text(json.dumps(meta))
    else:
        meta = json.loads((array / "zarr.json").read_text())
        shutil.rmtree(array)
        array.mkdir()
        (array / ".zarray").write_text(json.dumps({
            "zarr_format": 2, "shape": meta["shape"], "chunks": meta["chunk_grid"]["configuration"]["chunk_shape"],
            "dtype": "|O", "compressor": None, "fill_value": None, "filters": [{"id": "pickle"}], "order": "C",
        }))  # fmt: skip
    for chunk in (p for p in array.rglob("*") if p.is_file() and p.name not in ("zarr.json", ".zarray")):
        chunk.write_bytes(blob)
    if layout.endswith("filter"):
        (array / ".".join("0" * len(meta["shape"]))).write_bytes(blob)

    result = run("cache", "verify", fp)
    assert result.exit_code != 0
    assert not marker.exists()


# Importing pickle for its exception types is fine; loading with it is not.
FORBIDDEN_MODULES = {"cPickle", "marshal", "shelve", "dill", "cloudpickle", "joblib", "subprocess", "yaml", "pty", "commands"}
FORBIDDEN_CALLS = {"eval", "exec", "compile", "__import__", "os.system", "os.popen", "os.startfile", "importlib.import_module",
                   "pickle.load", "pickle.loads", "pickle.Unpickler", "_pickle.load", "_pickle.loads", "_pickle.Unpickler",
                   "pd.read_pickle", "pandas.read_pickle", "torch.jit.load", "torch.hub.load", "np.lib.format.read_array"}  # fmt: skip


def _dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return "?"


def _keyword_is(call: ast.Call, name: str, value: object) -> bool:
    return any(k.arg == name and isinstance(k.value, ast.Constant) and k.value.value is value for k in call.keywords)


def test_source_never_unpickles_shells_out_or_evaluates():
    """Static check of every module: loaders are called the safe way, and nothing that runs code
    from data (pickle, eval, shells, remote model code) is used at all."""
    problems = []
    files = sorted(SRC.rglob("*.py"))
    assert len(files) > 10
    for path in files:
        tree = ast.parse(path.read_text(), filename=str(path))
        where = lambda node: f"{path.relative_to(SRC)}:{node.lineno}"  # noqa: E731
        for node in ast.walk(tree):
            if isinstance(node, ast.Import | ast.ImportFrom):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                if isinstance(node, ast.ImportFrom) and node.module in ("os", "pickle", "_pickle", "importlib"):
                    names += [f"{node.module}.{a.name}" for a in node.names]
                for name in names:
                    if name.split(".")[0] in FORBIDDEN_MODULES or name in FORBIDDEN_CALLS or re.fullmatch(r"os\.(exec|spawn)\w*", name):
                        problems.append(f"{where(node)}: imports {name}")
            if not isinstance(node, ast.Call):
                continue
            name = _dotted(node.func)
            if name in FORBIDDEN_CALLS or re.fullmatch(r"os\.(exec|spawn)\w*", name):
                problems.append(f"{where(node)}: calls {name}")
            if name.endswith("torch.load") and not _keyword_is(node, "weights_only", True):
                problems.append(f"{where(node)}: torch.load without weights_only=True")
            if name in ("np.load", "numpy.load") and not _keyword_is(node, "allow_pickle", False):
                problems.append(f"{where(node)}: np.load without allow_pickle=False")
            for k in node.keywords:
                if k.arg == "allow_pickle" and not _keyword_is(node, "allow_pickle", False):
                    problems.append(f"{where(node)}: allow_pickle is not False")
                if k.arg == "shell" and not _keyword_is(node, "shell", False):
                    problems.append(f"{where(node)}: shell=...")
                if k.arg == "trust_remote_code" and not _keyword_is(node, "trust_remote_code", False):
                    problems.append(f"{where(node)}: trust_remote_code is not False")
                if k.arg == "weights_only" and not _keyword_is(node, "weights_only", True):
                    problems.append(f"{where(node)}: weights_only is not True")
    assert not problems, "\n".join(problems)


def test_torch_floor_excludes_the_weights_only_bypass():
    import tomllib

    assert tuple(int(x) for x in torch.__version__.split("+")[0].split(".")[:2]) >= (2, 6)
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    floor = next(re.fullmatch(r"torch\s*>=\s*(\d+)\.(\d+).*", d) for d in deps if re.match(r"torch\s*[><=]", d))
    assert floor and (int(floor[1]), int(floor[2])) >= (2, 6), floor


def test_model_folder_with_custom_code_is_never_run_nor_offered(tmp_path, monkeypatch):
    backbones = pytest.importorskip("msgvip.extract.backbones")
    import transformers.dynamic_module_utils as dynamic

    monkeypatch.setattr(dynamic, "HF_MODULES_CACHE", str(tmp_path / "hf-modules"))  # never the user's cache
    marker = tmp_path / "payload-ran"
    folder = tmp_path / "evil-model"
    folder.mkdir()
    (folder / "modeling_evil.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    auto_map = {"AutoConfig": "modeling_evil.EvilConfig", "AutoModel": "modeling_evil.EvilModel"}
    (folder / "config.json").write_text(json.dumps({"model_type": "evil-msgvip-test", "auto_map": auto_map}))
    (folder / "model.safetensors").write_bytes(b"\0" * 16)
    prompts = []
    monkeypatch.setattr("builtins.input", lambda text="": prompts.append(text) or "y")  # a user who says yes
    with pytest.raises(Exception):
        backbones.load_model(backbones.resolve_model(str(folder), local_files_only=True), "backbone", "cpu")
    assert not marker.exists()
    assert not prompts, prompts


# ------------------------------------------------------------------------------ 2. config files
@pytest.mark.parametrize("suffix", ["toml", "json", "yaml"])
def test_config_file_is_data_never_code(tmp_path, cache_dir, monkeypatch, suffix):
    monkeypatch.chdir(tmp_path)
    marker = tmp_path / "payload-ran"
    code = f"__import__('os').system('touch {marker}')"
    attempts = {
        "code as a value": {"model": {"hidden": code}},
        "unknown key": {"train": {"__class__": code}},
        "dunder key": {"model": {"__init__": code}},
        "unknown section": {"exec": {"cmd": code}},
    }
    for what, record in attempts.items():
        path = tmp_path / f"c.{suffix}"
        if suffix == "toml":
            path.write_text("\n".join(f"[{s}]\n{k} = {json.dumps(v)}" for s, kv in record.items() for k, v in kv.items()))
        elif suffix == "json":
            path.write_text(json.dumps(record))
        else:
            path.write_text(f"model: !!python/object/apply:os.system ['touch {marker}']\n")
        result = run("train", "--store", "0" * 32, "--config", path, "--out", tmp_path / "run")
        assert result.exit_code != 0, what
        if suffix != "yaml":
            assert "unknown" in result.output or "must be int" in result.output, (what, result.output)
    assert not marker.exists()
    assert not (tmp_path / "run").exists()


# ------------------------------------------------------------------------------ 3. paths
def test_fingerprint_argument_never_escapes_the_cache_root(fp, cache_dir, tmp_path, monkeypatch):
    outside = tmp_path / "outside"
    shutil.copytree(cache_dir / fp, outside / fp)  # a real store just outside the cache root
    work = tmp_path / "a" / "b"
    work.mkdir(parents=True)
    monkeypatch.chdir(work)  # so '../outside/<fp>' names nothing relative to the working dir
    before = snapshot(outside)
    refs = ["..", "../..", "../outside/" + fp, f"{fp}/../../outside/{fp}", f"{fp[:6]}/..", "/", "~", ".", ""]
    for ref in refs:
        for command in (["cache", "info"], ["cache", "verify"], ["cache", "pin"], ["cache", "unpin"]):
            result = run(*command, ref)
            assert result.exit_code != 0, (command, ref, result.output)
        assert run("train", "--store", ref, "--out", tmp_path / "run").exit_code != 0, ref
    assert snapshot(outside) == before
    assert not (tmp_path / "run").exists()


def test_manifest_paths_splits_and_clip_ids_write_nothing_outside(tmp_path, cache_dir, monkeypatch):
    clips = tmp_path / "clips"
    evil = tiny_clip(seed=1)
    evil["video_id"] = np.array("../../../escape-video")
    evil["scene_category"] = np.array("../../../escape-scene")
    save_clip(clips / "a.npz", tiny_clip(seed=0))
    save_clip(clips / "b.npz", evil)
    manifests = tmp_path / "m" / "n"
    manifests.mkdir(parents=True)
    (manifests / "list.csv").write_text(
        f"path,split\n{clips / 'a.npz'},../../../escape-split\n../../clips/b.npz,/tmp/escape-abs-split\n"
    )
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    before = {k: v for k, v in snapshot(tmp_path).items() if not k.startswith("cache")}
    summary = extract(manifests / "list.csv", cache_dir)
    assert summary["written"] == 2
    after = {k: v for k, v in snapshot(tmp_path).items() if not k.startswith("cache")}
    assert after == before, sorted(set(after) ^ set(before))
    assert not list(Path("/tmp").glob("escape-*"))
    splits = {e.split for e in FeatureStore.open(Path(summary["store"])).snapshot("list").entries}
    assert splits == {"../../../escape-split", "/tmp/escape-abs-split"}  # kept as labels, never as paths


def test_crafted_store_fingerprint_cannot_redirect_the_run_dir(fp, cache_dir, tmp_path, monkeypatch):
    copied = tmp_path / "from-a-colleague" / "store"
    shutil.copytree(cache_dir / fp, copied)
    meta_file = copied / ZARR_DIR / "zarr.json"
    meta = json.loads(meta_file.read_text())
    meta["attributes"]["msgvip"]["fingerprint"] = "../../.." + fp[8:]  # runs/<time>-../../.. is the working dir
    meta_file.write_text(json.dumps(meta))
    work = tmp_path / "work"
    work.mkdir()
    (work / "config.json").write_text('{"mine": true}\n')
    (tmp_path / "small.toml").write_text(SMALL_TOML)
    monkeypatch.chdir(work)
    run("train", "--store", copied, "--epochs", "1", "--batch-size", "4", "--device", "cpu", "--config", tmp_path / "small.toml")
    assert (work / "config.json").read_text() == '{"mine": true}\n'
    assert not list(work.glob("*.pt")) and not (work / "metrics.csv").exists()


# ------------------------------------------------------------------------------ 4. symlinks
def test_store_dir_symlinked_out_of_the_cache_root_is_not_written_through(tiny_data, cache_dir, tmp_path):
    fp = extract(tiny_data, tmp_path / "probe")["fingerprint"]
    outside = tmp_path / "outside"
    outside.mkdir()
    cache_dir.mkdir()
    os.symlink(outside, cache_dir / fp)
    run("extract", tiny_data, "--json")
    assert snapshot(outside) == {}


@pytest.mark.parametrize("linked", [ZARR_DIR, f"{ZARR_DIR}/{SEGMENTS}", COMMITS, DATASETS])
def test_symlinked_zarr_data_inside_a_store_is_not_written_through(fp, tiny_data, cache_dir, tmp_path, linked):
    outside = tmp_path / "outside"
    outside.mkdir()
    inside = cache_dir / fp / linked
    shutil.move(inside, outside / "moved")
    os.symlink(outside / "moved", inside)
    save_clip(tiny_data / "train" / "new.npz", tiny_clip(seed=99))  # something to write
    before = snapshot(outside)
    run("extract", tiny_data, "--json")
    assert snapshot(outside) == before


BOOKKEEPING = {
    # file in the store: (command that touches it, outside target exists beforehand)
    "errors-data.csv": ("extract", True),
    "datasets/data.json": ("extract", True),
    "pinned": ("cache pin", False),
    "last_used": ("extract", True),
    "../.locks/{fp}.lease": ("cache ls", False),
}


@pytest.mark.parametrize(
    "name",
    list(BOOKKEEPING),
)  # fmt: skip
def test_symlinked_store_file_is_never_followed_out_of_the_cache_root(fp, tiny_data, cache_dir, tmp_path, name):
    command, exists = BOOKKEEPING[name]
    outside = tmp_path / "outside"
    outside.mkdir()
    target = outside / "precious.txt"
    if exists:
        target.write_text("precious\n")
    link = cache_dir / fp / name.format(fp=fp)
    link.unlink(missing_ok=True)
    os.symlink(target, link)
    if name == "errors-data.csv":
        (tiny_data / "train" / "broken.npz").write_bytes(b"not a zip")  # something to report
    before = snapshot(outside)
    run(*({"extract": ["extract", tiny_data, "--json"], "cache ls": ["cache", "ls"], "cache pin": ["cache", "pin", fp]}[command]))
    assert snapshot(outside) == before


def test_symlinked_hash_cache_at_the_cache_root_is_not_followed(tiny_data, cache_dir, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    cache_dir.mkdir()
    os.symlink(outside / "hashes.sqlite", cache_dir / HASH_CACHE_FILE)
    run("extract", tiny_data, "--json")
    assert snapshot(outside) == {}


def test_gc_never_follows_a_symlink_out_of_the_cache_root(fp, cache_dir, tmp_path):
    outside = tmp_path / "outside"
    shutil.copytree(cache_dir / fp, outside / "real-store")  # a store-looking dir outside the root
    (outside / "precious.txt").write_text("precious\n")
    fake = "f" * 32
    os.symlink(outside / "real-store", cache_dir / fake)  # a symlink posing as a store
    linked = "e" * 32  # a store whose insides point outside
    FeatureStore.create(open_storage(cache_dir), linked, {"features": {}}, []).touch()
    os.symlink(outside, cache_dir / linked / "dir-link")
    os.symlink(outside / "precious.txt", cache_dir / linked / "file-link")
    shutil.move(cache_dir / linked / ZARR_DIR, outside / "linked-zarr")
    os.symlink(outside / "linked-zarr", cache_dir / linked / ZARR_DIR)
    before = snapshot(outside)

    listed = json.loads(run("cache", "ls", "--json").stdout)
    assert fake not in {s["fingerprint"] for s in listed}
    sizes = {s["fingerprint"]: s["size_on_disk"] for s in listed}
    assert sizes.get(linked, 0) < 4096  # the linked data is never counted as the store's
    result = run("cache", "gc", "--keep-last", "0")
    assert result.exit_code == 0, result.output
    assert snapshot(outside) == before
    assert not (cache_dir / fp).exists()  # gc did run
    assert (cache_dir / fake).is_symlink()  # the impostor link itself is left alone


def test_file_names_with_shell_metacharacters_run_nothing(tmp_path, cache_dir, monkeypatch):
    monkeypatch.chdir(tmp_path)
    names = ["$(touch pwned-1)", "`touch pwned-2`", "x; touch pwned-3", "x && touch pwned-4 #", "-rf", "--help"]
    for i, name in enumerate(names):
        save_clip(tmp_path / "data" / "train" / f"{name}.npz", tiny_clip(seed=i))
    summary = extract(tmp_path / "data", cache_dir)
    assert summary["written"] == len(names)
    assert run("cache", "ls").exit_code == 0
    assert not list(tmp_path.glob("pwned-*"))
