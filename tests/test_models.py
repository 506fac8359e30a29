import io
import json

import pytest
import torch

from vggtool.errors import VggtoolError
from vggtool.models import ArchSpec, build_model, check_compatible, infer_spec


def test_vgg19_bn_matches_the_report_layout_and_size():
    model = build_model(ArchSpec("vgg19_bn", 100))
    state = model.state_dict()
    assert sum(p.numel() for p in model.parameters()) == 39_327_652
    keys = list(state)
    assert keys[:3] == ["features.0.weight", "features.0.bias", "features.1.weight"]
    assert "features.1.running_mean" in state and "features.49.weight" in state
    assert [k for k in keys if k.startswith("classifier")] == [
        f"classifier.{i}.{p}" for i in (0, 3, 6) for p in ("weight", "bias")]
    assert state["classifier.0.weight"].shape == (4096, 512)
    buf = io.BytesIO()
    torch.save(state, buf)
    assert round(buf.tell() / 1e6, 2) == 157.39


@pytest.mark.parametrize("arch,convs", [("vgg11_bn", 8), ("vgg13_bn", 10), ("vgg16_bn", 13)])
def test_spec_is_inferred_from_shapes(arch, convs):
    model = build_model(ArchSpec(arch, 10, 0.25))
    assert sum(isinstance(m, torch.nn.Conv2d) for m in model.modules()) == convs
    assert infer_spec(model.state_dict()) == ArchSpec(arch, 10, 0.25)
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 10)


def test_mismatch_names_keys_and_shapes():
    small = build_model(ArchSpec("vgg11_bn", 100, 0.5))
    with pytest.raises(VggtoolError) as err:
        check_compatible(build_model(ArchSpec("vgg19_bn")), small.state_dict(), "checkpoint x")
    assert "missing: features" in str(err.value) and "shape" in str(err.value)


def test_bad_arch_and_width():
    with pytest.raises(VggtoolError, match="unknown architecture"):
        ArchSpec("resnet50")
    with pytest.raises(VggtoolError, match="width"):
        ArchSpec("vgg11_bn", 100, 0)


# width is only nominal here; infer_spec reads it as first conv / 64 = 8 / 64
UNEVEN = ArchSpec("vgg11_bn", 10, 0.125, channels=(8, 5, 13, 7, 9, 6, 11, 4), hidden=(17, 9))


def test_uneven_channels_build_run_and_are_inferred():
    model = build_model(UNEVEN)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [8, 5, 13, 7, 9, 6, 11, 4]
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
    # conv weights + biases + BN gamma/beta, then the three Linear layers:
    # 3->8: 216+8+16, 8->5: 360+5+10, 5->13: 585+13+26, 13->7: 819+7+14,
    # 7->9: 567+9+18, 9->6: 486+6+12, 6->11: 594+11+22, 11->4: 396+4+8  = 4212
    # 4->17: 68+17, 17->9: 153+9, 9->10: 90+10                          = 347
    assert sum(p.numel() for p in model.parameters()) == 4212 + 347
    state = model.state_dict()
    assert state["classifier.0.weight"].shape == (17, 4) and state["features.25.weight"].shape == (4, 11, 3, 3)
    assert infer_spec(state) == UNEVEN
    assert not UNEVEN.is_uniform and ArchSpec("vgg11_bn", 10, 0.125).is_uniform


def test_width_derives_channels_and_hidden():
    spec = ArchSpec("vgg11_bn", 10, 0.25)
    assert spec.channels == (16, 32, 64, 64, 128, 128, 128, 128) and spec.hidden == (1024, 1024)
    assert ArchSpec("vgg11_bn", 10, 0.25, 0.5, (16, 32, 64, 64, 128, 128, 128, 128), (1024, 1024)) == spec
    assert ArchSpec("vgg11_bn", 10, 0.25, channels=[16, 32, 64, 64, 128, 128, 128, 128]) == spec


def test_dict_round_trips_and_old_dicts_load():
    old = {"arch": "vgg11_bn", "num_classes": 10, "width": 0.25, "dropout": 0.5}
    assert ArchSpec.from_dict(old) == ArchSpec("vgg11_bn", 10, 0.25)
    assert ArchSpec.from_dict({**old, "future_key": 1}) == ArchSpec("vgg11_bn", 10, 0.25)
    d = UNEVEN.to_dict()
    assert d["channels"] == [8, 5, 13, 7, 9, 6, 11, 4] and d["hidden"] == [17, 9]
    assert ArchSpec.from_dict(d) == UNEVEN
    loaded = ArchSpec.from_dict(json.loads(json.dumps(d)))
    assert loaded == UNEVEN and hash(loaded) == hash(UNEVEN) and isinstance(loaded.channels, tuple)


@pytest.mark.parametrize("channels,hidden,match", [
    ((8, 5, 13, 7, 9, 6, 11), (17, 9), "8 entries"),
    ((8, 5, 13, 7, 0, 6, 11, 4), (17, 9), ">= 1"),
    ((8, 5, 13, 7, -9, 6, 11, 4), (17, 9), ">= 1"),
    ((8, 5, 13, 7, 9.0, 6, 11, 4), (17, 9), "integers"),
    ((8, 5, 13, 7, 9, 6, 11, 4), (17,), "hidden"),
    ((8, 5, 13, 7, 9, 6, 11, 4), (17, 0), "hidden"),
    (None, (17, 9), "channels"),
])
def test_bad_channels(channels, hidden, match):
    with pytest.raises(VggtoolError, match=match):
        ArchSpec("vgg11_bn", 10, 0.25, channels=channels, hidden=hidden)


@pytest.mark.parametrize("d", [
    [1, 2], {"arch": "vgg11_bn"}, {"arch": 3, "num_classes": 10, "width": 1.0},
    {"arch": "vgg11_bn", "num_classes": "10", "width": 1.0}, {"arch": "vgg11_bn", "num_classes": 10, "width": "1"},
    {"arch": "vgg11_bn", "num_classes": 10, "width": 1.0, "channels": "abc"},
])
def test_malformed_dicts(d):
    with pytest.raises(VggtoolError):
        ArchSpec.from_dict(d)


def test_inconsistent_state_dict():
    state = build_model(UNEVEN).state_dict()
    bad = dict(state, **{"features.15.weight": torch.zeros(9, 6, 3, 3)})  # takes 6 but the conv before gives 7
    with pytest.raises(VggtoolError, match="features.15 takes 6 inputs but receives 7"):
        infer_spec(bad)
    with pytest.raises(VggtoolError, match="classifier.0"):
        infer_spec(dict(state, **{"classifier.0.weight": torch.zeros(17, 5)}))
    with pytest.raises(VggtoolError, match="features.0"):
        infer_spec(dict(state, **{"features.0.weight": torch.zeros(8, 1, 3, 3)}))
