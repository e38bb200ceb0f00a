"""Finding, identifying and loading the frozen models the extractors run.

A model is named by a hub id (``facebook/dinov2-base``) or a local directory holding
``config.json`` and its weights. :func:`resolve_model` turns either into a local folder and an
identity: digests of the weight files' bytes, of the architecture config and of the
preprocessing constants. The identity is what reaches the fingerprint, never the folder's path
(moving a model folder keeps its stores) nor the hub commit (a README edit keeps them too); the
bytes decide. Anything that cannot be identified raises :class:`ModelError`.

Models load once per process and device (:func:`load_model`), in fp32 and ``eval()`` mode; the
compute dtype is applied by autocast (:func:`autocast`), so a ``dtype`` change never reloads.

:func:`make_demo_backbones` writes tiny **random** DINOv2-like and ViTPose-like models for
``msgvip demo`` and the tests: they run everywhere without a download and mean nothing.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
import xxhash

from ..config import ConfigError
from ..store.fingerprint import canonical_json

WEIGHT_SUFFIXES = (".safetensors", ".bin")  # in transformers' order of preference
PREPROCESSOR_FILE = "preprocessor_config.json"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DEMO_MARKER = "MSGVIP_DEMO_RANDOM_WEIGHTS"  # a file in every demo model folder
DEMO_CROP_SIZE = 32  # crop size that suits the demo backbone (patch 8)
_CONFIG_NOISE = ("transformers_version", "_name_or_path", "_commit_hash")  # config keys that never change numbers


class ModelError(ConfigError):
    """A model that cannot be found, identified or loaded; names it and says what to do."""


@dataclass(frozen=True)
class ResolvedModel:
    """A model on local disk and the record of what it is.

    ``path`` is where it lies (not part of the identity); ``identity()`` is the JSON record the
    extractors' specs embed.
    """

    name: str  # as the user gave it: a hub id or a path
    source: str  # "hub" or "local"
    path: Path
    weights: str  # xxh3-128 over the weight files (names, sizes, bytes)
    config: str  # xxh3-128 of config.json without bookkeeping keys
    model_type: str
    mean: tuple[float, ...]
    std: tuple[float, ...]
    rescale: float
    is_demo: bool

    def identity(self) -> dict:
        record = {"source": self.source, "weights": self.weights, "config": self.config, "model_type": self.model_type}
        if self.source == "hub":
            record["id"] = self.name
        return record

    def normalization(self) -> dict:
        return {"mean": list(self.mean), "std": list(self.std), "rescale": self.rescale}


_HUB_FOLDERS: dict[tuple[str, bool], Path] = {}
_DIGESTS: dict[tuple, str] = {}
_LOADED: dict[tuple, torch.nn.Module] = {}
_CONFIGS: dict[tuple, object] = {}


def resolve_model(name: str, local_files_only: bool = False) -> ResolvedModel:
    """A hub id or local directory -> :class:`ResolvedModel`.

    A hub id is resolved with ``huggingface_hub.snapshot_download`` (config, preprocessor config
    and safetensors weights, else ``.bin``), honouring ``local_files_only`` and ``HF_HUB_OFFLINE``;
    the snapshot folder is looked up once per process. The files are identified on every call
    (their digest is memoised by path, size and mtime), so an edited weight file is noticed.
    """
    path, source = _local_folder(name, local_files_only)
    return _identify(name, source, path)


def _local_folder(name: str, local_files_only: bool) -> tuple[Path, str]:
    candidate = Path(name).expanduser()
    if candidate.is_dir():
        return candidate.resolve(), "local"
    if candidate.exists() or name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise ModelError(f"model {name!r}: not a directory; pass a folder holding config.json and the weights, or a hub id like 'facebook/dinov2-base'")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, HFValidationError, LocalEntryNotFoundError, RepositoryNotFoundError

    def download(patterns: list[str]) -> Path:
        try:
            return Path(snapshot_download(name, allow_patterns=patterns, local_files_only=local_files_only))
        except LocalEntryNotFoundError:
            raise ModelError(
                f"model {name!r} is not in the local Hugging Face cache and the hub cannot be used "
                f"(local_files_only={local_files_only}, HF_HUB_OFFLINE={os.environ.get('HF_HUB_OFFLINE', '0')}); "
                f"download it once with `hf download {name}`, or pass a local model directory"
            ) from None
        except HFValidationError as err:
            raise ModelError(f"model {name!r} is neither a local directory nor a valid hub id ({err})") from None
        except RepositoryNotFoundError:
            raise ModelError(f"model {name!r}: no such repository on the hub (or it is private); check the id or pass a local directory") from None
        except (HfHubHTTPError, OSError) as err:
            raise ModelError(f"model {name!r}: download failed ({type(err).__name__}: {err}); retry, or pass a local directory") from None

    key = (name, local_files_only)
    if key not in _HUB_FOLDERS:
        folder = download(["*.json", "*.safetensors"])
        if not _weight_files(folder):
            folder = download(["*.json", "*.bin"])
        _HUB_FOLDERS[key] = folder
    return _HUB_FOLDERS[key], "hub"


def _weight_files(folder: Path) -> list[Path]:
    """The weight files transformers would load from ``folder`` (safetensors first, else .bin)."""
    for suffix in WEIGHT_SUFFIXES:
        files = sorted(p for p in folder.iterdir() if p.name.endswith(suffix) and p.is_file())
        if files:
            index = folder / f"{'model.safetensors' if suffix == '.safetensors' else 'pytorch_model.bin'}.index.json"
            if index.is_file():
                shards = set(json.loads(index.read_text()).get("weight_map", {}).values())
                missing = sorted(shards - {p.name for p in files})
                if missing:
                    raise ModelError(f"{folder}: weight shards {missing} listed in {index.name} are missing; re-download the model")
            return files
    return []


def weights_digest(files: list[Path]) -> str:
    """xxh3-128 over each file's name, size and bytes, in name order (memoised by size + mtime)."""
    key = tuple((str(f.resolve()), f.stat().st_size, f.stat().st_mtime_ns) for f in files)
    if key not in _DIGESTS:
        digest = xxhash.xxh3_128()
        for f in files:
            digest.update(f"{f.name}:{f.stat().st_size};".encode())
            with open(f, "rb") as handle:
                while chunk := handle.read(1 << 24):
                    digest.update(chunk)
        _DIGESTS[key] = digest.hexdigest()
    return _DIGESTS[key]


def _identify(name: str, source: str, folder: Path) -> ResolvedModel:
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise ModelError(f"model {name!r}: {folder} has no config.json; is it a transformers model folder (save_pretrained)?")
    files = _weight_files(folder)
    if not files:
        raise ModelError(f"model {name!r}: no weight files (*.safetensors or *.bin) in {folder}; the weights cannot be identified")
    config = json.loads(config_file.read_text())
    arch = {k: v for k, v in config.items() if k not in _CONFIG_NOISE}
    mean, std, rescale = IMAGENET_MEAN, IMAGENET_STD, 1 / 255
    pre_file = folder / PREPROCESSOR_FILE
    if pre_file.is_file():
        pre = json.loads(pre_file.read_text())
        if pre.get("do_normalize", True):
            mean, std = tuple(pre.get("image_mean", mean)), tuple(pre.get("image_std", std))
        else:
            mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
        rescale = float(pre.get("rescale_factor", rescale)) if pre.get("do_rescale", True) else 1.0
    if len(mean) != 3 or len(std) != 3:
        raise ModelError(f"model {name!r}: {pre_file.name} has image_mean {mean} / image_std {std}; expected 3 values each (RGB)")
    return ResolvedModel(
        name=name, source=source, path=folder, weights=weights_digest(files),
        config=xxhash.xxh3_128_hexdigest(canonical_json(arch).encode()), model_type=str(config.get("model_type", "")),
        mean=tuple(float(m) for m in mean), std=tuple(float(s) for s in std), rescale=rescale,
        is_demo=(folder / DEMO_MARKER).is_file(),
    )  # fmt: skip


def model_config(model: ResolvedModel):
    """The model's ``transformers`` config (defaults filled in), without loading weights."""
    key = (str(model.path), model.config)
    if key not in _CONFIGS:
        from transformers import AutoConfig

        try:
            _CONFIGS[key] = AutoConfig.from_pretrained(str(model.path), local_files_only=True, trust_remote_code=False)
        except (OSError, ValueError, KeyError) as err:
            raise ModelError(f"model {model.name!r}: config.json in {model.path} cannot be read by transformers: {err}") from None
    return _CONFIGS[key]


def load_model(model: ResolvedModel, kind: str, device: str | torch.device) -> torch.nn.Module:
    """The model in ``eval()`` mode, fp32, on ``device``; one instance per process and device.

    ``kind`` is ``"backbone"`` (``AutoModel``: a ViT-like encoder such as DINOv2) or ``"vitpose"``
    (``VitPoseForPoseEstimation``).
    """
    device = torch.device(device)
    key = (str(model.path), model.weights, kind, str(device))
    if key in _LOADED:
        return _LOADED[key]
    import transformers

    cls = {"backbone": transformers.AutoModel, "vitpose": transformers.VitPoseForPoseEstimation}[kind]
    with _quiet_transformers():
        try:
            net = cls.from_pretrained(str(model.path), local_files_only=True, dtype=torch.float32, trust_remote_code=False)
        except (OSError, ValueError, KeyError) as err:
            raise ModelError(f"model {model.name!r} ({model.path}) cannot be loaded as {cls.__name__}: {err}") from None
    if kind == "backbone":
        for attr in ("hidden_size", "patch_size"):
            if not hasattr(net.config, attr):
                raise ModelError(
                    f"model {model.name!r} is a {type(net).__name__} without config.{attr}; "
                    "the appearance backbone must be a ViT-like encoder such as DINOv2"
                )
    net = net.to(device).eval().requires_grad_(False)
    _LOADED[key] = net
    return net


@contextlib.contextmanager
def _quiet_transformers():
    """transformers' weight-loading progress bars off for the duration (restored after)."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def resolve_dtype(dtype: str, device: str | torch.device) -> torch.dtype:
    """``"auto"`` -> bf16 on CUDA (fp16 where unsupported), fp32 elsewhere; else the named dtype."""
    if dtype == "auto":
        if torch.device(device).type == "cuda":
            supported = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
            return torch.bfloat16 if supported else torch.float16
        return torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def autocast(device: str | torch.device, dtype: torch.dtype):
    """Autocast to ``dtype`` on ``device``; a no-op context for fp32."""
    device = torch.device(device)
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def make_demo_backbones(out_dir: Path | str, seed: int = 0) -> dict[str, Path]:
    """Write tiny models with **random weights** under ``out_dir``; returns ExtractConfig fields.

    ``{"backbone": <out_dir>/demo-dinov2, "pose_model": <out_dir>/demo-vitpose}``: a DINOv2-like
    encoder (hidden 64, 2 layers, patch 8; use ``crop_size=DEMO_CROP_SIZE``) and a ViTPose-like
    pose model (17 keypoints, 32 x 24 input). Same seed, same bytes, so demo stores are reused.

    .. warning:: The weights are random. Features from them carry no visual meaning; whoever
       prints results made with them must say so. Each folder holds a ``MSGVIP_DEMO_RANDOM_WEIGHTS``
       marker, and :attr:`ResolvedModel.is_demo` reports it.
    """
    from transformers import Dinov2Config, Dinov2Model, VitPoseBackboneConfig, VitPoseConfig, VitPoseForPoseEstimation

    out_dir = Path(out_dir)
    backbone_config = Dinov2Config(
        hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128, patch_size=8, image_size=32
    )
    pose_config = VitPoseConfig(
        backbone_config=VitPoseBackboneConfig(
            image_size=[32, 24], patch_size=[8, 8], hidden_size=32, num_hidden_layers=2,
            num_attention_heads=2, mlp_ratio=2, out_indices=[2],
        ),
        num_labels=17,
    )  # fmt: skip
    paths = {}
    with torch.random.fork_rng(devices=[]), _quiet_transformers():
        torch.manual_seed(seed)
        for field, folder, net in (
            ("backbone", "demo-dinov2", Dinov2Model(backbone_config)),
            ("pose_model", "demo-vitpose", VitPoseForPoseEstimation(pose_config)),
        ):
            path = out_dir / folder
            net.save_pretrained(path)
            (path / DEMO_MARKER).write_text("Random weights written by msgvip's make_demo_backbones: for demos and tests only, features mean nothing.\n")
            paths[field] = path
    return paths
