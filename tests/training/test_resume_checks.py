"""Resuming keeps the checkpoint's balancer, and says when a new n_epochs meets an LR schedule."""

import warnings

import pytest

from mtlkit import Trainer
from mtlkit.errors import ConfigError


def trained(tmp_path, make_model, make_loaders, **options):
    trainer = Trainer(n_epochs=2, lr=0.1, seed=0, progress_bar=False, **options)
    trainer.fit(make_model(), make_loaders())
    trainer.save(tmp_path / "c.pt")
    return tmp_path / "c.pt"


def test_resume_with_another_balancer_is_refused(tmp_path, make_model, make_loaders):
    path = trained(tmp_path, make_model, make_loaders, weighting="uw")
    with pytest.raises(ConfigError, match=r"trained with weighting='uw', not 'ew'"):
        Trainer(n_epochs=3, lr=0.1, weighting="ew", progress_bar=False).fit(
            make_model(), make_loaders(), resume_from=path
        )


def test_resume_with_another_n_epochs_under_a_schedule_warns(tmp_path, make_model, make_loaders):
    path = trained(tmp_path, make_model, make_loaders, lr_scheduler="linear")
    with pytest.warns(UserWarning, match=r"planned for n_epochs=2; resuming with n_epochs=4 .* does not stretch it"):
        Trainer(n_epochs=4, lr=0.1, lr_scheduler="linear", progress_bar=False).fit(
            make_model(), make_loaders(), resume_from=path
        )


def test_resume_with_the_same_settings_or_a_constant_lr_is_quiet(tmp_path, make_model, make_loaders):
    path = trained(tmp_path, make_model, make_loaders)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        trainer = Trainer(n_epochs=4, lr=0.1, progress_bar=False)  # constant LR: training longer is fine
        trainer.fit(make_model(), make_loaders(), resume_from=path)
    assert trainer.epoch == 4
