"""The CLI never shows a traceback for a user error: one line naming the key and the fix, exit 2."""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from mtlkit.cli import main
from mtlkit.errors import ConfigError
from mtlkit.experiments.run_folder import claim_run_folder

ROOT = Path(__file__).resolve().parents[2]
SMALL = {"name": "t", "data": {"name": "penguins"}, "model": {"encoder": {"hidden": [4]}}, "trainer": {"n_epochs": 1}}
GRAPH_WITHOUT_SELECT = [  # the batch is a dict; the first Linear receives it whole
    {"name": "trunk", "layers": {"Linear": [7, 8]}},
    {"name": "species", "anchor_layer": "trunk", "layers": {"Linear": [8, 3]}},
    {"name": "sex", "anchor_layer": "trunk", "layers": {"Linear": [8, 2]}},
    {"name": "body_mass", "anchor_layer": "trunk", "layers": [{"Linear": [8, 1]}, {"Flatten": 0}]},
]


def config_file(tmp_path, content, name="c.yaml"):
    path = tmp_path / name
    path.write_text(content if isinstance(content, str) else yaml.safe_dump(content))
    return str(path)


def train(*args):
    return main(["train", *map(str, args), "--no-progress"])


def one_line_error(capsys):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0], err
    return err[0]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"model": {"encoder": {"hidden": "16"}}}, "model.encoder.hidden: a list of positive integers"),
        ({"model": {"encoder": {"hidden": [8, "x"]}}}, "model.encoder.hidden: a list of positive integers"),
        ({"model": {"encoder": {"dropout": "lots"}}}, r"model.encoder.dropout: a probability in \[0, 1\)"),
        ({"model": {"encoder": {"channels": 3}}}, "model.encoder: unknown option"),
        ({"weighting": {"name": "cagrad", "c": "big"}}, "weighting.c: cagrad needs a number"),
        ({"model": {"architecture": "mmoe", "options": {"num_experts": "two"}}}, "model.options: MMoE: num_experts"),
        ({"data": {"name": "penguins", "batch_size": "64"}}, "data.batch_size must be a positive integer"),
        ({"data": {"name": "penguins", "targets": {"a": {}}}}, "data.targets: only for a table file"),
        ({"data": {"path": "x.csv", "factory": "m:f"}}, "data: give either 'path'"),
        ({"data": {"path": "absent.csv", "targets": {"y": {"kind": "regression"}}}}, "data.path: no file"),
        ({"data": {"factory": "no_such_module_xyz:make"}}, "data.factory: cannot import"),
    ],
)
def test_bad_values_exit_2_with_one_line_naming_the_key(tmp_path, capsys, change, message):
    config = {**SMALL, **change}
    assert train(config_file(tmp_path, config), "--run-dir", tmp_path / "r") == 2
    assert re.search(message, one_line_error(capsys))


def test_a_yaml_whose_top_level_is_not_a_mapping(tmp_path, capsys):
    assert train(config_file(tmp_path, "- a\n- b\n")) == 2
    assert "the top level must be a mapping of sections" in one_line_error(capsys)


def test_an_empty_config_warns_and_trains_the_defaults(tmp_path, capsys):
    path = config_file(tmp_path, "")
    assert train(path, "data.name=penguins", "model.encoder.hidden=[4]", "--run-dir", tmp_path / "r") == 0
    assert f"mtlkit train: warning: {path} is empty" in capsys.readouterr().err


def test_a_shape_failure_inside_the_graph_names_the_node(tmp_path, capsys):
    config = {**SMALL, "model": {"architecture": None, "graph": GRAPH_WITHOUT_SELECT}}
    assert train(config_file(tmp_path, config), "--run-dir", tmp_path / "r") == 2
    assert "node 'trunk'" in one_line_error(capsys)


def test_a_non_finite_loss_exits_2_with_the_fix(tmp_path, capsys):
    config = {**SMALL, "trainer": {"n_epochs": 1, "lr": 1e30}}
    assert train(config_file(tmp_path, config), "--run-dir", tmp_path / "r") == 2
    line = one_line_error(capsys)
    assert "is not finite" in line and "lower lr" in line


def test_debug_shows_the_traceback(tmp_path):
    path = config_file(tmp_path, {**SMALL, "model": {"encoder": {"hidden": "16"}}})
    with pytest.raises(ConfigError, match="model.encoder.hidden"):
        main(["train", path, "--debug"])


def test_train_help_points_to_the_config_docs(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    assert "docs/config.md" in capsys.readouterr().out


# ------------------------------------------------------------------ run folders keep their data


def test_an_existing_run_folder_is_refused_unless_resume_or_overwrite(tmp_path, capsys):
    path = config_file(tmp_path, SMALL)
    run_dir = tmp_path / "r"
    assert train(path, "--run-dir", run_dir) == 0
    log = (run_dir / "logs/log.jsonl").read_text()
    capsys.readouterr()
    assert train(path, "--run-dir", run_dir) == 2
    assert "already holds a run" in one_line_error(capsys) and (run_dir / "logs/log.jsonl").read_text() == log
    assert train(path, "--run-dir", run_dir, "--resume", "trainer.n_epochs=2") == 0  # continues: epoch 2 appended
    assert (run_dir / "logs/log.jsonl").read_text().startswith(log)
    assert train(path, "--run-dir", run_dir, "--overwrite") == 0
    with pytest.raises(SystemExit) as both:
        train(path, "--run-dir", run_dir, "--overwrite", "--resume")
    assert both.value.code == 2


def test_resume_refuses_another_balancer_or_another_model(tmp_path, capsys):
    path = config_file(tmp_path, SMALL)
    assert train(path, "--run-dir", tmp_path / "r") == 0
    capsys.readouterr()
    assert train(path, "--run-dir", tmp_path / "r", "--resume", "weighting=uw") == 2
    assert "the checkpoint was trained with weighting='ew', not 'uw'" in one_line_error(capsys)
    assert train(path, "--run-dir", tmp_path / "r", "--resume", "model.encoder.hidden=[8]") == 2
    assert "--resume: model.encoder.hidden differs from the run's config.yaml ([4] there, [8] now)" in one_line_error(
        capsys
    )
    assert train(path, "--run-dir", tmp_path / "fresh", "--resume") == 2
    assert "has no checkpoints/last.pt" in one_line_error(capsys)


def test_a_second_writer_of_the_same_folder_stops_at_once(tmp_path, capsys):
    run_dir = tmp_path / "r"
    with claim_run_folder(run_dir, {}):  # another process's lock (flock: per open file, so this conflicts too)
        assert train(config_file(tmp_path, SMALL), "--run-dir", run_dir) == 2
        assert "is in use by mtlkit process" in one_line_error(capsys)
        assert not (run_dir / "config.yaml").exists()
    assert train(config_file(tmp_path, SMALL), "--run-dir", run_dir) == 0  # the lock went with its holder


def test_a_writer_in_another_process_blocks_the_folder(tmp_path, capsys):
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys\nfrom pathlib import Path\nfrom mtlkit.experiments.run_folder import claim_run_folder\n"
            "with claim_run_folder(Path(sys.argv[1]), {}):\n    print('locked', flush=True)\n    sys.stdin.read()\n",
            str(tmp_path / "r"),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert train(config_file(tmp_path, SMALL), "--run-dir", tmp_path / "r") == 2
        assert f"is in use by mtlkit process {holder.pid}" in one_line_error(capsys)
    finally:
        holder.communicate("", timeout=60)
    assert holder.returncode == 0


def test_eval_of_a_run_with_a_damaged_checkpoint(tmp_path, capsys):
    path = config_file(tmp_path, SMALL)
    assert train(path, "--run-dir", tmp_path / "r") == 0
    best = tmp_path / "r/checkpoints/best.pt"
    best.write_bytes(best.read_bytes()[:100])
    capsys.readouterr()
    assert main(["eval", str(tmp_path / "r")]) == 2
    assert "is corrupt or truncated" in one_line_error(capsys)


# ------------------------------------------------------------------ your own data through the CLI


def test_train_and_eval_the_readme_csv_example(tmp_path, capsys):
    shutil.copytree(ROOT / "examples/data", tmp_path / "data")
    shutil.copytree(ROOT / "examples/configs", tmp_path / "configs")  # the config's ../data path follows it
    config = str(tmp_path / "configs/customers_csv.yaml")
    assert train(config, "trainer.n_epochs=2", "--run-dir", tmp_path / "r") == 0
    out = capsys.readouterr().out
    assert "| plan | customers | accuracy |" in out and "| spend | customers | mae |" in out
    assert main(["eval", str(tmp_path / "r"), "--splits", "test"]) == 0
    assert "| churn | customers | accuracy |" in capsys.readouterr().out


def test_train_and_eval_a_factory_dataset(tmp_path, capsys, monkeypatch):
    (tmp_path / "cli_factory_mod.py").write_text(
        "from mtlkit.data.datasets import load\ndef make(seed=0):\n    return load('penguins', seed=seed)\n"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    config = {**SMALL, "data": {"factory": "cli_factory_mod:make"}}
    assert train(config_file(tmp_path, config), "--run-dir", tmp_path / "r") == 0
    assert main(["eval", str(tmp_path / "r"), "--splits", "valid"]) == 0
    assert "| species | penguins | accuracy |" in capsys.readouterr().out


def test_bench_with_an_unknown_method_exits_2_before_training(capsys):
    assert main(["bench", "balancers", "--dataset", "penguins", "--methods", "ew,nope"]) == 2
    assert "unknown balancer(s) ['nope']" in one_line_error(capsys)


def test_a_run_that_fails_before_its_first_step_leaves_the_folder_free(tmp_path, capsys):
    wrong = {**SMALL, "trainer": {"n_epochs": 1, "checkpoint_metric": "species/penguins/valid/acuracy:max"}}
    run_dir = tmp_path / "r"
    assert train(config_file(tmp_path, wrong), "--run-dir", run_dir) == 2
    assert "acuracy" in one_line_error(capsys)
    assert not (run_dir / "config.yaml").exists()  # nothing trained: the corrected run needs no --overwrite
    assert train(config_file(tmp_path, SMALL, "right.yaml"), "--run-dir", run_dir) == 0


def test_a_folder_with_any_log_or_checkpoint_is_not_released(tmp_path):
    from mtlkit.experiments.run_folder import release_unstarted

    (tmp_path / "logs").mkdir()
    (tmp_path / "config.yaml").write_text("name: t\n")
    (tmp_path / "logs" / "log.jsonl").write_text("")
    release_unstarted(tmp_path)  # an empty log: nothing was trained
    assert not (tmp_path / "config.yaml").exists() and not (tmp_path / "logs").exists()
    (tmp_path / "logs").mkdir()
    (tmp_path / "config.yaml").write_text("name: t\n")
    (tmp_path / "logs" / "log.jsonl").write_text('{"step": 1}\n')
    release_unstarted(tmp_path)
    assert (tmp_path / "config.yaml").exists() and (tmp_path / "logs" / "log.jsonl").exists()
