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


def test_results_do_not_depend_on_writing_run_folders_and_eval_reproduces_them(tmp_path):
    from mtlkit.experiments import evaluate

    variants = [Variant("uw", weighting="uw")]
    plain = run_suite("penguins", variants, seeds=[0], scale=0.1, baselines=False)
    written = run_suite("penguins", variants, seeds=[0], scale=0.1, baselines=False, out_dir=tmp_path)
    assert plain.runs["uw"][0].scores == written.runs["uw"][0].scores
    again = evaluate(tmp_path / "uw-seed0", ("valid", "test"))
    for key, value in written.runs["uw"][0].scores.items():
        assert abs(again[key] - value) < 1e-6, key


def test_mean_std_never_prints_negative_zero():
    from mtlkit.experiments.report import mean_std

    assert mean_std([-0.001], digits=2) == "0.00"
    assert mean_std([-0.001, 0.001], digits=2) == "0.00 ± 0.00"
    assert mean_std([-0.5], digits=2) == "-0.50"


def test_legend_says_split_seed_count_and_delta_m_sign():
    one = run_suite("penguins", [Variant("ew")], seeds=[0], scale=0.05)
    assert "test split" in one.legend() and "One seed" in one.legend() and "above 0 beats" in one.legend()
    two = run_suite("penguins", [Variant("ew")], seeds=[0, 1], scale=0.05)
    assert "over 2 seeds" in two.legend()
