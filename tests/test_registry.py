"""The recipe registry's guards: clashing names, missing skeletons, broken plugins, malformed records."""

import dataclasses
import sys

import pytest

from vggtool import compress as c
from vggtool.compress import base
from vggtool.errors import VggtoolError
from vggtool.models import ArchSpec


def test_two_recipe_types_of_one_name_are_refused():
    with pytest.raises(VggtoolError, match="two recipe types are called StaticQuant"):
        type("StaticQuant", (c.Recipe,), {"__module__": "elsewhere"})


def test_a_recipe_must_declare_its_output_as_an_output():
    with pytest.raises(VggtoolError, match="must declare its output"):
        type("BadOutput", (c.Recipe,), {"output": "float"})


def test_one_variant_name_for_two_recipes_is_refused(monkeypatch):
    monkeypatch.setattr(base, "REGISTRY", dict(base.REGISTRY))
    from vggtool.compress.quant_torch import StaticQuant

    @dataclasses.dataclass(frozen=True)
    class Impostor(c.Recipe):
        """Claims a registered name."""

        @property
        def stem(self):
            return "static-int8"

    base.register(StaticQuant())  # the same recipe again is fine
    with pytest.raises(VggtoolError, match="registered twice"):
        base.register(Impostor())


def test_quantized_output_without_a_skeleton_is_a_clear_error():
    @dataclasses.dataclass(frozen=True)
    class NoSkeleton(c.Recipe):
        """Quantized, but registers no skeleton."""

        output = c.Output.QUANTIZED

    with pytest.raises(VggtoolError, match="has no skeleton"):
        c.skeleton(NoSkeleton(), ArchSpec("vgg11_bn", 10, 0.125))


@pytest.mark.parametrize("record,fragment", [
    ({"type": "NoSuchRecipe", "params": {}}, "no installed recipe type"),
    ({"type": "StaticQuant", "params": {"fuse": True, "colour": "red"}}, "no parameter(s) colour"),
    ({"type": "StaticQuant", "params": {"calib_size": -1}}, "calibration size must be positive"),
    ("not a dict", "unknown recipe"),
])
def test_malformed_recipe_records_are_one_line_errors(record, fragment):
    with pytest.raises(VggtoolError, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        c.recipe_from_dict(record)


def test_names_never_carry_spaces_slashes_or_brackets():
    from vggtool.compress.quant_onnx import OnnxInt8

    recipe = OnnxInt8(exclude=("/features/features.0/Conv", "/classifier/classifier.6/Gemm"))
    assert recipe.name == "onnx-int8-excludefeatures_features.0_Conv_classifier_classifier.6_Gemm"
    assert c.recipe_from_dict(recipe.to_dict()) == recipe  # tuples survive the JSON round trip


def test_a_broken_plugin_warns_and_the_builtin_recipes_still_load(monkeypatch):
    class Broken:
        name, value = "broken", "nowhere:thing"

        def load(self):
            raise ImportError("no module named nowhere")

    import importlib.metadata

    monkeypatch.setattr(importlib.metadata, "entry_points", lambda group: [Broken()])
    with pytest.warns(UserWarning, match="recipe plugin broken"):
        module = importlib.reload(sys.modules["vggtool.compress"])
    assert "static-int8-fused" in module.REGISTRY
