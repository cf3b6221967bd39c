"""Models with schedules of their own (LTB's temperature) learn the epoch from the Trainer."""

from mtlkit import Trainer


def test_trainer_tells_the_model_each_epoch_before_training_it(make_model, make_loaders):
    model = make_model()
    seen = []
    model.set_epoch = seen.append
    Trainer(n_epochs=3, progress_bar=False).fit(model, make_loaders())
    assert seen == [0, 1, 2]
