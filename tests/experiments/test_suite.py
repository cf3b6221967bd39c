"""The benchmark suite: baselines, Δm and the table."""

from mtlkit.experiments.suite import Variant, run_suite, split_metrics
from mtlkit.metrics import delta_m


def test_suite_table_has_baselines_variants_and_delta_m():
    result = run_suite("penguins", [Variant("ew"), Variant("mgda", weighting="mgda")], seeds=[0], scale=0.05)
    assert len(result.baselines) == 1 and set(result.baselines[0]) == {"species", "sex", "body_mass"}
    table = result.table()
    assert table.splitlines()[2].startswith("| single-task |")
    run = result.runs["mgda"][0]
    directions = {t: {i.metric: i.higher_is_better} for t, i in result.info.tasks.items()}
    expected = delta_m(split_metrics(run, result.info), result.baselines[0], directions)
    mgda_row = next(line for line in table.splitlines() if line.startswith("| mgda |"))
    assert f"{expected:.2f}" in mgda_row
