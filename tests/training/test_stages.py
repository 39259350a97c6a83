"""AG-CNN's staged training: one folder, a run per stage, weights carried over, frozen branches untouched,
a kill resumed, every branch's AUC evaluated."""

import json
import shutil

import pytest
import torch

from attnscope.engine.config import load_config
from attnscope.engine.inference import evaluate
from attnscope.engine.run import Run
from attnscope.engine.rundir import RunPaths, load_weights
from attnscope.errors import ConfigError, DataError
from attnscope.training import StagePlan, resume, resume_stages, train_stages
from tests.runs import tiny_settings

PLAN = StagePlan(("global", "local", "fusion"), epochs=(1, 1, 1), lr=(0.002, 0.002, 0.001))


def staged_config(root):
    settings = tiny_settings(root, epochs=5) + [
        "model.name=agcnn_tiny",
        "data.image_size=64",
        "data.source_options={count: 120, size: 64}",
        "data.test_fraction=0.2",
    ]
    return load_config(None, settings)


def branch(state: dict, prefix: str) -> dict:
    return {k: v for k, v in state.items() if k.startswith(prefix)}


def same(first: dict, second: dict) -> bool:
    return first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)


@pytest.mark.slow
def test_three_stages_carry_weights_over_freeze_the_others_and_resume_after_a_kill(tmp_path):
    root = tmp_path / "agcnn"
    trained = train_stages(staged_config(root), PLAN)
    folders = [root / "stage1-global", root / "stage2-local", root / "stage3-fusion"]
    weights = [load_weights(RunPaths(f).best_weights) for f in folders]
    for folder, epochs, lr in zip(folders, PLAN.epochs, PLAN.lr, strict=True):
        config = load_config(RunPaths(folder).config)
        assert (config.trainer.epochs, config.optim.lr) == (epochs, lr)
        assert len(RunPaths(folder).metrics.read_text().splitlines()) == epochs + 1
    assert same(branch(weights[1], "global_branch."), branch(weights[0], "global_branch."))  # carried, frozen
    assert not same(branch(weights[1], "local_branch."), branch(weights[0], "local_branch."))  # trained
    assert same(branch(weights[2], "global_branch."), branch(weights[0], "global_branch."))
    assert same(branch(weights[2], "local_branch."), branch(weights[1], "local_branch."))
    assert not same(branch(weights[2], "fusion."), branch(weights[1], "fusion."))
    assert json.loads((root / "stages.json").read_text())["done"] == ["global", "local", "fusion"]

    with Run.open(root, progress=False) as run:  # the folder opens as its last stage
        assert run.root == folders[2] and run.model().stage == "fusion"
        evaluation = evaluate(run)
    branches = evaluation.metrics["branches"]
    assert set(branches) == {"global", "local", "fusion"}
    assert branches["fusion"]["auc"] == pytest.approx(evaluation.metrics["auc"])
    assert all(0 <= values["auc"] <= 1 for values in branches.values())

    # a kill during the last stage: its folder is gone and it is not done; the first two are kept
    state = json.loads((root / "stages.json").read_text())
    (root / "stages.json").write_text(json.dumps(dict(state, done=["global", "local"])))
    shutil.rmtree(folders[2])
    resumed = resume(root)  # the library's one resume: it sees a staged folder and continues its stages
    assert (trained.staged_root, resumed.staged_root) == (root, root)
    assert resumed.run_dir == folders[2] and trained.run_dir == folders[2]
    assert same(load_weights(RunPaths(folders[1]).best_weights), weights[1])  # not trained again
    assert same(load_weights(RunPaths(folders[2]).best_weights), weights[2])  # retrained: the same (seeded)


def test_stage_plans_and_folders_are_checked_by_name(tmp_path):
    config = staged_config(tmp_path / "run")
    with pytest.raises(ConfigError, match="'attn_vgg_tiny' has no stage option"):
        train_stages(load_config(None, tiny_settings(tmp_path / "vgg")), PLAN)
    with pytest.raises(ConfigError, match="--stages global,global"):
        train_stages(config, StagePlan(("global", "global")))
    with pytest.raises(ConfigError, match="--stage-epochs gives 2 value"):
        train_stages(config, StagePlan(("global", "local", "fusion"), epochs=(1, 2)))
    config.trainer.time_budget_s = 60.0
    with pytest.raises(ConfigError, match="time_budget_s plans the epochs of one run, and --stages trains several"):
        train_stages(config, PLAN)
    config.trainer.time_budget_s = None
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("a user's file")
    with pytest.raises(DataError, match="not an empty folder"):
        train_stages(staged_config(tmp_path / "mine"), PLAN)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "a user's file"
    with pytest.raises(DataError, match="not a staged training folder"):
        resume_stages(tmp_path / "mine")
