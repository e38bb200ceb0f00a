"""Typed configs with defaults that work, and the rules for loading them from files."""

from __future__ import annotations

import json
import os
import tomllib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from .data.clip import DEFAULT_MAX_CLIP_BYTES
from .domains import check_fields, one_of, ranged


class ConfigError(ValueError):
    """A config file, flag combination or label file that cannot be used; names the source."""


POOLINGS = ("cls", "mean", "cls+mean")
DTYPES = ("auto", "float32", "bfloat16", "float16")


@dataclass(frozen=True)
class ExtractConfig:
    """What `msgvip extract` computes and how.

    Only the fields that change the numbers reach the fingerprint (through each extractor's
    ``spec()``); ``batch_size``, ``num_workers``, ``device`` and ``local_files_only`` never do.
    ``dtype="auto"`` means bf16 autocast on CUDA (fp16 where bf16 is unsupported) and fp32 on
    CPU; the resolved compute dtype is what the specs record.
    """

    features: tuple[str, ...] = ("geometry",)
    batch_size: int = ranged(256, 1)  # crops per model call
    num_workers: int = ranged(2, 0, 256)  # clip-decoding threads / processes
    device: str = "cpu"
    backbone: str = "facebook/dinov2-base"  # appearance + face: hub id or local directory
    pose_model: str = "usyd-community/vitpose-base-simple"  # pose (+ face): hub id or local directory
    crop_size: int = ranged(224, 1, 4096)  # appearance and face crops are crop_size x crop_size
    context: float = ranged(0.1, 0, 4)  # appearance crops: box grown by this fraction of its size on each side
    pooling: str = one_of("cls+mean", POOLINGS)  # appearance: "cls", "mean" (patch tokens) or "cls+mean" (both, concatenated)
    # appearance: the backbone's hidden states to pool, as indices into transformers'
    # ``hidden_states`` (0 the patch embeddings, -1 the last layer), e.g. (-1, -4, -8, -12).
    # One layer gives (D,) rows; several give (L, D) rows, shallow to deep, for the ranker to mix.
    layers: tuple[int, ...] = (-1,)
    dtype: str = one_of("auto", DTYPES)  # compute dtype: auto | float32 | bfloat16 | float16
    local_files_only: bool = False  # never reach the hub; models must be local or already cached
    max_clip_bytes: int = ranged(DEFAULT_MAX_CLIP_BYTES, 1)  # a clip declaring more decoded bytes is refused, unread

    def __post_init__(self) -> None:
        for name in ("backbone", "pose_model"):  # a pathlib.Path is welcome, a str is what JSON holds
            if isinstance(getattr(self, name), os.PathLike):
                object.__setattr__(self, name, os.fspath(getattr(self, name)))
        if isinstance(self.layers, list):  # what JSON and TOML hold
            object.__setattr__(self, "layers", tuple(self.layers))
        if (
            not isinstance(self.layers, tuple) or not self.layers
            or any(isinstance(i, bool) or not isinstance(i, int) for i in self.layers)
        ):  # fmt: skip
            raise ConfigError(f"layers must be a non-empty tuple of layer indices such as (-1, -4, -8, -12), got {self.layers!r}")
        if len(set(self.layers)) != len(self.layers):
            raise ConfigError(f"layers {list(self.layers)} names a layer twice; list each once")
        for name, kinds in (("batch_size", int), ("num_workers", int), ("crop_size", int), ("context", (int, float)), ("max_clip_bytes", int)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, kinds):
                raise ConfigError(f"ExtractConfig.{name} must be {'a number' if name == 'context' else 'an integer'}, got {value!r}")
        try:
            check_fields(self)
        except ValueError as err:
            raise ConfigError(str(err)) from None

    def settings(self) -> dict:
        """The options that decide the features (all but the runtime fields)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items() if k not in RUNTIME_FIELDS}


RUNTIME_FIELDS = ("batch_size", "num_workers", "device", "local_files_only", "max_clip_bytes")


CONFIG_SECTIONS = ("model", "train")


def read_config_file(path: str | os.PathLike, run_sections: Callable[[dict], dict[str, dict]] | None = None) -> dict[str, dict]:
    """The sections of a TOML (``.toml``) or JSON (``.json``) config file, e.g.
    ``{"model": {"hidden": 64}, "train": {"epochs": 10}}``; either section may be missing.

    A run's own config.json is read as the sections it trained with (``run_sections(record)``,
    by default its ``model`` with ``preset`` = its ``model_preset``, and its ``train``); the
    record's other fields (store, probe, runtime, ...) describe the run and are not settings.

    Plain data only, never executed. Any other format, malformed text (with the line and column
    where the parser gives them), JSON's non-standard NaN/Infinity, a key given twice, an unknown
    section or a section that is not a table raises a ConfigError naming the file. The keys inside
    a section are checked by whoever builds the config from it.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".toml", ".json"):
        raise ConfigError(f"{path}: a config file must be TOML (.toml) or JSON (.json), got {suffix or 'no extension'}; convert it to one of those")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not UTF-8 text (byte {err.start}); save it as UTF-8") from None
    try:
        if suffix == ".toml":
            record = tomllib.loads(text)
        else:
            record = json.loads(text, object_pairs_hook=_object_without_repeats, parse_constant=_refuse_constant)
    except tomllib.TOMLDecodeError as err:  # its message ends with "(at line L, column C)"
        raise ConfigError(f"{path}: invalid TOML: {err}") from None
    except json.JSONDecodeError as err:
        raise ConfigError(f"{path}: invalid JSON at line {err.lineno}, column {err.colno}: {err.msg}") from None
    except ValueError as err:  # from the two hooks, which know no position
        raise ConfigError(f"{path}: invalid JSON: {err}") from None
    except RecursionError:
        raise ConfigError(f"{path}: invalid {suffix[1:].upper()}: arrays or objects nested too deeply for a config file") from None
    if not isinstance(record, dict):
        raise ConfigError(f"{path}: the top level must be an object with 'model' and/or 'train' sections, got {type(record).__name__}")
    if is_run_record(record):
        _check_tables(record, CONFIG_SECTIONS, path)
        record = (run_sections or _run_sections)(record)
    unknown = sorted(set(record) - set(CONFIG_SECTIONS))
    if unknown:
        raise ConfigError(f"{path}: unknown sections {unknown}; use {list(CONFIG_SECTIONS)}")
    _check_tables(record, record, path)
    return record


def is_run_record(record: Mapping) -> bool:
    """Whether a config file's top level is the config.json a run wrote (``msgvip train --config
    RUN/config.json`` reads the settings it trained with; see `read_config_file`)."""
    return all(key in record for key in ("fingerprint", "model", "train"))


def _run_sections(record: dict) -> dict[str, dict]:
    return {"model": {"preset": record.get("model_preset", "msgvip"), **record["model"]}, "train": record["train"]}


def _check_tables(record: Mapping, names: Iterable[str], path: Path) -> None:
    for name in names:
        if not isinstance(record[name], dict):
            raise ConfigError(f"{path}: section {name!r} must be a table of settings, got {record[name]!r}")


def parse_settings(pairs: Sequence[str], source: str = "--set") -> dict[str, dict]:
    """``["model.hidden=32", "train.lr=2e-3"]`` -> ``{"model": {"hidden": 32}, "train": {"lr": 0.002}}``.

    A value is read as a TOML value where it is one (``32``, ``2e-3``, ``true``, ``[-1, -4]``,
    ``"text"``), else taken as text (``model.input_norm=layer``). A pair without ``=``, a key
    outside ``model.``/``train.`` or a key given twice is a ConfigError naming it; the keys within
    a section are checked by whoever builds the config, as for a config file.
    """
    sections: dict[str, dict] = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        section, dot, name = key.strip().partition(".")
        if not sep or not dot or not name:
            raise ConfigError(f"{source} {pair!r}: write SECTION.KEY=VALUE, e.g. model.hidden=32 or train.lr=2e-3")
        if section not in CONFIG_SECTIONS:
            raise ConfigError(f"{source} {pair!r}: unknown section {section!r}; use {list(CONFIG_SECTIONS)}")
        try:
            value = tomllib.loads(f"v = {text.strip()}")["v"]
        except (tomllib.TOMLDecodeError, RecursionError):
            value = text.strip()
        if name in sections.setdefault(section, {}):
            raise ConfigError(f"{source} {key}: given twice; give it once")
        sections[section][name] = value
    return sections


def _object_without_repeats(pairs: list[tuple[str, object]]) -> dict:
    # json keeps the last of repeated keys silently; TOML refuses them, so JSON does too
    record = {}
    for key, value in pairs:
        if key in record:
            raise ValueError(f"key {key!r} appears twice in one object")
        record[key] = value
    return record


def _refuse_constant(name: str) -> None:
    raise ValueError(f"{name} is not standard JSON; write a number")


def check_device(device: str) -> None:
    """Refuse a device this machine cannot run on, so a command fails before it creates anything.

    ``cpu`` always passes; ``cuda`` needs CUDA, ``cuda:N`` also needs N < the device count. Other
    torch device types (``mps``, ...) are left to torch. Raises ConfigError naming the device.
    """
    if device == "cpu":
        return
    import torch  # here, not at the top: commands that never touch a model start without torch

    try:
        parsed = torch.device(device)
    except RuntimeError:
        raise ConfigError(f"device {device!r} is not a device name; use cpu, cuda or cuda:N") from None
    if parsed.type != "cuda":
        return
    if not torch.cuda.is_available():
        build = "a CPU-only build of torch" if torch.version.cuda is None else f"torch built for CUDA {torch.version.cuda}, but no GPU or driver is visible"
        raise ConfigError(f"device {device!r}: CUDA is not available on this machine ({build}); use --device cpu")
    count = torch.cuda.device_count()
    if parsed.index is not None and parsed.index >= count:
        raise ConfigError(f"device {device!r}: this machine has {count} CUDA device(s), cuda:0 to cuda:{count - 1}; pick one of those")
