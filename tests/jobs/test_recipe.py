"""Recipes: typos are errors that name the key, overrides apply, variants scale their stages."""

from __future__ import annotations

import pytest

from yolo_prune.errors import ConfigError
from yolo_prune.jobs.recipe import (
    apply_overrides,
    normalise,
    read_recipe,
    to_yaml,
    variant_labels,
    variant_options,
    variant_refit,
)
from yolo_prune.prune import build_config


def test_shipped_recipes_build_every_variant(repo_cfg):
    paths = sorted((repo_cfg / "recipes").glob("*.yaml"))
    assert {p.stem for p in paths} >= {"yolov3-tiny", "yolov4", "lenet5", "resnet56"}
    for path in paths:
        recipe = read_recipe(path)  # builds every variant's config: raises on any bad option
        assert recipe["methods"], path.name
        for variant in recipe["methods"]:
            build_config(*variant_options({**recipe, "ratio": recipe.get("ratio") or 0.5}, variant))


def test_classifier_recipes_spend_their_budget_in_every_variant(repo_cfg, shared_data):
    from yolo_prune.jobs.prune import check_job
    from yolo_prune.jobs.tasks import ClassificationTask, TaskInputs

    for name in ("lenet5", "resnet56"):
        recipe = read_recipe(repo_cfg / "recipes" / f"{name}.yaml")
        inputs = TaskInputs(cfg=repo_cfg / f"{name}.cfg", data=shared_data / "mnist", val=None)
        task = ClassificationTask(inputs)
        check_job(recipe, task, list(recipe["methods"]))  # budget_epochs and task settings


def test_a_typo_in_any_variant_fails_when_the_recipe_is_read(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text("methods:\n  - {name: a, method: magnitude}\n"
                 "  - {name: x, method: admm, ratio: 0.5, epoch: 3}\n")  # fmt: skip
    with pytest.raises(ConfigError, match="r.yaml: methods.x: admm: unknown option 'epoch'"):
        read_recipe(p)


def test_unknown_top_level_key_is_named(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("ratio: 0.5\nratoi: 0.7\n")
    with pytest.raises(ConfigError, match=r"r.yaml: unknown key 'ratoi'; known keys: .*ratio"):
        read_recipe(path)


def test_unknown_train_option_and_wrong_type_are_named(tmp_path):
    with pytest.raises(ConfigError, match=r"train: unknown option 'learning_rate'"):
        normalise({"train": {"learning_rate": 0.1}})
    with pytest.raises(ConfigError, match=r"phases.admm: unknown option 'lrr'"):
        normalise({"phases": {"admm": {"lrr": 0.1}}})
    with pytest.raises(ConfigError, match=r"ratio must be a number, got 'half'"):
        normalise({"ratio": "half"})
    with pytest.raises(ConfigError, match=r"train must be a mapping"):
        normalise({"train": [1, 2]})


def test_not_yaml_and_missing_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("ratio: [0.5\n")
    with pytest.raises(ConfigError, match=r"bad.yaml:2: not valid YAML"):
        read_recipe(bad)
    with pytest.raises(ConfigError, match=r"no such recipe file"):
        read_recipe(tmp_path / "nope.yaml")


def test_set_overrides_dotted_keys_with_yaml_values():
    recipe = normalise({"ratio": 0.5, "methods": [{"name": "admm", "epochs": 4}]})
    out = apply_overrides(recipe, ["train.lr=0.002", "methods.admm.epochs=2", "ratio=0.7"])
    assert out["train"]["lr"] == 0.002 and out["ratio"] == 0.7
    assert out["methods"]["admm"]["epochs"] == 2
    with pytest.raises(ConfigError, match=r"expected KEY=VALUE"):
        apply_overrides(recipe, ["train.lr"])
    with pytest.raises(ConfigError, match=r"train: unknown option 'lrate'"):
        apply_overrides(recipe, ["train.lrate=1"])


def test_exponent_notation_is_a_number_in_recipes_and_overrides(tmp_path):
    """YAML 1.1 reads ``1e-4`` as a string; a learning rate written so must still be a float."""
    path = tmp_path / "r.yaml"
    path.write_text("train:\n  lr: 1e-4\n  weight_decay: 5.0E-4\n  batch_size: 8\n")
    train = read_recipe(path)["train"]
    assert train == {"lr": 1e-4, "weight_decay": 5e-4, "batch_size": 8}
    assert isinstance(train["batch_size"], int)
    out = apply_overrides(normalise({}), ["train.lr=2e-3", "train.optimizer=adamw"])
    assert out["train"] == {"lr": 2e-3, "optimizer": "adamw"}


def test_variant_takes_the_recipe_ratio_and_scales_its_stages():
    recipe = normalise(
        {"ratio": 0.9, "methods": [{"name": "ours", "method": "admm", "ratio": 0.5,
                                    "ratios": [0.3, 0.4, 0.5], "stages": 3, "epochs": 3}]}
    )  # fmt: skip
    method, options = variant_options(recipe, "ours")
    assert method == "admm" and options["ratio"] == 0.9
    assert options["ratios"] == pytest.approx([0.54, 0.72, 0.9])
    # stages without a ratio of their own end at the recipe's ratio too
    recipe["methods"]["ours"].pop("ratio")
    assert variant_options(recipe, "ours")[1]["ratios"] == pytest.approx([0.54, 0.72, 0.9])
    # a registered method that the recipe does not list runs with its defaults
    assert variant_options(recipe, "magnitude") == ("magnitude", {"ratio": 0.9})
    with pytest.raises(ConfigError, match=r"unknown method 'admn'; choose one of: .*admm"):
        variant_options(recipe, "admn")


def test_refit_by_default_only_where_the_cut_comes_at_once():
    methods = [{"name": "ours", "method": "admm-filter"}, {"name": "cut", "method": "channel"},
               {"name": "own", "method": "admm-filter", "refit": 16}]  # fmt: skip
    recipe = normalise({"ratio": 0.3, "methods": methods})
    # ADMM's training leads up to its cut: no refit to the dense model unless asked
    assert [variant_refit(recipe, n) for n in ("ours", "cut", "own")] == [0, 32, 16]
    assert variant_refit(recipe, "admm") == 0  # a registered method the recipe does not list
    recipe = normalise({"ratio": 0.3, "refit": 8, "methods": methods})
    assert [variant_refit(recipe, n) for n in ("ours", "cut", "own")] == [8, 8, 16]


def test_labels_weight_defaults_to_one_and_zero_needs_a_teacher():
    recipe = normalise({"distill": 1.0, "methods": [{"name": "a", "method": "channel"},
                        {"name": "b", "method": "channel", "labels": 0}]})  # fmt: skip
    assert (variant_labels(recipe, "a"), variant_labels(recipe, "b")) == (1.0, 0.0)
    recipe = normalise({"methods": [{"name": "b", "method": "channel", "labels": 0}]})
    with pytest.raises(ConfigError, match="methods.b: labels=0 and no distill weight"):
        variant_labels(recipe, "b")
    recipe = normalise({"methods": [{"name": "c", "method": "channel", "labels": -1}]})
    with pytest.raises(ConfigError, match=r"methods.c.labels=-1; expected a weight >= 0"):
        variant_labels(recipe, "c")


def test_yaml_round_trip(tmp_path):
    recipe = normalise({"ratio": 0.5, "train": {"lr": 0.01}, "methods": {"admm": {"epochs": 3}}})
    path = tmp_path / "r.yaml"
    path.write_text(to_yaml(recipe))
    back = read_recipe(path)
    back.pop("_dir")
    assert back == recipe


def test_val_follows_the_users_data_not_the_recipes(tmp_path, repo_cfg):
    """A recipe that names its own data and val (the Yolo-Fastest demo recipe does) must not
    score a run on its val images when the user gives --data without --val."""
    import argparse

    from yolo_prune.cli.prune import job_inputs

    folders = {name: tmp_path / name for name in ("recipe_data", "recipe_val", "mine", "my_val")}
    for folder in folders.values():
        folder.mkdir()
    recipe = {"model": str(repo_cfg / "yolov3-tiny.cfg"), "data": str(folders["recipe_data"]),
              "val": str(folders["recipe_val"]), "weights": None, "dense_epochs": 1}  # fmt: skip

    def inputs(data, val):
        args = argparse.Namespace(
            cfg=None, weights=None, data=data, val=val, calib_images=64, max_val_images=None
        )
        got = job_inputs(args, recipe)
        return got["data"].name, got["val"].name

    assert inputs(None, None) == ("recipe_data", "recipe_val")
    assert inputs(folders["mine"], None) == ("mine", "mine")
    assert inputs(folders["mine"], folders["my_val"]) == ("mine", "my_val")
    assert inputs(None, folders["my_val"]) == ("recipe_data", "my_val")
