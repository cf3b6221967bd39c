"""Experiments from plain configuration: YAML configs, the run folder, the benchmark suite and the demo."""

from mtlkit.experiments.config import DataConfig, ExperimentConfig, ModelConfig, load_config
from mtlkit.experiments.runner import RunResult, evaluate, run
from mtlkit.experiments.suite import SuiteResult, Variant, run_suite

__all__ = [
    "DataConfig",
    "ExperimentConfig",
    "ModelConfig",
    "RunResult",
    "SuiteResult",
    "Variant",
    "evaluate",
    "load_config",
    "run",
    "run_suite",
]
