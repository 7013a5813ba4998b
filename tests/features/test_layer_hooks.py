"""Reading layers with hooks, and pooling."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dimalign.features.layers import (
    LayerReader,
    check_single_calls,
    count_calls,
    layer_shapes,
    list_layers,
    parse_layers,
    pool_tensor,
)


def known_conv_model() -> nn.Sequential:
    """1x1 conv 3 -> 2 channels with weights 1 and bias -10, then an in-place ReLU.

    On an all-ones input every conv value is 3 * 1 - 10 = -7, and the ReLU
    overwrites that tensor with zeros.
    """
    conv = nn.Conv2d(3, 2, kernel_size=1)
    nn.init.constant_(conv.weight, 1.0)
    nn.init.constant_(conv.bias, -10.0)
    return nn.Sequential(conv, nn.ReLU(inplace=True), nn.Flatten(), nn.Linear(2 * 4 * 4, 1)).eval()


def test_conv_before_inplace_relu_keeps_values():
    model = known_conv_model()
    requests = parse_layers(["0", "1"], "raw", model)
    captured = LayerReader(model, requests)(torch.ones(2, 3, 4, 4))

    assert captured["0"].shape == (2, 2, 4, 4)
    assert torch.all(captured["0"] == -7.0)
    assert torch.all(captured["1"] == 0.0)


def test_uncloned_hook_sees_relu_output():
    # The hazard the clone guards against: a hook that keeps the output
    # tensor itself reads the in-place ReLU's zeros.
    model = known_conv_model()
    outputs = []
    handle = model[0].register_forward_hook(lambda module, args, output: outputs.append(output))
    with torch.inference_mode():
        model(torch.ones(1, 3, 4, 4))
    handle.remove()
    assert torch.all(outputs[0] == 0.0)


def test_flatten_and_gap_of_known_map():
    model = known_conv_model()
    requests = parse_layers(["0", "1"], ["flatten", "gap"], model)
    captured = LayerReader(model, requests)(torch.ones(2, 3, 4, 4))
    assert captured["0"].shape == (2, 32)
    assert torch.all(captured["0"] == -7.0)
    assert captured["1"].shape == (2, 2)
    assert torch.all(captured["1"] == 0.0)


def test_gap_of_two_by_two_map_is_mean():
    feature_map = torch.tensor([[[[1.0, 2.0], [3.0, 6.0]], [[-4.0, 0.0], [0.0, 0.0]]]])
    pooled = pool_tensor(feature_map, "gap")
    assert pooled.shape == (1, 2)
    assert pooled[0, 0].item() == 3.0  # (1 + 2 + 3 + 6) / 4
    assert pooled[0, 1].item() == -1.0  # (-4 + 0 + 0 + 0) / 4


def test_gap_on_vector_output_raises():
    with pytest.raises(ValueError, match="use raw or flatten"):
        pool_tensor(torch.ones(2, 5), "gap")


def test_gap_rejects_token_outputs():
    with pytest.raises(ValueError, match=r"gap is ambiguous for the 3-D output of shape \(2, 197, 8\)"):
        pool_tensor(torch.ones(2, 197, 8), "gap")


def test_gap_rejects_channels_last_maps():
    with pytest.raises(ValueError, match=r"shape \(2, 7, 7, 96\) looks channels-last"):
        pool_tensor(torch.ones(2, 7, 7, 96), "gap")
    assert pool_tensor(torch.ones(2, 96, 7, 7), "gap").shape == (2, 96)
    assert pool_tensor(torch.ones(2, 56, 56, 56), "gap").shape == (2, 56)
    assert pool_tensor(torch.ones(2, 1280, 1, 1), "gap").shape == (2, 1280)


def test_gap_error_names_the_layer():
    model = known_conv_model()
    requests = parse_layers(["1", "2"], "gap", model)

    with pytest.raises(ValueError) as error:
        LayerReader(model, requests)(torch.ones(1, 3, 4, 4))

    assert str(error.value).startswith("layer 2: gap needs an output with axes after the channel axis")


def test_input_suffix_reads_module_input():
    model = known_conv_model()
    requests = parse_layers(["3:input", "2"], "raw", model)
    captured = LayerReader(model, requests)(torch.ones(1, 3, 4, 4))
    assert torch.equal(captured["3:input"], captured["2"])
    assert captured["3:input"].shape == (1, 32)


def test_forward_stops_after_last_layer():
    model = known_conv_model()
    calls = []
    handle = model[3].register_forward_hook(lambda module, args, output: calls.append(1))
    LayerReader(model, parse_layers(["0"], "gap", model))(torch.ones(1, 3, 4, 4))
    handle.remove()
    assert calls == []


def test_hooks_removed_after_reading():
    model = known_conv_model()
    LayerReader(model, parse_layers(["0"], "gap", model))(torch.ones(1, 3, 4, 4))
    assert all(not module._forward_hooks for module in model.modules())
    assert all(not module._forward_pre_hooks for module in model.modules())


@pytest.mark.parametrize("layers, pools, message", [
    (["9"], "raw", "model has no layer '9'"),
    (["0", "1"], ["raw", "gap", "raw"], "3 poolings for 2 layers"),
    (["0"], "max", "invalid pooling 'max'"),
    (["0", "0"], "raw", "name a layer twice"),
    (["0:output"], "raw", "the only suffix is :input"),
    ([], "raw", "no layer requested"),
])
def test_parse_layers_rejects_invalid(layers, pools, message):
    with pytest.raises(ValueError, match=message):
        parse_layers(layers, pools, known_conv_model())


class ReusedReLU(nn.Module):
    """conv -> relu -> conv -> relu with one ReLU module, as torchvision's ResNet blocks do."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 2, 1)
        self.conv2 = nn.Conv2d(2, 5, 1)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.conv2(self.relu(self.conv1(x))))


def test_count_calls_sees_reused_module():
    assert count_calls(ReusedReLU(), torch.ones(1, 3, 4, 4)) == {"conv1": 1, "conv2": 1, "relu": 2}


def test_reused_module_rejected():
    model = ReusedReLU()

    with pytest.raises(ValueError) as error:
        check_single_calls(model, parse_layers(["conv2", "relu"], "gap", model), torch.ones(2, 3, 4, 4))

    assert "have no single output: relu (2 times)" in str(error.value)
    with pytest.raises(ValueError, match=r"relu:input \(2 times\)"):
        check_single_calls(model, parse_layers(["relu:input"], "raw", model), torch.ones(2, 3, 4, 4))
    check_single_calls(model, parse_layers(["conv1", "conv2"], "raw", model), torch.ones(2, 3, 4, 4))


def test_extract_rejects_reused_module(tmp_path):
    from feature_helpers import write_random_images
    from torchvision import transforms as T

    from dimalign.features.extract import compute_features, extract_features
    from dimalign.features.models import LoadedModel

    write_random_images(tmp_path / "images", 3)
    loaded = LoadedModel(ReusedReLU().eval(), T.ToTensor(), "reused", "random-init(seed=0)", None,
                         "conv2", torch.device("cpu"))

    with pytest.raises(ValueError, match="relu"):
        extract_features(tmp_path / "images", tmp_path / "out", loaded, layers=["relu"], pools="gap")
    assert not (tmp_path / "out").exists()
    with pytest.raises(ValueError, match="relu"):
        compute_features(loaded, [T.ToPILImage()(torch.ones(3, 4, 4))], layers=["relu"], pools="gap")
    features = extract_features(tmp_path / "images", tmp_path / "out", loaded, layers=["conv2"], pools="gap")
    assert features.n_rows == 3


def test_list_layers_and_shapes():
    model = known_conv_model()
    assert list_layers(model) == [("0", "Conv2d"), ("1", "ReLU"), ("2", "Flatten"), ("3", "Linear")]
    assert layer_shapes(model, torch.ones(1, 3, 4, 4)) == {
        "0": (2, 4, 4), "1": (2, 4, 4), "2": (32,), "3": (1,)
    }


def test_parse_layers_takes_one_name_as_a_string():
    """A string is one layer name, as a string is one pooling, not a sequence of characters."""
    requests = parse_layers("3:input", "raw", known_conv_model())
    assert [(request.name, request.module_name, request.use_input) for request in requests] == [("3:input", "3", True)]
