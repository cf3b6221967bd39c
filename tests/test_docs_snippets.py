"""Every ```python block of README.md and docs/*.md runs, so the docs cannot drift from the code.

How it works (several people edit the README at once, so the rules are few and local):
- A block is a fence line that is exactly ```python (after stripping whitespace), up to the
  next line that is exactly ```. Other fences (```yaml, ```bash, plain ```) are not run.
- Each block runs alone, as a fresh `__main__` module, in an empty temporary folder that
  links `examples/` and `docs/` of the repository (so `examples/configs/...` paths work and
  nothing is written into the checkout). Blocks do not see each other's names: a block
  must import and build what it uses.
- A block that cannot run alone (an excerpt of a longer example, a fragment using names
  defined elsewhere) is skipped only when the line just before its fence (blank lines
  allowed) is `<!-- not-run: REASON -->` with a non-empty reason. Keep these rare: prefer
  a few setup lines that make the block runnable.
- The test ids are `FILE:LINE` of the fence, so a failure points at the block.
"""

from __future__ import annotations

import os
import re
import runpy
import socket
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from mtlkit.training import close_process_group

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
NOT_RUN = re.compile(r"^<!--\s*not-run:\s*(?P<reason>.*?)\s*-->$")


@dataclass(frozen=True)
class Block:
    path: Path
    line: int  # 1-based line of the opening fence
    code: str
    not_run: str | None  # the reason, for a block marked not-run

    @property
    def id(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def python_blocks(path: Path) -> list[Block]:
    """The ```python blocks of a Markdown file, with their not-run marks."""
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks, i = [], 0
    while i < len(lines):
        if lines[i].strip() == "```python":
            end = next((j for j in range(i + 1, len(lines)) if lines[j].strip() == "```"), None)
            if end is None:
                raise AssertionError(f"{path.name}:{i + 1}: a ```python block is never closed")
            previous = next((lines[j].strip() for j in range(i - 1, -1, -1) if lines[j].strip()), "")
            mark = NOT_RUN.match(previous)
            blocks.append(Block(path, i + 1, "\n".join(lines[i + 1 : end]) + "\n", mark["reason"] if mark else None))
            i = end
        i += 1
    return blocks


BLOCKS = [block for path in DOCS for block in python_blocks(path)]


def test_the_docs_have_python_blocks_and_every_not_run_mark_gives_a_reason():
    assert len(BLOCKS) >= 5
    assert all(block.not_run for block in BLOCKS if block.not_run is not None)
    for path in DOCS:  # a mark that is not right before a python block would silently do nothing
        text = path.read_text(encoding="utf-8")
        marks = sum(1 for line in text.splitlines() if NOT_RUN.match(line.strip()))
        assert marks == sum(1 for b in BLOCKS if b.path == path and b.not_run), f"{path.name}: a stray not-run mark"


@pytest.mark.timeout(900)
@pytest.mark.parametrize("block", BLOCKS, ids=[block.id for block in BLOCKS])
def test_python_block_runs(block: Block, tmp_path, monkeypatch):
    if block.not_run is not None:
        pytest.skip(f"marked not-run: {block.not_run}")
    for name in ("examples", "docs"):
        (tmp_path / name).symlink_to(ROOT / name, target_is_directory=True)
    monkeypatch.chdir(tmp_path)
    script = tmp_path / f"block_{block.line}.py"
    script.write_text(block.code, encoding="utf-8")
    monkeypatch.setattr(sys, "argv", [str(script)])
    monkeypatch.setenv("MPLBACKEND", "Agg")
    # A block written for torchrun (docs/distributed.md) runs as a one-rank job; others ignore these.
    for name, value in {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("MASTER_PORT", str(_free_port()))
    try:
        runpy.run_path(str(script), run_name="__main__")
    except SystemExit as exit_:  # a block may end with sys.exit(0)
        assert exit_.code in (0, None), f"{block.id} exited with {exit_.code}"
    finally:
        close_process_group()  # the one-rank group a torchrun block made lives until closed: not into later tests
    assert os.getcwd() == str(tmp_path)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
