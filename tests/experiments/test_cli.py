"""The `mtlkit` command: exit codes, printed tables, errors that name the key."""

import yaml

from mtlkit.cli import main


def test_list_names_architectures_balancers_datasets_and_metrics(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for word in ("mmoe", "cagrad", "penguins", "f1_macro", "every=k", "ema=β", "mgda@every=4"):
        assert word in out


def test_train_then_eval_a_config_file(tmp_path, capsys):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"name": "t", "data": {"name": "penguins"}, "model": {"encoder": {"hidden": [8]}}}))
    assert (
        main(
            [
                "train",
                str(path),
                "trainer.n_epochs=1",
                "weighting=uw",
                "--run-dir",
                str(tmp_path / "r"),
                "--no-progress",
            ]
        )
        == 0
    )
    assert "| species | penguins | accuracy |" in capsys.readouterr().out
    assert yaml.safe_load((tmp_path / "r/config.yaml").read_text())["weighting"] == "uw"
    assert main(["eval", str(tmp_path / "r"), "--splits", "test"]) == 0
    assert "| body_mass | penguins | mae |" in capsys.readouterr().out


def test_config_errors_exit_2_and_name_the_key(tmp_path, capsys):
    path = tmp_path / "c.yaml"
    path.write_text("data: {name: penguins}\ntrainer: {n_epoch: 1}\n")
    assert main(["train", str(path)]) == 2
    assert "n_epoch" in capsys.readouterr().err


def test_graph_command_draws_a_png(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("data: {name: digits}\nmodel: {architecture: mmoe}\n")
    assert main(["graph", str(path), "--out", str(tmp_path / "g.png")]) == 0
    assert (tmp_path / "g.png").read_bytes()[:4] == b"\x89PNG"


def test_default_run_folder_is_shared_by_every_torchrun_rank(monkeypatch):
    from mtlkit.cli import default_run_dir

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "abc-123")
    assert str(default_run_dir("exp")) == "runs/exp-abc-123"
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert str(default_run_dir("exp")).startswith("runs/exp-2")  # a timestamp outside torchrun
