"""One single-task model per front door around a given head, for tests that run the same case through all three.

Each takes `(head, loss, scorer)`: the head reads the batch's "x" field and its output
goes to `loss`; `scorer` scores the task (its metrics only, for `MTLModel`).
"""

from torch import nn

from mtlkit import MTLModel, MultitaskClassifier, Operation, Task
from mtlkit.architectures import HPS


def flows(head, loss, scorer):
    output = None if not scorer.is_regression else (lambda out: out.squeeze(-1))
    task = Task(
        "a", {"head": head}, [Operation("head", [("_input_", "x")])], scorer=scorer, loss_func=loss, output_func=output
    )
    return MultitaskClassifier([task])


def graph(head, loss, scorer):
    nodes = [
        {"name": "x", "layers": lambda X: X["x"]},
        {"name": "a", "layers": head, "anchor_layer": "x", "loss": loss, "metrics": scorer.metrics},
    ]
    return MTLModel(nodes, output_tasks=["a"])


def architecture(head, loss, scorer):
    return HPS(
        ["a"], encoder_class=nn.Identity, decoders={"a": head}, losses={"a": loss}, metrics={"a": scorer}, input_key="x"
    )


FRONT_DOORS = [flows, graph, architecture]


# A YAML graph on the built-in penguins data (sex: 9 labels are -1); SPECIES is the species head's width.
PENGUINS_GRAPH = """
name: penguins-graph
data: {name: penguins}
model:
  graph:
    - {name: features, layers: {SimpleSelect: [x]}}
    - {name: trunk, anchor_layer: features, layers: [{Linear: [7, 16]}, ReLU]}
    - {name: species, anchor_layer: trunk, layers: {Linear: [16, SPECIES]}}
    - {name: sex, anchor_layer: trunk, layers: {Linear: [16, 2]}}
    - {name: body_mass, anchor_layer: trunk, layers: {Linear: [16, 1]}}
trainer: {n_epochs: 1}
"""
