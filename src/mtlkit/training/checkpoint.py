"""Atomic checkpoint files that can never run code, and the random-number states they hold.

A checkpoint is a dict of tensors and plain Python values (numbers, strings, lists,
tuples, dicts), so `torch.load(weights_only=True)` reads it. It is written to a temporary
file in the target's directory, flushed to disk, then renamed over the target: a crash
leaves either the old file or the new one, never half of one.
"""

from __future__ import annotations

import os
import pickle
import random
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import torch

FORMAT_VERSION = 1


def save_checkpoint(state: dict[str, Any], path: str | os.PathLike) -> None:
    """Write `state` to `path` atomically (temporary file in the same directory, fsync, rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as f:
            torch.save({"format": FORMAT_VERSION, **state}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    if os.name == "posix":  # make the rename itself durable
        directory = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)


class CheckpointError(ValueError):
    """A checkpoint file that is empty, truncated, corrupt or not written by mtlkit; the message names the file."""


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read a checkpoint written by `save_checkpoint`, onto the CPU, without unpickling code.

    The zip records' checksums are verified first (torch does not check them, so a flipped
    bit in a tensor would load silently); any damage raises `CheckpointError`.
    """
    path = Path(path)
    name = repr(os.fspath(path))
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {name}")
    damaged = f"the checkpoint {name} is corrupt or truncated"
    if path.stat().st_size == 0:
        raise CheckpointError(f"{damaged}: the file is empty")
    try:
        with zipfile.ZipFile(path) as archive:
            bad_record = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as err:
        raise CheckpointError(f"{damaged}, or it is not an mtlkit checkpoint: not a complete torch zip archive ({err})") from None
    if bad_record is not None:
        raise CheckpointError(f"{damaged}: its record {bad_record!r} fails its checksum")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:  # torch's message advises weights_only=False, i.e. running the file's code: never
        raise CheckpointError(
            f"{name} is not an mtlkit checkpoint (it holds objects other than tensors and plain values), or it is "
            "corrupt; mtlkit loads only tensors and plain values and never runs code from a file"
        ) from None
    except (RuntimeError, OSError, EOFError, KeyError, ValueError) as err:
        raise CheckpointError(f"{damaged}: {str(err).split('. ')[0]}") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT_VERSION:
        raise CheckpointError(f"{name} is not an mtlkit Trainer checkpoint (format {FORMAT_VERSION})")
    return state


def rng_state() -> dict[str, Any]:
    """The global generators' states as tensors and plain values: torch (CPU, CUDA), python, numpy if imported."""
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    numpy = sys.modules.get("numpy")
    if numpy is not None:
        kind, keys, pos, has_gauss, cached = numpy.random.get_state()
        state["numpy"] = (kind, torch.from_numpy(keys.astype("int64")), pos, has_gauss, cached)
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore the states captured by `rng_state`."""
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state:
        torch.cuda.set_rng_state_all(state["cuda"])
    if "numpy" in state:
        import numpy

        kind, keys, pos, has_gauss, cached = state["numpy"]
        numpy.random.set_state((kind, keys.numpy().astype("uint32"), pos, has_gauss, cached))


def seed_everything(seed: int) -> None:
    """Seed python's, numpy's (if imported) and torch's global generators (all CUDA devices included)."""
    random.seed(seed)
    torch.manual_seed(seed)
    numpy = sys.modules.get("numpy")
    if numpy is not None:
        numpy.random.seed(seed % 2**32)

