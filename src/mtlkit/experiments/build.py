"""From a validated `ExperimentConfig` to dataloaders and a model the Trainer can train."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import networkx as nx
from torch import Tensor

from mtlkit import architectures
from mtlkit.architectures import Architecture
from mtlkit.data import DictDataLoader, DictDataset
from mtlkit.data.datasets import DatasetInfo, LoadedDataset, TaskInfo, load_factory
from mtlkit.data.datasets import load as load_dataset
from mtlkit.data.tables import load_table
from mtlkit.errors import ConfigError, SpecError
from mtlkit.experiments.config import DataConfig, ExperimentConfig, ModelConfig, option_error
from mtlkit.experiments.modules import build_layer, encoder_factory, head, loss_function, output_shape
from mtlkit.graph import INPUT, MTLModel
from mtlkit.metrics import Scorer

ARCHITECTURE_CLASSES: dict[str, type[architectures.Architecture]] = {
    "hps": architectures.HPS,
    "cross_stitch": architectures.CrossStitch,
    "mmoe": architectures.MMoE,
    "mtan": architectures.MTAN,
    "cgc": architectures.CGC,
    "ple": architectures.PLE,
    "dselect_k": architectures.DSelectK,
    "ltb": architectures.LTB,
}


def load_data(config: ExperimentConfig) -> LoadedDataset:
    """The configured dataset (registered name, table file or factory), split with the experiment's seed
    unless the options set one."""
    data = config.data
    if data.path is not None:
        if data.targets is None:
            raise ConfigError("data.targets: a table file needs its target columns named (see docs/config.md)")
        return load_table(
            data.path,
            targets=data.targets,
            features=data.features,
            split=data.split,
            missing=data.missing,
            standardize_values=data.standardize,
            name=data.name,
            seed=config.seed,
        )
    options = {"seed": config.seed, **data.options}
    if data.factory is not None:
        return load_factory(data.factory, **options)
    if data.name is None:
        raise ConfigError("data: give a dataset name, a table file (path) or a factory")
    return load_dataset(data.name, **options)


def select_tasks(info: DatasetInfo, data: DataConfig) -> list[str]:
    """The dataset's tasks, or the configured subset (checked against the dataset)."""
    if data.tasks is None:
        return list(info.tasks)
    unknown = [t for t in data.tasks if t not in info.tasks]
    if unknown:
        raise ConfigError(
            f"data.tasks: dataset {info.name!r} has no task {unknown[0]!r}; its tasks: {list(info.tasks)}"
        )
    return list(data.tasks)


def build_loaders(loaded: LoadedDataset, tasks: Sequence[str], batch_size: int, seed: int) -> list[DictDataLoader]:
    """One loader per dataset and split, labels restricted to `tasks`; only training loaders shuffle."""
    loaders = []
    for dataset in loaded.datasets:
        labels = {t: y for t, y in dataset.Y_dict.items() if t in tasks}
        if not labels:
            continue
        subset = DictDataset(dataset.name, dataset.split, dataset.X_dict, labels)
        shuffle = dataset.split == "train"
        loaders.append(DictDataLoader(subset, batch_size=batch_size, shuffle=shuffle, seed=seed if shuffle else None))
    return loaders


def build_model(config: ExperimentConfig, info: DatasetInfo, tasks: Sequence[str]) -> Architecture | MTLModel:
    """The configured architecture (with built encoder and heads) or node-list graph."""
    if config.model.graph is not None:
        return _graph_model(config.model.graph, info, tasks)
    return _architecture(config.model, info, tasks, n_epochs=int(config.trainer.get("n_epochs", 1)))


def scorer(task: TaskInfo) -> Scorer:
    """The task's metric; regression targets mark missing values with NaN."""
    if task.kind == "regression":
        return Scorer(metrics=[task.metric], abstain_label=float("nan"))
    return Scorer(metrics=[task.metric])


def model_graph(model: Architecture | MTLModel) -> nx.DiGraph:
    """The model's task graph, or for an architecture a schematic input → shared part → heads."""
    g = getattr(model, "g", None)
    if isinstance(g, nx.DiGraph):
        return g
    schematic = nx.DiGraph()
    shared = f"{type(model).__name__} (shared)"
    schematic.add_edge(INPUT, shared)
    for task in model.task_names:
        schematic.add_edge(shared, task)
    return schematic


def _architecture(spec: ModelConfig, info: DatasetInfo, tasks: Sequence[str], n_epochs: int) -> Architecture:
    architecture = spec.architecture
    if architecture is None:
        raise ConfigError("model: give an 'architecture' or a 'graph'")
    fields = {t: info.tasks[t].input_key for t in tasks}
    shapes = {info.input_shapes[field] for field in fields.values()}
    if len(shapes) != 1:
        raise ConfigError(
            f"model.architecture: tasks {list(tasks)} of dataset {info.name!r} read inputs of different shapes "
            f"{ {f: info.input_shapes[f] for f in sorted(set(fields.values()))} }; an architecture's shared encoder "
            "takes one input shape: use a graph model"
        )
    input_shape = shapes.pop()
    per_task = len(set(fields.values())) > 1  # LibMTL's multi_input: each task reads its own field
    input_key: str | dict[str, str] = dict(fields) if per_task else fields[tasks[0]]
    make_encoder = encoder_factory(spec.encoder, input_shape)
    rep_shape = output_shape(make_encoder, input_shape)
    defaults = {**_default_options(architecture, len(tasks), n_epochs), **({"multi_input": True} if per_task else {})}
    options = {**defaults, **spec.options}
    cls = ARCHITECTURE_CLASSES[architecture]
    try:
        return cls(
            list(tasks),
            make_encoder,
            {t: head(rep_shape, info.tasks[t].num_classes or 1) for t in tasks},
            rep_grad=spec.rep_grad,
            losses={t: loss_function(info.tasks[t].loss, f"task {t!r}") for t in tasks},
            metrics={t: scorer(info.tasks[t]) for t in tasks},
            output_funcs={t: _softmax for t in tasks if info.tasks[t].kind == "classification"},
            img_size=input_shape,
            input_key=input_key,
            **options,
        )
    except (ConfigError, SpecError) as err:
        raise ConfigError(f"model.options: {err}") from err
    except (TypeError, ValueError) as err:
        raise ConfigError(option_error("model.options", architecture, cls, spec.options, err)) from err


def _softmax(logits: Tensor) -> Tensor:
    """Class probabilities from a head's logits (what scoring sees)."""
    return logits.softmax(dim=1)


def _default_options(architecture: str, num_tasks: int, n_epochs: int) -> dict[str, Any]:
    """Small defaults for the architectures that need sizes (experts, schedules)."""
    experts_per_task = [2] + [1] * num_tasks  # [shared, each task's own]
    defaults: dict[str, dict[str, Any]] = {
        "mmoe": {"num_experts": 4},
        "cgc": {"num_experts": experts_per_task},
        "ple": {"num_experts": experts_per_task},
        "dselect_k": {"num_experts": 4, "num_nonzeros": 2},
        "ltb": {"epochs": n_epochs},
    }
    return defaults.get(architecture, {})


def _graph_model(nodes: Sequence[Mapping[str, Any]], info: DatasetInfo, tasks: Sequence[str]) -> MTLModel:
    """A torchMTL node list from YAML: `layers` are layer specs, `loss` a loss name (the task's by default)."""
    built = []
    for i, raw in enumerate(nodes):
        if not isinstance(raw, Mapping) or "name" not in raw:
            raise ConfigError(f"model.graph[{i}] must be a mapping with a 'name'")
        node = dict(raw)
        where = f"model.graph node {node['name']!r}"
        if "layers" in node:
            node["layers"] = build_layer(node["layers"], where)
        if node["name"] in tasks:
            task = info.tasks[node["name"]]
            node["loss"] = loss_function(node.get("loss", task.loss), where)
            node.setdefault("metrics", [task.metric])
            if task.kind == "classification":
                node["output"] = _softmax
        elif "loss" in node:
            node["loss"] = loss_function(node["loss"], where)
        built.append(node)
    missing = [t for t in tasks if t not in {n["name"] for n in built}]
    if missing:
        raise ConfigError(f"model.graph has no node for task {missing[0]!r}; name a head after each task {list(tasks)}")
    return MTLModel(built, output_tasks=list(tasks))
