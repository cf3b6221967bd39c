"""The benchmark suite: baselines, Δm and the table."""

from mtlkit.experiments.runner import RunResult
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


def _fake_result(valid: float, test: float) -> RunResult:
    """A run whose species accuracy is `valid` on the validation split and `test` on the test split."""
    scores = {"species/penguins/valid/accuracy": valid, "species/penguins/test/accuracy": test}
    for split in ("valid", "test"):  # the other tasks score the same in every run
        scores.update({f"sex/penguins/{split}/accuracy": 0.8, f"body_mass/penguins/{split}/mae": 0.3})
    return RunResult(config=None, scores=scores, history=[], seconds_per_epoch=0.0, model=None)  # type: ignore[arg-type]


# Fake runner: the validation score peaks at lr 3e-3 (the preset), the test score at 1e-3;
# static weights: validation peaks at species weight 2, test at weight 0.5.
def _fake_run(config, run_dir=None, progress_bar=True, loaded=None):
    lr = config.trainer["lr"]
    weighting = config.weighting
    if isinstance(weighting, dict):
        w = weighting["weights"]["species"]
        return _fake_result(valid=0.5 + 0.1 * w, test=0.9 - 0.1 * w)
    if config.data.tasks is not None:  # single-task baseline
        return _fake_result(valid=0.5, test=0.5)
    return _fake_result(valid=0.9 if abs(lr - 3e-3) < 1e-9 else 0.6, test=0.9 if abs(lr - 1e-3) < 1e-9 else 0.6)


def test_tuned_rows_choose_by_validation_not_test_and_appear_in_the_table(monkeypatch):
    from mtlkit.experiments import suite

    monkeypatch.setattr(suite, "run", _fake_run)
    tasks = ["species", "sex", "body_mass"]
    variants = [suite.tuned_ew("penguins"), suite.tuned_static(tasks)]
    assert len(variants[0].candidates) == 3 and len(variants[1].candidates) == 1 + 2 * len(tasks)
    result = suite.run_suite("penguins", variants, seeds=[0, 1])
    assert result.chosen["ew (tuned)"] == ["ew lr=0.003"] * 2
    assert result.chosen["static (tuned)"] == ["static 2,1,1"] * 2
    assert [r.scores["species/penguins/test/accuracy"] for r in result.runs["ew (tuned)"]] == [0.6, 0.6]
    table = result.table()
    assert "| ew (tuned) | 0.6000 ± 0.0000 |" in table
    assert "| static (tuned) | 0.7000 ± 0.0000 |" in table
    legend = result.legend()
    assert "lr ∈ {0.001, 0.003, 0.009}" in legend and "chosen by validation Δm, 7 runs per seed" in legend
    assert "chosen per seed: static 2,1,1, static 2,1,1" in legend


def test_tuned_rows_need_the_single_task_baselines():
    import pytest

    from mtlkit.experiments import suite

    with pytest.raises(ValueError, match="ew \\(tuned\\).*need the single-task baselines"):
        suite.run_suite("penguins", [suite.tuned_ew("penguins")], seeds=[0], baselines=False)


def test_bench_methods_all_runs_every_registered_method_and_both_tuned_rows(monkeypatch, capsys):
    from mtlkit.cli import main
    from mtlkit.experiments import suite
    from mtlkit.weighting import available

    monkeypatch.setattr(suite, "run", _fake_run)
    assert main(["bench", "balancers", "--dataset", "penguins", "--seeds", "1", "--methods", "all"]) == 0
    rows = [line.split(" | ")[0][2:] for line in capsys.readouterr().out.splitlines() if line.startswith("| ")]
    assert rows[1:] == ["single-task", *available(aliases=False), "ew (tuned)", "static (tuned)"]


def test_keep_going_reports_a_failing_method_in_its_row_and_raises_without_it(monkeypatch):
    import pytest

    from mtlkit.experiments import suite

    def failing_run(config, run_dir=None, progress_bar=True, loaded=None):
        if config.weighting == "gls":
            raise ValueError("GLS needs positive losses")
        return _fake_run(config)

    monkeypatch.setattr(suite, "run", failing_run)
    variants = [Variant("ew"), Variant("gls", weighting="gls")]
    result = suite.run_suite("penguins", variants, seeds=[0, 1], keep_going=True)
    assert result.failed == {"gls": "gls, seed 0: ValueError: GLS needs positive losses"}
    assert result.runs["gls"] == [] and len(result.runs["ew"]) == 2
    assert "| gls | failed (gls, seed 0: ValueError: GLS needs positive losses) | | | | |" in result.table()
    assert "Failed (the run raised; no scores): gls." in result.legend()
    with pytest.raises(ValueError, match="positive losses"):
        suite.run_suite("penguins", variants, seeds=[0])
