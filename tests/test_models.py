import io

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
