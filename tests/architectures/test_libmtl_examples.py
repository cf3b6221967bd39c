"""Encoders shaped like LibMTL's examples (office, nyu, cityscapes, qm9, xtreme) in every architecture.

The image encoders (a ResNet, a dilated ResNet, a module holding a ResNet) work in all
eight; the graph and text encoders, which have no stages and take dict inputs, work in
HPS, and elsewhere fail at construction or on the first batch with an error that says
what to change.
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.nn import functional as F

import mtlkit.architectures as A
from mtlkit.architectures.base import _as_stages
from mtlkit.errors import SpecError
from mtlkit.graph import NodeError
from mtlkit.weighting import get

sys.path.insert(0, str(Path(__file__).parent))
from libmtl_example_encoders import (
    DenseHead,
    DilatedResNet,
    GraphEncoder,
    OfficeEncoder,
    SmallResNet,
    TextEncoder,
    graph_batch,
    image_batch,
    text_batch,
)

TASKS = ["t1", "t2"]
ARCHS = {
    "HPS": (A.HPS, {}),
    "CrossStitch": (A.CrossStitch, {}),
    "MMoE": (A.MMoE, {"num_experts": 2}),
    "MTAN": (A.MTAN, {}),
    "CGC": (A.CGC, {"num_experts": [1, 1, 1]}),
    "PLE": (A.PLE, {"num_experts": [1, 1, 1]}),
    "DSelectK": (A.DSelectK, {"num_experts": 2, "num_nonzeros": 1}),
    "LTB": (A.LTB, {}),
}


def _office():
    return OfficeEncoder, {t: nn.Linear(12, 5) for t in TASKS}, {t: F.cross_entropy for t in TASKS}


def _dense(channels: dict[str, int]):
    def make():
        heads = {t: DenseHead(c, (16, 16)) for t, c in channels.items()}
        return DilatedResNet, heads, {t: F.mse_loss for t in channels}

    return make


IMAGE_EXAMPLES = {
    "office": (_office, lambda n: {t: torch.randint(0, 5, (n,)) for t in TASKS}),
    "nyu": (_dense({"t1": 3, "t2": 1}), lambda n: {"t1": torch.randn(n, 3, 16, 16), "t2": torch.randn(n, 1, 16, 16)}),
    "cityscapes": (
        _dense({"t1": 7, "t2": 1}),
        lambda n: {"t1": torch.randn(n, 7, 16, 16), "t2": torch.randn(n, 1, 16, 16)},
    ),
}


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("example", IMAGE_EXAMPLES)
def test_image_example_encoders_train_in_every_architecture(example, arch):
    make, targets = IMAGE_EXAMPLES[example]
    encoder_class, decoders, losses = make()
    cls, kwargs = ARCHS[arch]
    torch.manual_seed(0)
    model = cls(TASKS, encoder_class, decoders, rep_grad=True, losses=losses, **kwargs)
    if arch == "LTB":
        model.set_epoch(1)  # past the warm-up, whose mean mixing leaves the branching logits unused
    x = image_batch(n=4)
    out = model(x)
    assert set(out) == set(TASKS) and all(torch.isfinite(y).all() for y in out.values())
    step = model.training_step({"input_data": x}, targets(4))
    get("mgda").backward(step.losses, shared_reps=step.shared_reps)
    shared = model.shared_parameters()
    assert shared and all(p.grad is not None and torch.isfinite(p.grad).all() for p in shared)


@pytest.mark.parametrize("arch", ["HPS", "MMoE", "MTAN", "CGC", "DSelectK"])
def test_office_is_multi_input_and_each_domain_brings_its_own_images(arch):
    encoder_class, decoders, losses = _office()
    cls, kwargs = ARCHS[arch]
    model = cls(TASKS, encoder_class, decoders, multi_input=True, losses=losses, **kwargs)
    inputs = {"t1": image_batch(n=4, seed=1), "t2": image_batch(n=3, seed=2)}
    step = model.training_step(inputs, {"t1": torch.randint(0, 5, (4,)), "t2": torch.randint(0, 5, (3,))})
    assert step.counts == {"t1": 4, "t2": 3}


def test_a_module_holding_a_resnet_splits_into_its_stages_then_its_own_layers():
    torch.manual_seed(0)
    encoder = OfficeEncoder().eval()
    reference = copy.deepcopy(encoder)
    stages = _as_stages(encoder, "MTAN")
    assert len(stages) == 5  # stem, layer1…layer3, then layer4 followed by the pooling and hidden layer
    x = image_batch(n=3)
    torch.testing.assert_close(nn.Sequential(*stages)(x), reference(x))
    assert sum(p.numel() for p in stages.parameters()) == sum(p.numel() for p in reference.parameters())


class _TorchvisionStyleResNet(SmallResNet):
    """A ResNet whose forward ends with avgpool, flatten and fc, as torchvision's does."""

    def __init__(self) -> None:
        super().__init__()
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.avgpool(super().forward(x)), 1))


class _Wrapper(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.backbone = _TorchvisionStyleResNet()
        self.head = nn.Linear(10, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.head(self.backbone(x)))


def test_a_held_torchvision_resnet_keeps_its_pooling_and_fc_before_the_wrappers_layers():
    torch.manual_seed(0)
    encoder = _Wrapper().eval()
    reference = copy.deepcopy(encoder)
    x = image_batch(n=2)
    torch.testing.assert_close(nn.Sequential(*_as_stages(encoder))(x), reference(x))


def test_a_module_holding_two_resnets_is_ambiguous_and_the_error_says_how_to_give_the_stages():
    class TwoBackbones(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.rgb, self.depth = SmallResNet(), SmallResNet()

    with pytest.raises(SpecError, match=r"holds 2 ResNets \(rgb, depth\).*nn.Sequential"):
        A.MTAN(TASKS, TwoBackbones, {t: nn.Linear(16, 1) for t in TASKS})


NON_IMAGE_EXAMPLES = {
    "qm9": (GraphEncoder, 8, graph_batch, 3),
    "xtreme": (TextEncoder, 16, text_batch, 4),
}


@pytest.mark.parametrize("example", NON_IMAGE_EXAMPLES)
def test_graph_and_text_encoders_train_in_hps(example):
    encoder_class, width, make_batch, n = NON_IMAGE_EXAMPLES[example]
    model = A.HPS(TASKS, encoder_class, {t: nn.Linear(width, 1) for t in TASKS}, losses={t: F.mse_loss for t in TASKS})
    step = model.training_step({"input_data": make_batch()}, {t: torch.randn(n, 1) for t in TASKS})
    get("upgrad").backward(step.losses, shared_params=model.shared_parameters())
    assert all(p.grad is not None for p in model.shared_parameters())


@pytest.mark.parametrize("arch", ["CrossStitch", "MTAN", "PLE", "LTB"])
@pytest.mark.parametrize("example", NON_IMAGE_EXAMPLES)
def test_encoders_without_stages_are_refused_by_staged_architectures_with_the_fix(example, arch):
    encoder_class, width, _, _ = NON_IMAGE_EXAMPLES[example]
    cls, kwargs = ARCHS[arch]
    with pytest.raises(
        SpecError, match=rf"{encoder_class.__name__} is not a sequence of stages.*lambda: nn.Sequential"
    ):
        cls(TASKS, encoder_class, {t: nn.Linear(width, 1) for t in TASKS}, **kwargs)


@pytest.mark.parametrize("arch", ["MMoE", "CGC", "DSelectK"])
@pytest.mark.parametrize("example", NON_IMAGE_EXAMPLES)
def test_gates_that_read_the_input_say_they_need_one_tensor(example, arch):
    encoder_class, width, make_batch, _ = NON_IMAGE_EXAMPLES[example]
    cls, kwargs = ARCHS[arch]
    model = cls(TASKS, encoder_class, {t: nn.Linear(width, 1) for t in TASKS}, **kwargs)
    with pytest.raises(TypeError, match=rf"{arch}'s gates read the input as one tensor.*dict.*input_key"):
        model(make_batch())


def test_a_one_element_list_makes_a_whole_text_encoder_one_mtan_stage():
    model = A.MTAN(TASKS, lambda: [TextEncoder()], {t: nn.Linear(16, 2) for t in TASKS})
    out = model(text_batch())
    assert {t: tuple(y.shape) for t, y in out.items()} == {"t1": (4, 2), "t2": (4, 2)}


def test_an_encoder_failing_on_the_input_is_named_with_the_input_shape():
    model = A.MTAN(TASKS, OfficeEncoder, {t: nn.Linear(12, 5) for t in TASKS})
    with pytest.raises(NodeError, match=r"MTAN: module 'encoder.0.0' failed on the input Tensor\(2, 1, 16, 16\)"):
        model(torch.randn(2, 1, 16, 16))  # one channel where the ResNet's first conv wants three
    model = A.HPS(TASKS, OfficeEncoder, {t: nn.Linear(7, 5) for t in TASKS})
    with pytest.raises(NodeError, match=r"module 'decoders.t1' failed on the input Tensor\(2, 12\)"):
        model(image_batch(n=2))
