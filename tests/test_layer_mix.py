"""Layer mixing: `extract` stores the pooled tokens of several backbone layers (rows (L, D)) and
the ranker's LayerMix learns a convex combination of them. The default (last layer alone) keeps
its arrays and fingerprint. A tiny random DINOv2 written to a tmp dir; the hub is never reached."""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
import torch
from transformers import Dinov2Config, Dinov2Model

from msgvip.config import ConfigError, ExtractConfig
from msgvip.data.clip import Clip
from msgvip.extract.appearance import AppearanceExtractor
from msgvip.extract.registry import build_extractors, identity
from msgvip.ranker.layer_mix import LayerMix, layer_counts

HIDDEN, LAYERS, CROP = 16, 3, 16


@pytest.fixture(scope="module")
def backbone(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("models") / "dino"
    torch.manual_seed(0)
    config = Dinov2Config(hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=2, intermediate_size=32, patch_size=8, image_size=CROP)
    Dinov2Model(config).save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def clips() -> list[Clip]:
    """Two clips of random frames, some slots empty; the first person-frame always valid."""
    rng = np.random.default_rng(0)
    out = []
    for i, (frames, slots) in enumerate([(3, 4), (2, 3)]):
        pixels = rng.integers(0, 256, (frames, 24, 32, 3), dtype=np.uint8)
        mask = rng.random((frames, slots)) < 0.6
        mask[0, 0] = True
        corner = rng.uniform(0, 12, (frames, slots, 2))
        boxes = np.concatenate([corner, corner + rng.uniform(4, 12, (frames, slots, 2))], -1).astype(np.float32)
        boxes[~mask] = 0
        out.append(Clip(Path(f"c{i}.npz"), f"c{i}", pixels, boxes, mask, mask.astype(np.float32), -1, "", "", f"h{i}"))
    return out


def extractor(backbone: str, **overrides) -> AppearanceExtractor:
    fields = {"features": ("appearance",), "backbone": backbone, "crop_size": CROP, "pooling": "cls", "batch_size": 5, "local_files_only": True}
    return AppearanceExtractor(ExtractConfig(**{**fields, **overrides}))


def test_default_layers_keep_arrays_spec_and_fingerprint(backbone):
    plain = extractor(backbone, pooling="cls+mean")
    spelled = [extractor(backbone, pooling="cls+mean", layers=layers) for layers in [(-1,), (LAYERS,)]]
    assert "layers" not in plain.spec()
    for other in spelled:
        assert other.spec() == plain.spec()
        assert other.arrays() == plain.arrays() and plain.arrays()[0].shape == (2 * HIDDEN,)
        assert identity([other]) == identity([plain])
    config = {"features": ("appearance",), "backbone": backbone, "crop_size": CROP, "local_files_only": True}
    assert identity(build_extractors(ExtractConfig(**config))) == identity(build_extractors(ExtractConfig(**config, layers=(-1,))))


def test_layers_reach_the_fingerprint_in_one_spelling(backbone):
    mixed = extractor(backbone, layers=(-1, -2))
    assert mixed.spec()["layers"] == [LAYERS - 1, LAYERS]  # shallow to deep, whatever the order given
    assert identity([mixed]) == identity([extractor(backbone, layers=(LAYERS, LAYERS - 1))])
    assert identity([mixed]) != identity([extractor(backbone)])
    assert identity([mixed]) != identity([extractor(backbone, layers=(-1, -3))])


def test_layered_rows_hold_each_layer_and_the_last_equals_the_default(backbone, clips):
    single, mixed = extractor(backbone), extractor(backbone, layers=(-1, -2, 0))
    spec = mixed.arrays()[0]
    assert (spec.shape, spec.dims, spec.dtype) == ((3, HIDDEN), ("layer", "appearance_dim"), "float16")
    assert layer_counts(mixed.arrays(), ["appearance"]) == {"appearance": 3}  # the ranker reads the axis the extractor writes
    assert layer_counts(single.arrays(), ["appearance"]) == {}
    one, many = single.extract(clips), mixed.extract(clips)
    for a, b, clip in zip(one, many, clips):
        assert b["appearance"].shape == (clip.num_frames, clip.num_slots, 3, HIDDEN)
        np.testing.assert_array_equal(b["appearance"][..., -1, :], a["appearance"])
        assert not b["appearance"][~clip.person_mask].any()
        valid = b["appearance"][clip.person_mask]  # (V, 3, D)
        assert not np.array_equal(valid[:, 0], valid[:, 2]) and not np.array_equal(valid[:, 1], valid[:, 2])
    # one layer that is not the last: (D,) rows, its own store
    below = extractor(backbone, layers=(-2,))
    assert below.arrays()[0].shape == (HIDDEN,) and below.spec()["layers"] == [LAYERS - 1]
    np.testing.assert_array_equal(below.extract(clips)[0]["appearance"], many[0]["appearance"][..., 1, :])


def test_groups_without_people_give_layered_zeros(backbone, clips):
    mask = np.zeros_like(clips[0].person_mask)
    empty = Clip(Path("e.npz"), "e", clips[0].frames, np.zeros_like(clips[0].bboxes), mask, mask.astype(np.float32), -1, "", "", "he")
    (out,) = extractor(backbone, layers=(-1, -2)).extract([empty])
    assert out["appearance"].shape == (*empty.person_mask.shape, 2, HIDDEN) and not out["appearance"].any()


@pytest.mark.parametrize("layers", [(-1, -(LAYERS + 2)), (LAYERS + 1,)])
def test_layer_out_of_range_is_one_line_naming_option_and_layer_count(backbone, layers):
    with pytest.raises(ConfigError) as err:
        extractor(backbone, layers=layers).spec()
    message = str(err.value)
    assert "\n" not in message and message.startswith("layers ") and f"which has {LAYERS} layers" in message


def test_two_spellings_of_one_layer_are_refused(backbone):
    with pytest.raises(ConfigError, match=r"name one hidden state twice .*3 layers"):
        extractor(backbone, layers=(-1, LAYERS)).spec()


@pytest.mark.parametrize("layers", [(), (-1, -1), (1.0,), (True,), "-1"])
def test_config_refuses_malformed_layers(layers):
    with pytest.raises(ConfigError, match="^layers "):
        ExtractConfig(layers=layers)


def test_config_takes_a_json_list_and_records_it():
    config = ExtractConfig(layers=[-1, -4])
    assert config.layers == (-1, -4) and config.settings()["layers"] == [-1, -4]


def test_layer_mix_is_a_convex_combination_uniform_at_init():
    torch.manual_seed(0)
    mix = LayerMix(3)
    x = torch.randn(5, 3, 4)  # (V, L, D)
    torch.testing.assert_close(mix.weights(), torch.full((3,), 1 / 3))
    torch.testing.assert_close(mix(x), x.mean(1))
    with torch.no_grad():
        mix.logits.copy_(torch.tensor([2.0, -1.0, 0.5]))
    w = mix.weights()
    assert torch.all(w > 0) and torch.isclose(w.sum(), torch.tensor(1.0))
    torch.testing.assert_close(mix(x), (w.view(1, 3, 1) * x).sum(1))
    with torch.no_grad():
        mix.logits.copy_(torch.tensor([0.0, 50.0, 0.0]))  # all weight on one layer: that layer, exactly enough
    torch.testing.assert_close(mix(x), x[:, 1])
    assert mix(torch.randn(2, 7, 3, 4)).shape == (2, 7, 4)  # leading dims pass through


def test_gradients_reach_the_logits():
    torch.manual_seed(0)
    mix = LayerMix(4)
    x = torch.randn(6, 4, 8)
    x[:, 2] += 3  # the loss below rewards large outputs: layer 2 is the one it asks for
    (-mix(x).sum()).backward()
    grad = mix.logits.grad
    assert grad is not None and grad.abs().sum() > 0
    assert int(grad.argmin()) == 2  # descent raises that layer's weight
    torch.testing.assert_close(grad.sum(), torch.tensor(0.0), atol=1e-5, rtol=0)  # softmax: shifting all logits changes nothing


def test_layer_mix_refuses_wrong_shapes():
    with pytest.raises(ValueError, match=r"takes \(\.\.\., 3, D\) inputs, got shape \(5, 2, 4\)"):
        LayerMix(3)(torch.randn(5, 2, 4))
    with pytest.raises(ValueError, match="positive number of layers"):
        LayerMix(0)
