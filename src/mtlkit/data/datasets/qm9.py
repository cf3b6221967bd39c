"""QM9 from the `qm9pack` package: 12 regression targets of small organic molecules.

Each molecule becomes a fixed-size vector: the eigenvalues of its Coulomb matrix
(Rupp et al., "Fast and Accurate Modeling of Molecular Atomization Energies with Machine
Learning", PRL 2012, https://arxiv.org/abs/1109.2618), sorted by decreasing absolute
value and zero-padded to QM9's largest molecule (29 atoms), followed by its counts of
H, C, N, O and F atoms: 34 features, standardised with training statistics.

The CSV files that qm9pack ships are read directly, without importing qm9pack: its
`get_data()` parses all 130,831 molecules with pandas and imports `pkg_resources`,
which recent setuptools no longer provides.
"""

from __future__ import annotations

import csv
import importlib.util
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
from torch import Tensor

from mtlkit.data.datasets.base import (
    EXTRA_HINT,
    SPLITS,
    DatasetInfo,
    LoadedDataset,
    MissingExtraError,
    TaskInfo,
    make_datasets,
    split_indices,
    standardize,
    train_stats,
)
from mtlkit.errors import ConfigError

NAME = "qm9"
INPUT_KEY = "x"
MAX_ATOMS = 29
ELEMENTS = {"H": 1, "C": 6, "N": 7, "O": 8, "F": 9}
ANGSTROM_TO_BOHR = 1.0 / 0.529177210903  # CODATA 2018 Bohr radius in Å
CSV_FILES = ("qm9_part1.csv", "qm9_part2.csv", "qm9_part3.csv")
CACHE_VERSION = 1

# task name -> (qm9pack column, unit, description); the 12 standard QM9 targets.
TARGETS = {
    "mu": ("Dipole_debye", "D", "dipole moment"),
    "alpha": ("Polarizability_bohr3", "bohr^3", "isotropic polarizability"),
    "homo": ("HOMO_au", "Ha", "HOMO energy"),
    "lumo": ("LUMO_au", "Ha", "LUMO energy"),
    "gap": ("HOMO_LUMO_gap_au", "Ha", "HOMO-LUMO gap"),
    "r2": ("R2_bohr2", "bohr^2", "electronic spatial extent <R^2>"),
    "zpve": ("ZPVE_au", "Ha", "zero-point vibrational energy"),
    "u0": ("InternalEnergy_0K_au", "Ha", "internal energy at 0 K"),
    "u298": ("InternalEnergy_298K_au", "Ha", "internal energy at 298.15 K"),
    "h298": ("Enthalphy_298K_au", "Ha", "enthalpy at 298.15 K"),
    "g298": ("GibbsFreeEnergy_298K_au", "Ha", "Gibbs free energy at 298.15 K"),
    "cv": ("Heatcapacity_Cv_cal_mol_K", "cal/(mol K)", "heat capacity at 298.15 K"),
}


def load_qm9(
    max_molecules: int | None = 10_000,
    seed: int = 0,
    split_fractions: Sequence[float] = (0.8, 0.1, 0.1),
    cache_dir: str | Path | None = None,
) -> LoadedDataset:
    """A random subset of `max_molecules` molecules (all 130,831 with `None`), fixed by `seed`.

    With `cache_dir`, the featurised subset is saved there and read back by later calls
    with the same `max_molecules` and `seed`; nothing is written anywhere else.
    """
    if max_molecules is not None and max_molecules < 3:
        raise ConfigError(
            f"max_molecules of dataset {NAME!r} must be at least 3 (one per split) or None, got {max_molecules}"
        )
    features, targets = _cached_features(max_molecules, seed, cache_dir)

    index = split_indices(len(features), split_fractions, seed, NAME)
    X_parts = standardize({split: features[index[split]] for split in SPLITS})
    mean, std = train_stats(targets[index["train"]])
    Y_parts = {
        split: {task: ((targets[index[split], t] - mean[t]) / std[t]).float() for t, task in enumerate(TARGETS)}
        for split in SPLITS
    }
    info = DatasetInfo(
        NAME,
        tasks={
            task: TaskInfo.regression(INPUT_KEY, mean[t].item(), std[t].item(), unit, description)
            for t, (task, (_, unit, description)) in enumerate(TARGETS.items())
        },
        input_shapes={INPUT_KEY: (MAX_ATOMS + len(ELEMENTS),)},
        description="QM9 (Ramakrishnan et al. 2014): sorted Coulomb-matrix eigenvalues + atom counts",
    )
    datasets = make_datasets(NAME, {split: {INPUT_KEY: X_parts[split]} for split in SPLITS}, Y_parts)
    return LoadedDataset(info, datasets)


def coulomb_eigenvalues(charges: Tensor, positions: Tensor) -> Tensor:
    """Sorted Coulomb-matrix eigenvalues (N, A) of molecules padded to A atoms.

    `charges` (N, A) holds nuclear charges with 0 for padding, `positions` (N, A, 3)
    coordinates in bohr. M_ii = Z_i^2.4 / 2, M_ij = Z_i Z_j / |R_i - R_j|; padding rows
    and columns are zero and add zero eigenvalues, which the sort by decreasing absolute
    value puts last.
    """
    Z = charges.to(positions.dtype)
    distance = (positions[:, :, None, :] - positions[:, None, :, :]).norm(dim=-1)
    # Zero distances (the diagonal, padding atoms at the origin) would give 0/0: divide by 1
    # there instead; the diagonal is replaced below and padding rows have Z = 0 anyway.
    off_diagonal = Z[:, :, None] * Z[:, None, :] / torch.where(distance > 0, distance, torch.ones_like(distance))
    eye = torch.eye(charges.shape[1], dtype=torch.bool, device=charges.device)
    matrix = torch.where(eye, 0.5 * Z[:, :, None].pow(2.4), off_diagonal)
    eigenvalues = torch.linalg.eigvalsh(matrix)
    order = eigenvalues.abs().argsort(dim=1, descending=True)
    return eigenvalues.gather(1, order)


def _cached_features(max_molecules: int | None, seed: int, cache_dir: str | Path | None) -> tuple[Tensor, Tensor]:
    if cache_dir is None:
        return _features(max_molecules, seed)
    path = Path(cache_dir) / f"qm9_v{CACHE_VERSION}_{max_molecules or 'all'}_seed{seed}.pt"
    if path.exists():
        cached = torch.load(path, weights_only=True)
        return cached["features"], cached["targets"]
    features, targets = _features(max_molecules, seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".tmp")
    torch.save({"features": features, "targets": targets}, partial)
    partial.replace(path)  # atomic: a reader never sees a half-written cache file
    return features, targets


def _features(max_molecules: int | None, seed: int) -> tuple[Tensor, Tensor]:
    """Features (N, 34) float32 and raw targets (N, 12) float64 of the chosen molecules."""
    charges, positions, targets = _read_molecules(_data_dir(), max_molecules, seed)
    eigenvalues = coulomb_eigenvalues(charges, positions)
    counts = torch.stack([(charges == z).sum(dim=1) for z in ELEMENTS.values()], dim=1)
    return torch.cat([eigenvalues, counts.double()], dim=1).float(), targets


def _data_dir() -> Path:
    spec = importlib.util.find_spec("qm9pack")
    if spec is None or not spec.submodule_search_locations:
        raise MissingExtraError(
            f"the {NAME!r} dataset needs the 'qm9pack' package, which is not installed: {EXTRA_HINT}"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "data"


def _read_molecules(data_dir: Path, max_molecules: int | None, seed: int) -> tuple[Tensor, Tensor, Tensor]:
    """Charges (N, 29), positions in bohr (N, 29, 3) and targets (N, 12) of a random subset."""
    paths = [data_dir / name for name in CSV_FILES]
    total = sum(_count_rows(path) for path in paths)
    if max_molecules is None or max_molecules >= total:
        chosen = torch.arange(total)
    else:
        chosen = torch.randperm(total, generator=torch.Generator().manual_seed(seed))[:max_molecules].sort().values
    wanted = set(chosen.tolist())

    charges: list[list[int]] = []
    positions: list[list[float]] = []
    targets: list[list[float]] = []
    for row in _rows(paths, wanted):
        elements = [e.strip(" '\"") for e in row["Elements"].strip("[]").split(",")]
        padding = MAX_ATOMS - len(elements)
        charges.append([ELEMENTS[e] for e in elements] + [0] * padding)
        xyz = row["XYZ_Ang"].replace("[", "").replace("]", "").split(",")
        positions.append([float(v) for v in xyz] + [0.0] * 3 * padding)
        targets.append([float(row[column]) for column, _, _ in TARGETS.values()])
    if len(targets) != len(chosen):
        raise RuntimeError(f"qm9pack's CSV files under {data_dir} gave {len(targets)} of the {len(chosen)} chosen rows")
    return (
        torch.tensor(charges, dtype=torch.int64),
        torch.tensor(positions, dtype=torch.float64).reshape(-1, MAX_ATOMS, 3) * ANGSTROM_TO_BOHR,
        torch.tensor(targets, dtype=torch.float64),
    )


def _count_rows(path: Path) -> int:
    newlines, last = 0, b""
    with path.open("rb") as file:
        for block in iter(lambda: file.read(1 << 24), b""):
            newlines, last = newlines + block.count(b"\n"), block[-1:]
    return newlines + (last not in (b"\n", b"")) - 1  # a last row without newline counts; the header does not


def _rows(paths: list[Path], wanted: set[int]) -> Iterator[dict[str, str]]:
    """The rows whose running index over all files is in `wanted`, as column -> text."""
    position = 0
    for path in paths:
        with path.open(newline="", encoding="utf-8") as file:
            header = next(csv.reader([file.readline()]))
            for line in file:
                if position in wanted:
                    yield dict(zip(header, next(csv.reader([line]))))
                position += 1
