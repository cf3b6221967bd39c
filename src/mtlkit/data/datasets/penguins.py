"""Palmer penguins with three tasks: species, sex (missing labels masked) and body mass."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from mtlkit.data.datasets.base import (
    SPLITS,
    DatasetInfo,
    LoadedDataset,
    TaskInfo,
    import_extra,
    make_datasets,
    split_indices,
    standardize,
    train_stats,
)

NAME = "penguins"
INPUT_KEY = "x"
NUMERIC = ("bill_length_mm", "bill_depth_mm", "flipper_length_mm", "year")
ISLANDS = ("Biscoe", "Dream", "Torgersen")
SPECIES = ("Adelie", "Chinstrap", "Gentoo")
SEXES = ("female", "male")


def load_penguins(seed: int = 0, split_fractions: Sequence[float] = (0.7, 0.15, 0.15)) -> LoadedDataset:
    """The 342 penguins with all measurements (the 2 rows without any are dropped).

    Features: the four numeric columns in `NUMERIC`, standardised with training
    statistics, then the island one-hot (0/1, in `ISLANDS` order), 7 in all. Tasks:
    `species` (3 classes, `SPECIES` order), `sex` (`SEXES` order; the 9 unknown sexes
    are labelled -1 = no label) and `body_mass` (grams, standardised regression).
    """
    penguins = import_extra("palmerpenguins", "palmerpenguins", NAME)
    frame = penguins.load_penguins()
    frame = frame.dropna(subset=[*NUMERIC, "body_mass_g"]).reset_index(drop=True)

    numeric = torch.tensor(frame[list(NUMERIC)].to_numpy(dtype="float64"), dtype=torch.float32)
    island = torch.tensor([[float(name == isl) for isl in ISLANDS] for name in frame["island"]])
    species = torch.tensor([_code(name, SPECIES, "species") for name in frame["species"]])
    sex = torch.tensor([-1 if not isinstance(s, str) else _code(s, SEXES, "sex") for s in frame["sex"]])
    mass = torch.tensor(frame["body_mass_g"].to_numpy(dtype="float64"), dtype=torch.float32)

    index = split_indices(len(frame), split_fractions, seed, NAME)
    numeric_parts = standardize({split: numeric[index[split]] for split in SPLITS})
    mass_mean, mass_std = train_stats(mass[index["train"]])
    info = DatasetInfo(
        NAME,
        tasks={
            "species": TaskInfo.classification(3, INPUT_KEY, "Adelie=0, Chinstrap=1, Gentoo=2"),
            "sex": TaskInfo.classification(2, INPUT_KEY, "female=0, male=1, unknown=-1 (no label)"),
            "body_mass": TaskInfo.regression(INPUT_KEY, mass_mean.item(), mass_std.item(), "g", "body mass"),
        },
        input_shapes={INPUT_KEY: (len(NUMERIC) + len(ISLANDS),)},
        description="Palmer Archipelago penguins (Gorman et al. 2014), 342 complete rows",
    )
    datasets = make_datasets(
        NAME,
        {split: {INPUT_KEY: torch.cat([numeric_parts[split], island[index[split]]], dim=1)} for split in SPLITS},
        {
            split: {
                "species": species[index[split]],
                "sex": sex[index[split]],
                "body_mass": (mass[index[split]] - mass_mean) / mass_std,
            }
            for split in SPLITS
        },
    )
    return LoadedDataset(info, datasets)


def _code(value: str, names: tuple[str, ...], column: str) -> int:
    if value not in names:
        raise ValueError(f"penguins column {column!r} has the unexpected value {value!r}; known: {names}")
    return names.index(value)
