"""Behaviour every architecture shares: outputs, gradient routing, rep_grad, the Trainer protocol.

Each test runs every architecture with an MLP encoder, and the structural ones also
with a small CNN and a small ResNet-style encoder (torchvision is not needed).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional as F

import mtlkit.architectures as A
from mtlkit.errors import SpecError
from mtlkit.protocol import MultiTaskModel
from mtlkit.weighting import GradientBalancer, get

TASKS = ["reg", "cls", "aux"]
OUT = {"reg": 1, "cls": 3, "aux": 2}
LOSSES = {"reg": F.mse_loss, "cls": F.cross_entropy, "aux": F.mse_loss}

ARCHS = {
    "HPS": (A.HPS, {}),
    "CrossStitch": (A.CrossStitch, {}),
    "MMoE": (A.MMoE, {"num_experts": 3}),
    "MTAN": (A.MTAN, {}),
    "CGC": (A.CGC, {"num_experts": [2, 1, 1, 0]}),
    "PLE": (A.PLE, {"num_experts": [2, 1, 0, 1]}),
    "DSelectK": (A.DSelectK, {"num_experts": 3, "num_nonzeros": 2}),
    "LTB": (A.LTB, {"epochs": 4}),
}


def mlp() -> nn.Sequential:
    return nn.Sequential(
        nn.Sequential(nn.Linear(6, 8), nn.Tanh()),
        nn.Sequential(nn.Linear(8, 8), nn.Tanh()),
        nn.Sequential(nn.Linear(8, 8), nn.Tanh()),
    )


def cnn() -> nn.Sequential:
    return nn.Sequential(
        nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU()),
        nn.Sequential(nn.Conv2d(4, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8), nn.ReLU()),
    )


class _Block(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(c_out)
        self.skip = nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)) + self.skip(x))


class TinyResNet(nn.Module):
    """torchvision's ResNet layout (conv1, bn1, relu, maxpool, layer1…layer4), tiny."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(4)
        self.relu = nn.ReLU()
        self.maxpool = nn.MaxPool2d(2)
        self.layer1 = _Block(4, 4, 1)
        self.layer2 = _Block(4, 8, 2)
        self.layer3 = _Block(8, 8, 1)
        self.layer4 = _Block(8, 8, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


ENCODERS = {"mlp": (mlp, (6,)), "cnn": (cnn, (3, 8, 8)), "resnet": (TinyResNet, (3, 8, 8))}


def decoders(encoder: str) -> dict[str, nn.Module]:
    if encoder == "mlp":
        return {t: nn.Linear(8, OUT[t]) for t in TASKS}
    return {t: nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, OUT[t])) for t in TASKS}


def build(arch: str, encoder: str = "mlp", **kwargs) -> A.Architecture:
    cls, arch_kwargs = ARCHS[arch]
    factory, shape = ENCODERS[encoder]
    model = cls(TASKS, factory, decoders(encoder), losses=LOSSES, **arch_kwargs, **kwargs)
    if arch == "LTB":
        model.set_epoch(1)  # past the warm-up: branching by Gumbel-softmax
    model(torch.zeros(2, *shape))  # size the lazy parts
    return model


def batch(encoder: str = "mlp", n: int = 6, seed: int = 0) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, *ENCODERS[encoder][1], generator=g)
    Y = {
        "reg": torch.randn(n, 1, generator=g),
        "cls": torch.randint(0, 3, (n,), generator=g),
        "aux": torch.randn(n, 2, generator=g),
    }
    return x, Y


def grad_or_zero(p: torch.Tensor) -> torch.Tensor:
    return p.grad if p.grad is not None else torch.zeros_like(p)


ALL = [(a, e) for a in ARCHS for e in ENCODERS]


@pytest.mark.parametrize("arch, encoder", ALL)
def test_forward_returns_one_prediction_per_task_and_only_the_asked_task(arch, encoder):
    torch.manual_seed(0)
    model = build(arch, encoder)
    x, _ = batch(encoder)
    out = model(x)
    assert list(out) == TASKS
    assert {t: tuple(v.shape) for t, v in out.items()} == {t: (6, OUT[t]) for t in TASKS}
    assert list(model(x, "cls")) == ["cls"]


@pytest.mark.parametrize("arch, encoder", ALL)
def test_shared_parameters_get_gradient_and_each_head_only_its_own_tasks(arch, encoder):
    torch.manual_seed(0)
    model = build(arch, encoder)
    x, Y = batch(encoder)
    for task in TASKS:
        model.zero_grad(set_to_none=True)
        model.training_step(x, {task: Y[task]}).losses[task].backward()
        for other in TASKS:
            grads = [p.grad for p in model.decoders[other].parameters()]
            if other == task:
                assert all(g is not None and g.abs().sum() > 0 for g in grads)
            else:
                assert all(g is None for g in grads)
    model.zero_grad(set_to_none=True)
    if arch == "LTB":
        model.set_epoch(0)  # hard branching may leave a column unread; the warm-up reads them all
    sum(model.training_step(x, Y).losses.values()).backward()
    names = {id(p): n for n, p in model.named_parameters()}
    silent = [names[id(p)] for p in model.shared_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    if arch == "LTB":  # no gradient reaches the branching logits during the warm-up (see test_ltb)
        silent = [n for n in silent if not n.startswith("branch_logits")]
    assert not silent


class FixedWeights(GradientBalancer):
    """A gradient balancer with known weights: the reference is Σ_t w_t ∇L_t."""

    w = torch.tensor([0.2, 0.5, 1.3])

    def weights(self, G):
        return self.w.to(G)


@pytest.mark.parametrize("arch, encoder", ALL)
def test_rep_grad_pushes_the_balancers_combination_through_the_shared_part(arch, encoder):
    # Below the cut every parameter must receive Σ_t w_t ∇L_t, above it Σ_t ∇L_t
    # (each task-specific parameter only sees its own task): computed here by autograd.
    torch.manual_seed(0)
    model = build(arch, encoder, rep_grad=True)
    x, Y = batch(encoder)
    step = model.training_step(x, Y)
    assert step.shared_reps and all(r.requires_grad for r in step.shared_reps)
    L = torch.stack([step.losses[t] for t in TASKS])
    params = list(model.parameters())
    weighted = torch.autograd.grad((FixedWeights.w * L).sum(), params, retain_graph=True, allow_unused=True)
    plain = torch.autograd.grad(L.sum(), params, retain_graph=True, allow_unused=True)
    FixedWeights(TASKS).backward(step.losses, shared_reps=step.shared_reps)
    shared = {id(p) for p in model.shared_parameters()}
    assert shared
    for (name, p), w_ref, p_ref in zip(model.named_parameters(), weighted, plain):
        ref = w_ref if id(p) in shared else p_ref
        ref = ref if ref is not None else torch.zeros_like(p)
        torch.testing.assert_close(grad_or_zero(p), ref, atol=1e-5, rtol=1e-4, msg=name)


MULTI_INPUT_REFUSED = {"CrossStitch", "LTB", "PLE"}  # as in LibMTL: their tasks read each other's features


@pytest.mark.parametrize("arch", sorted(set(ARCHS) - MULTI_INPUT_REFUSED))
def test_multi_input_runs_only_the_task_of_each_batch(arch):
    torch.manual_seed(0)
    model = build(arch, multi_input=True).eval()
    calls = {t: 0 for t in TASKS}
    for t in TASKS:
        model.decoders[t].register_forward_hook(lambda *_, t=t: calls.__setitem__(t, calls[t] + 1))
    x_reg, Y = batch(seed=1)
    x_cls, _ = batch(seed=2)
    out_reg, out_cls = model(x_reg, "reg"), model(x_cls, "cls")
    assert list(out_reg) == ["reg"] and list(out_cls) == ["cls"]
    torch.testing.assert_close(out_reg["reg"], model(x_reg)["reg"])
    torch.testing.assert_close(out_cls["cls"], model(x_cls)["cls"])
    calls.update({t: 0 for t in TASKS})
    step = model.train().training_step(x_cls, {"cls": Y["cls"]})
    assert list(step.losses) == ["cls"] and calls == {"reg": 0, "cls": 1, "aux": 0}


@pytest.mark.parametrize("arch", sorted(set(ARCHS) - MULTI_INPUT_REFUSED))
def test_multi_input_gives_each_task_its_own_input_in_one_step(arch):
    model = build(arch, multi_input=True, input_key=None).eval()
    inputs = {t: batch(seed=i)[0][: 3 + i] for i, t in enumerate(TASKS)}  # a different batch per task
    _, Y = batch(n=6)
    Y = {t: Y[t][: 3 + i] for i, t in enumerate(TASKS)}
    step = model.training_step(inputs, Y)
    assert set(step.losses) == set(TASKS) and step.counts == {t: 3 + i for i, t in enumerate(TASKS)}
    for t in TASKS:  # each task's loss is that of its own input alone
        alone = model.training_step(inputs[t], {t: Y[t]}).losses[t]
        torch.testing.assert_close(step.losses[t], alone)
    with pytest.raises(KeyError, match="no entry for task"):
        model.task_outputs({"reg": inputs["reg"]}, ["reg", "cls"])


@pytest.mark.parametrize("arch", sorted(MULTI_INPUT_REFUSED))
def test_multi_input_is_refused_where_libmtl_refuses_it(arch):
    with pytest.raises(ValueError, match="multi_input"):
        build(arch, multi_input=True)


def _train(model: A.Architecture, balancer, rep: bool, steps: int = 8) -> tuple[float, float]:
    x, Y = batch(n=16)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.02)
    losses = []
    for _ in range(steps):
        optimizer.zero_grad(set_to_none=True)
        step = model.training_step(x, Y)
        losses.append(sum(loss.item() for loss in step.losses.values()))
        if rep:
            balancer.backward(step.losses, shared_reps=step.shared_reps)
        else:
            balancer.backward(step.losses, shared_params=model.shared_parameters())
        optimizer.step()
    return losses[0], losses[-1]


@pytest.mark.parametrize("arch", ARCHS)
def test_trains_with_equal_weights_and_with_a_gradient_balancer_at_the_representation(arch):
    torch.manual_seed(0)
    first, last = _train(build(arch), get("ew"), rep=False)
    assert last < first
    torch.manual_seed(0)
    first, last = _train(build(arch, rep_grad=True), get("imtl_g", tasks=TASKS), rep=True)
    assert last < first


def test_architectures_implement_the_trainer_protocol():
    for arch in ARCHS:
        assert isinstance(build(arch), MultiTaskModel)


def test_unlabelled_rows_are_left_out_of_a_classification_loss():
    torch.manual_seed(0)
    model = build("HPS")
    x, Y = batch()
    Y["cls"][[0, 3]] = -1
    step = model.training_step(x, {"cls": Y["cls"]})
    keep = Y["cls"] != -1
    expected = F.cross_entropy(model(x)["cls"][keep], Y["cls"][keep])
    torch.testing.assert_close(step.losses["cls"], expected)
    assert step.counts == {"cls": 4}


def test_a_task_without_any_label_in_the_batch_is_not_run():
    model = build("MMoE")
    x, Y = batch()
    step = model.training_step(x, {"cls": torch.full((6,), -1), "reg": Y["reg"]})
    assert list(step.losses) == ["reg"] and step.counts == {"reg": 6}


def test_training_step_names_the_task_that_has_labels_but_no_loss():
    model = A.HPS(TASKS, mlp, decoders("mlp"), losses={"reg": F.mse_loss})
    x, Y = batch()
    with pytest.raises(KeyError, match="'cls'.*losses="):
        model.training_step(x, {"reg": Y["reg"], "cls": Y["cls"]})
    with pytest.raises(KeyError, match="unknown task"):
        model.training_step(x, {"nope": Y["reg"]})


def test_shared_reps_are_returned_only_with_rep_grad_and_not_kept_on_the_module():
    x, Y = batch()
    assert build("HPS").training_step(x, Y).shared_reps is None
    model = build("HPS", rep_grad=True)
    reps = model.training_step(x, Y).shared_reps
    assert len(reps) == 1 and reps[0].shape == (6, 8)
    assert not any(isinstance(v, torch.Tensor) and v is reps[0] for v in vars(model).values())


def test_task_outputs_read_the_input_field_of_a_dict_batch_without_gradient():
    model = build("CGC", metrics={"cls": "a scorer"})
    x, _ = batch()
    out = model.task_outputs({"input_data": x}, ["cls"])
    assert list(out) == ["cls"] and not out["cls"].requires_grad
    torch.testing.assert_close(out["cls"], model(x)["cls"])
    assert model.scorers() == {"cls": "a scorer"}
    torch.testing.assert_close(model.task_outputs({"pixels": x}, ["cls"])["cls"], out["cls"])  # the only field
    with pytest.raises(KeyError, match="input_key"):
        model.task_outputs({"pixels": x, "mask": x}, ["cls"])


def test_libmtl_names_and_positional_signature():
    assert A.Cross_stitch is A.CrossStitch and A.DSelect_k is A.DSelectK and A.AbsArchitecture is A.Architecture
    model = A.MMoE(TASKS, mlp, nn.ModuleDict(decoders("mlp")), False, False, None, img_size=[6], num_experts=[2])
    assert model.get_share_params() == model.shared_parameters()
    model(batch()[0])["reg"].sum().backward()
    model.zero_grad_share_params()
    assert all(p.grad is None for p in model.shared_parameters())
    assert model.decoders["reg"].weight.grad is not None


@pytest.mark.parametrize("arch", ["MMoE", "DSelectK", "MTAN", "PLE"])
def test_img_size_sizes_the_input_dependent_parts_at_construction(arch):
    cls, kwargs = ARCHS[arch]
    model = cls(TASKS, mlp, decoders("mlp"), img_size=(6,), **kwargs)
    assert not any(isinstance(p, nn.parameter.UninitializedParameter) for p in model.parameters())


@pytest.mark.parametrize("arch", ARCHS)
def test_module_follows_its_dtype(arch):
    model = build(arch).double()
    x, _ = batch()
    assert all(v.dtype == torch.float64 for v in model(x.double()).values())


def test_constructor_errors_name_what_to_change():
    with pytest.raises(TypeError, match="callable that builds a fresh encoder"):
        A.HPS(TASKS, mlp(), decoders("mlp"))
    with pytest.raises(SpecError, match="no entry for task"):
        A.HPS(TASKS, mlp, {"reg": nn.Linear(8, 1)})
    with pytest.raises(SpecError, match="stage by stage"):
        A.MTAN(TASKS, TinyResNetWithoutLayers, decoders("mlp"))
    with pytest.raises(SpecError, match="at least 2 stages"):
        A.CrossStitch(TASKS, lambda: nn.Sequential(nn.Linear(6, 8)), decoders("mlp"))
    with pytest.raises(SpecError, match=r"1 \+ 3"):
        A.CGC(TASKS, mlp, decoders("mlp"), num_experts=[2, 1])
    with pytest.raises(KeyError, match="unknown task"):
        build("HPS")(batch()[0], "nope")


class TinyResNetWithoutLayers(nn.Module):
    def forward(self, x):
        return x


def test_input_key_mapping_reads_each_tasks_field_and_needs_multi_input():
    def build(**options):
        return A.HPS(
            ["a", "b"],
            encoder_class=lambda: nn.Linear(3, 4),
            decoders={"a": nn.Linear(4, 1), "b": nn.Linear(4, 1)},
            input_key={"a": "xa", "b": "xb"},
            **options,
        )

    with pytest.raises(ValueError, match="multi_input=True"):
        build()
    model = build(multi_input=True)
    xa, xb = torch.randn(5, 3), torch.randn(7, 3)
    outputs = model.task_outputs({"xa": xa, "xb": xb}, ["a", "b"])
    assert outputs["a"].shape == (5, 1) and outputs["b"].shape == (7, 1)
    torch.testing.assert_close(outputs["a"], model.decoders["a"](model.encoder(xa)))
    only_a = model.task_outputs({"xa": xa}, ["a"])  # a batch of one task's dataset holds only its field
    torch.testing.assert_close(only_a["a"], outputs["a"])
    with pytest.raises(KeyError, match=r"none of the per-task input fields \['xa', 'xb'\]"):
        model.task_outputs({"other": xa}, ["a"])
