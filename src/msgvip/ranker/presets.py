"""Model presets: which ranker a run trains, with its hyper-parameters and training defaults.

``msgvip`` is the default ranker (model.py); ``svip`` reimplements the user's svip ranker and
``rgt`` the reference-000 relational graph-temporal system. Every preset takes the same inputs
(``features[name]`` (B, T, N, D), ``person_mask`` (B, T, N)), returns (B, N) logits, and scores
itself with ``loss_terms(logits, target, valid, train_config)``, so the trainer, evaluation and
prediction never ask which one they hold.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import nn

__all__ = ["DEFAULT_PRESET", "PRESETS", "Preset", "build_model", "preset_named", "preset_of"]


@dataclass(frozen=True)
class Preset:
    name: str
    module: Callable[[], ModuleType]  # imports the module of the classes on first use
    config_class: str
    model_class: str
    families: tuple[str, ...] = ()  # what it consumes by default (empty: every family of the store)
    about: str = ""
    record_defaults: str = ""  # the module's dict of what a run record meant by a field it lacks

    def _attr(self, name: str):
        return getattr(self.module(), name)

    @property
    def config(self) -> type:
        return self._attr(self.config_class)

    @property
    def model(self) -> type[nn.Module]:
        return self._attr(self.model_class)

    def complete_record(self, record: Mapping) -> dict:
        """A run's recorded model options, with the fields it lacks because they came later set to
        the values that rebuild the model it was trained as (``record_defaults``), not today's."""
        meant = getattr(self.module(), self.record_defaults) if self.record_defaults else {}
        return {**meant, **record}

    def config_from_record(self, record: Mapping) -> object:
        """The config a run recorded (see :meth:`complete_record`)."""
        return self.config(**self.complete_record(record))

    @property
    def train_defaults(self) -> Mapping:
        """TrainConfig values this model's authors train with; a config file or flag overrides them."""
        return getattr(self.module(), "TRAIN_DEFAULTS", {})


def _model() -> ModuleType:
    from . import model

    return model


def _svip() -> ModuleType:
    from . import svip

    return svip


def _rgt() -> ModuleType:
    from . import rgt

    return rgt


DEFAULT_PRESET = "msgvip"
PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset("msgvip", _model, "RankerConfig", "ImportanceRanker", about="GATv2 per frame + scene track + temporal Transformer + event token + dual head",
               record_defaults="RECORD_DEFAULTS"),
        Preset("svip", _svip, "SvipConfig", "SvipRanker", families=("appearance", "svip_box"), about="the user's svip ranker (yml2002/svip@26674fd)"),
        Preset("rgt", _rgt, "RgtConfig", "RelationalGraphTemporalRanker", about="rule edges (spatial, attention, synchronization) + relation-typed GATv2 + GRU memory (reference 000)"),
    )
}


def preset_named(name: str) -> Preset:
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown model preset {name!r}; choose from {sorted(PRESETS)}") from None


def preset_of(config: object) -> Preset:
    """The preset whose config class ``config`` is an instance of."""
    for preset in PRESETS.values():
        if type(config) is preset.config:
            return preset
    raise TypeError(f"{type(config).__name__} is the config of no model preset ({sorted(PRESETS)})")


def build_model(config: object, feature_dims: Mapping[str, int], feature_layers: Mapping[str, int] | None = None) -> nn.Module:
    """The preset's model; inputs it cannot take (e.g. rgt without geometry, several backbone
    layers for a preset that does not mix them) are a ValueError naming them."""
    preset = preset_of(config)
    if not feature_layers:
        return preset.model(config, dict(feature_dims))
    if preset.name != "msgvip":
        raise ValueError(
            f"model {preset.name!r} takes one backbone layer per family, but {dict(feature_layers)} hold several (layer counts); "
            "use --model msgvip, or a store extracted with --layers -1"
        )
    return preset.model(config, dict(feature_dims), feature_layers=dict(feature_layers))
