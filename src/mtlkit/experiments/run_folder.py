"""A run folder keeps its data: one writer at a time, no silent overwrite, resume only the same run.

`claim_run_folder` takes an exclusive lock on `run_dir/.lock` (released when the process
ends, even by a crash) and then checks the folder: a folder that already holds a run is
refused unless the caller resumes it (same data and model) or overwrites it (its run
files are removed; other files are left alone).
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import yaml

from mtlkit.errors import ConfigError

RUN_FILES = ("config.yaml", "logs", "checkpoints", "graph.png", "curves.png", "results.md")
LOCK = ".lock"


@contextlib.contextmanager
def claim_run_folder(
    run_dir: Path, config: Mapping[str, Any], resume: bool = False, overwrite: bool = False
) -> Iterator[Path | None]:
    """Hold the folder's lock for the block; yields the checkpoint to resume from (with `resume`) or None.

    `config` is the run's config as plain data (`ExperimentConfig.to_dict()`).
    """
    if resume and overwrite:
        raise ConfigError("--resume and --overwrite exclude each other: continue the run, or replace it")
    run_dir.mkdir(parents=True, exist_ok=True)
    with _exclusive_lock(run_dir):
        existing = [name for name in RUN_FILES if (run_dir / name).exists()]
        checkpoint = None
        if resume:
            checkpoint = _resumable(run_dir, config)
        elif existing and overwrite:
            for name in existing:
                path = run_dir / name
                shutil.rmtree(path) if path.is_dir() else path.unlink()
        elif existing:
            raise ConfigError(
                f"run folder {str(run_dir)!r} already holds a run ({', '.join(existing)}); pass --resume to continue "
                "it, --overwrite to replace it, or choose another --run-dir"
            )
        yield checkpoint


def release_unstarted(run_dir: Path) -> None:
    """Free a folder whose run failed before it trained: no checkpoint, no log line yet.

    Such a folder holds only the `config.yaml` the run wrote (and empty `logs`/`checkpoints`
    folders); removing them lets the corrected run use the folder without `--overwrite`.
    A folder with any checkpoint or log content is left as it is.
    """
    logs, checkpoints = run_dir / "logs", run_dir / "checkpoints"
    for folder in (logs, checkpoints):
        if folder.is_dir() and any(path.is_file() and path.stat().st_size for path in folder.rglob("*")):
            return
    for name in RUN_FILES:
        path = run_dir / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def check_free(run_dir: Path) -> None:
    """Raise if `run_dir` already holds a run (for callers that create many folders up front)."""
    existing = [name for name in RUN_FILES if (run_dir / name).exists()]
    if existing:
        raise ConfigError(
            f"run folder {str(run_dir)!r} already holds a run ({', '.join(existing)}); choose another --out"
        )


def _resumable(run_dir: Path, config: Mapping[str, Any]) -> Path:
    checkpoint = run_dir / "checkpoints" / "last.pt"
    if not checkpoint.is_file():
        raise ConfigError(f"--resume: {run_dir} has no checkpoints/last.pt to continue; train without --resume")
    saved_path = run_dir / "config.yaml"
    saved = yaml.safe_load(saved_path.read_text()) if saved_path.is_file() else None
    if isinstance(saved, Mapping):
        for section in ("data", "model"):
            before, now = _plain(saved.get(section)), _plain(config.get(section))
            if before != now:
                key = _first_difference(before, now, section)
                raise ConfigError(
                    f"--resume: {key} differs from the run's config.yaml ({_at(before, key)!r} there, "
                    f"{_at(now, key)!r} now); a run resumes with the same data and model"
                )
    return checkpoint


@contextlib.contextmanager
def _exclusive_lock(run_dir: Path) -> Iterator[None]:
    """An advisory lock on `run_dir/.lock`; another process holding it is a `ConfigError` at once (no waiting)."""
    import fcntl  # POSIX; the lock dies with its process, so a crash never leaves a stale one

    with open(run_dir / LOCK, "a+") as handle:  # closing it releases the lock
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            owner = handle.read().strip() or "another process"
            raise ConfigError(
                f"run folder {str(run_dir)!r} is in use by {owner}; wait for it to finish or choose another --run-dir"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"mtlkit process {os.getpid()}\n")
        handle.flush()
        yield


def _plain(value: Any) -> Any:
    return yaml.safe_load(yaml.safe_dump(value))  # tuples as lists, as config.yaml holds them


def _first_difference(before: Any, now: Any, prefix: str) -> str:
    if isinstance(before, Mapping) and isinstance(now, Mapping):
        for key in [*before, *(k for k in now if k not in before)]:
            if before.get(key) != now.get(key):
                return _first_difference(before.get(key), now.get(key), f"{prefix}.{key}")
    return prefix


def _at(value: Any, dotted: str) -> Any:
    for part in dotted.split(".")[1:]:
        value = value.get(part) if isinstance(value, Mapping) else None
    return value
