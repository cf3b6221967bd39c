"""Exceptions raised for user input that mtlkit cannot accept."""


class SpecError(ValueError):
    """A model, task or configuration specification is invalid.

    The message names the offending node/task/key and says what to change.
    """


class ConfigError(ValueError):
    """A training or command-line configuration value is invalid."""
