"""Every value a user can give a config field, checked in one place: a config, or a one-line
refusal naming the field (property-based: hypothesis throws generated values at every field)."""

from __future__ import annotations

from dataclasses import fields

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from msgvip.config import ConfigError
from msgvip.pipelines.train import train_configs
from msgvip.ranker.model import RankerConfig
from msgvip.ranker.rgt import RgtConfig
from msgvip.ranker.svip import SvipConfig
from msgvip.ranker.trainer import TrainConfig, build_config

VALUES = st.one_of(
    st.none(), st.booleans(), st.integers(), st.integers(min_value=-(10**400), max_value=10**400), st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20), st.lists(st.integers(-5, 5), max_size=4), st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)  # fmt: skip
CONFIGS = [TrainConfig, RankerConfig, SvipConfig, RgtConfig]


@pytest.mark.parametrize("cls", CONFIGS, ids=lambda c: c.__name__)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_any_value_of_any_field_makes_a_config_or_a_one_line_refusal(cls, data):
    name = data.draw(st.sampled_from([f.name for f in fields(cls)]))
    value = data.draw(VALUES)
    try:
        config = build_config(cls, {name: value}, "test.toml")
    except ConfigError as err:
        message = str(err)
        assert message.startswith("test.toml: ") and name in message and "\n" not in message
        return
    assert getattr(config, name) == value or isinstance(value, list | int)  # a list becomes a tuple, an int a float


@settings(max_examples=80, deadline=None)
@given(section=st.sampled_from(["train", "model"]), data=st.data(), text=st.text(max_size=30))
def test_any_set_text_makes_configs_or_a_one_line_refusal(section, data, text):
    cls = TrainConfig if section == "train" else RankerConfig
    name = data.draw(st.sampled_from([f.name for f in fields(cls)]))
    try:
        train_configs(settings=[f"{section}.{name}={text}"])
    except ConfigError as err:
        assert "\n" not in str(err) and (name in str(err) or "--set" in str(err))


@pytest.mark.parametrize(
    ("field", "value", "domain"),
    [("grad_clip", -1.0, "a number > 0 (inf: no clipping)"), ("batch_size", 0, "an integer >= 1"), ("lr", float("nan"), "a finite number >= 0"),
     ("warmup_fraction", 5.0, "a finite number in [0, 1]"), ("in_memory", "maybe", "one of ['auto', 'yes', 'no']"), ("epochs", 0, "an integer >= 1")],
)  # fmt: skip
def test_a_refusal_names_the_source_the_field_the_value_and_the_domain(field, value, domain):
    with pytest.raises(ConfigError) as err:
        build_config(TrainConfig, {field: value}, "exp.toml")
    assert str(err.value) == f"exp.toml: TrainConfig.{field} must be {domain}, got {value!r}"
