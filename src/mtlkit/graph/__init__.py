"""The task graph: spec parsing + validation, `TaskGraph`, executor, `MTLModel`."""

from mtlkit.graph.executor import INPUT, NodeError
from mtlkit.graph.model import MTLModel
from mtlkit.graph.task_graph import Node, TaskGraph

__all__ = ["INPUT", "MTLModel", "Node", "NodeError", "TaskGraph"]
