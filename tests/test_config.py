"""The run's configuration: one field per setting, the command's options made from the fields, the recipe filled
in, every value checked with a message that names the setting (the command line says the flag)."""
import argparse
import dataclasses

import pytest

from happysad import config, errors, model as models, review, train
from happysad.config import ConfigError, FeatureConfig, ReviewConfig, TrainConfig


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def test_every_setting_is_an_option_of_the_command_by_its_name(capsys):
    with pytest.raises(SystemExit):
        train.parse_args(["--help"])
    text = capsys.readouterr().out
    for field in dataclasses.fields(TrainConfig):
        assert flag(field.name) in text, field.name


@pytest.mark.parametrize("argv, settings", [
    (["--image-size", "64", "--epochs", "3"], dict(image_size=64, epochs=3)),
    (["--split", "0.8,0.1,0.1", "--threshold", "0.4"], dict(split=(0.8, 0.1, 0.1), threshold=0.4)),
    (["--no-augment", "--faces", "--no-class-weights"], dict(augment=False, faces=True, class_weights=False)),
    (["--arch", "mobilenet", "--holdout", "0.2", "--far-share", "0.1"],
     dict(arch="mobilenet", holdout=0.2, far_share=0.1)),
])
def test_the_command_line_and_the_keywords_build_the_same_configuration(argv, settings):
    built = TrainConfig.build(**settings)
    assert train.parse_args(argv) == built
    assert all(getattr(built, name) == value for name, value in settings.items())


def test_false_is_a_value_of_every_switch():
    """happysad.train(faces=False) and --no-faces: every yes/no setting takes both."""
    switches = [f.name for f in dataclasses.fields(TrainConfig) if f.type is bool]
    assert {"faces", "augment", "class_weights", "jit"} <= set(switches)
    for name in switches:
        assert getattr(TrainConfig.build(**{name: False}), name) is False
        assert getattr(train.parse_args([f"--no-{flag(name)[2:]}"]), name) is False


def test_the_recipe_fills_only_what_was_not_given_and_fills_everything():
    recipe = models.RECIPES["cnn"]
    built = TrainConfig.build(dropout=0.1)
    assert built.dropout == 0.1 and built.epochs == recipe.epochs and built.image_size == recipe.image_size
    unfilled = {f.name for f in dataclasses.fields(built) if f.metadata["recipe"] and getattr(built, f.name) is None}
    assert unfilled == {"folds"}  # the CNN's: train decides by the folder's size (train.folds_by_size)
    backbone = TrainConfig.build(arch="mobilenet")
    assert all(getattr(backbone, f.name) is not None for f in dataclasses.fields(backbone) if f.metadata["recipe"])
    scratch = TrainConfig.build(arch="mobilenet", weights="none")  # trained from scratch: the CNN's recipe
    assert scratch.epochs == recipe.epochs and not scratch.cross_validate


def test_a_wrong_setting_is_named_as_a_setting_and_worded_as_a_flag_by_the_command(capsys):
    with pytest.raises(ConfigError) as error:
        TrainConfig.build(image_size=8)
    assert str(error.value).startswith("image_size must be at least 32")
    assert error.value.as_flags().startswith("--image-size must be at least 32")
    with pytest.raises(SystemExit):
        train.parse_args(["--image-size", "8"])
    assert "error: --image-size must be at least 32" in capsys.readouterr().err
    assert isinstance(error.value, ValueError)  # the API's callers catch ValueError


@pytest.mark.parametrize("settings, message", [
    (dict(fold=3), "unknown setting(s) fold;"),
    (dict(split="0.5,0.5"), "split must be three positive fractions summing to 1"),
    (dict(split="a,b,c"), "split must be three comma-separated fractions"),
    (dict(threshold="high"), "threshold must be auto or a number"),
    (dict(threshold=1.5), "threshold must be between 0 and 1"),
    (dict(cache="ram"), "cache must be auto, memory, disk[:PATH] or none"),
    (dict(learning_rate=0), "learning_rate must be positive"),
    (dict(arch="mobilenet", epochs=5, checkpoint=True), "epochs, checkpoint: for fits on images"),
    (dict(arch="mobilenet", strategy="multiworker"), "strategy multiworker: for fits on images"),
    (dict(arch="mobilenet", split=(0.6, 0.2, 0.2)), "split applies to the CNN and fine-tuning"),
    (dict(unsure_band=1.0), "unsure_band must be in [0, 1)"),
    (dict(epochs="many"), "epochs must be a number, got 'many'"),
    (dict(views=3), "views must be one of 1, 2, 4, got 3"),
    (dict(strategy="all"), "strategy must be one of auto, default, mirrored, multiworker"),
    (dict(model="models/mine"), "model must end in .h5 or .keras"),
    (dict(model="out.tflite"), "model must end in .h5 or .keras"),
    (dict(model="out.H5"), "model must end in .h5 or .keras"),  # Keras' save would refuse it after training
    (dict(run_name="../escape"), "run_name names one folder inside logdir"),  # it wrote beside logdir
    (dict(run_name="a/b"), "run_name names one folder inside logdir"),
    (dict(run_name=".hidden"), "run_name names one folder inside logdir"),
])
def test_each_check_names_its_setting(settings, message):
    with pytest.raises(ConfigError) as error:
        TrainConfig.build(**settings)
    assert str(error.value).startswith(message), str(error.value)


def test_numbers_given_as_text_are_read_as_the_command_line_reads_them():
    assert TrainConfig.build(epochs="5", learning_rate="0.01") == TrainConfig.build(epochs=5, learning_rate=0.01)


def test_a_default_given_again_is_not_misplaced():
    """A cross-validated head refuses settings of fits on images only when they would change something."""
    built = TrainConfig.build(arch="mobilenet", class_weights=True, learning_rate=1e-3)
    assert built.cross_validate


def test_the_hyperparameters_are_the_marked_settings_and_change_with_them_alone():
    base = TrainConfig.build()
    marked = {f.name for f in dataclasses.fields(TrainConfig) if f.metadata["hyper"]}
    assert set(base.hyperparameters()) == marked and {"epochs", "learning_rate", "split"} <= marked
    assert not {"model", "logdir", "resume", "jit", "cache", "run_name"} & marked
    assert TrainConfig.build(model="elsewhere.h5", jit=True).hyperparameters() == base.hyperparameters()
    assert TrainConfig.build(epochs=3).hyperparameters()["epochs"] == 3
    assert TrainConfig.build(split="0.8,0.1,0.1").hyperparameters()["split"] == [0.8, 0.1, 0.1]  # as JSON keeps it
    assert base.hyperparameters()["split"] is None and base.folds_on_images  # the CNN cross-validates by default


def test_the_record_form_is_every_setting_as_json_keeps_it():
    written = TrainConfig.build(data="photos", split=(0.6, 0.2, 0.2)).to_record()
    assert set(written) == {f.name for f in dataclasses.fields(TrainConfig)}
    assert written["split"] == [0.6, 0.2, 0.2] and written["data"] == "photos"


def test_review_shares_trains_feature_settings_and_takes_the_folder_first():
    shared = {f.name for f in dataclasses.fields(FeatureConfig)}
    assert shared <= {f.name for f in dataclasses.fields(ReviewConfig)}
    assert shared <= {f.name for f in dataclasses.fields(TrainConfig)}
    parsed = review.parse_args(["photos", "--folds", "4", "--top", "3"])
    assert parsed == ReviewConfig.build(data="photos", folds=4, top=3) and parsed.arch == "mobilenet"
    assert parsed.image_size == models.RECIPES["mobilenet"].image_size
    with pytest.raises(ConfigError, match="weights none gives random features"):
        ReviewConfig.build(data="photos", weights="none")
    for wrong in (90, 1.5, -1):
        with pytest.raises(ConfigError, match="min_confidence is a probability from 0 to 1"):
            ReviewConfig.build(data="photos", min_confidence=wrong)


def test_options_not_given_stay_out_so_the_configuration_owns_every_default():
    parser = argparse.ArgumentParser()
    config.add_options(parser, TrainConfig)
    assert vars(parser.parse_args(["--epochs", "4"])) == {"epochs": 4}


def test_library_errors_say_settings_and_commands_say_flags():
    error = models.BuildError("`arch` x needs `image_size` 32; pass its path as `weights`")
    assert str(error) == "arch x needs image_size 32; pass its path as weights"
    assert errors.for_command(error) == "--arch x needs --image-size 32; pass its path as --weights"
    command_line = "`python -m happysad.clean data` first"  # not a setting's name: left as it is
    assert errors.for_command(OSError(command_line)) == command_line
