"""new_task and load_task: a task from its name and options, and back from the checkpoint it wrote."""

import ast
import dataclasses
from pathlib import Path

import pytest
import torch

from selfsup.errors import CheckpointError, DataError
from selfsup.models import build_encoder
from selfsup.pretext import TASKS, load_task, new_task


def write_checkpoint(path: Path, task_name: str, options: dict, *, num_classes: int | None = None,
                     in_channels: int = 3) -> tuple[Path, torch.nn.Module]:
    """An ssl-pretrain checkpoint (the entries load_task reads) of an untrained ``task_name``."""
    torch.manual_seed(0)
    task = new_task(task_name, build_encoder("alexnet_small", in_channels=in_channels, width=0.25), options,
                    num_classes=num_classes)
    state = {"encoder": {"arch": "alexnet_small", "in_channels": in_channels, "width": 0.25},
             "task": {"name": task_name, "options": dataclasses.asdict(task.cfg), "num_classes": num_classes},
             "model": task.state_dict(), "image_size": 32, "data": {}}
    torch.save(state, path)
    return path, task


def test_new_task_takes_the_options_given_and_the_defaults_of_the_rest():
    task = new_task("rotation", build_encoder("alexnet_small", width=0.25), {"head_hidden": 16})
    assert isinstance(task, TASKS["rotation"]) and task.cfg.head_hidden == 16
    assert task.cfg.head_pool == TASKS["rotation"].Config().head_pool


def test_new_task_refuses_a_labelled_task_without_classes():
    with pytest.raises(DataError, match="task supervised needs labelled data"):
        new_task("supervised", build_encoder("alexnet_small", width=0.25), {})


@pytest.mark.parametrize("task_name, options, num_classes, in_channels", [
    ("rotation", {"head_hidden": 16}, None, 3), ("colorization", {}, None, 1), ("supervised", {}, 5, 3)])
def test_load_task_round_trips_a_checkpoint_weights_and_all(tmp_path, task_name, options, num_classes, in_channels):
    path, written = write_checkpoint(tmp_path / "last.pt", task_name, options, num_classes=num_classes,
                                     in_channels=in_channels)
    loaded = load_task(path)
    assert type(loaded) is type(written) and loaded.cfg == written.cfg and not loaded.training
    assert loaded.state_dict().keys() == written.state_dict().keys()
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in written.state_dict().items())
    images = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded.encoder(loaded.eval_input(images)),
                                   written.eval().encoder(written.eval_input(images)), atol=0, rtol=0)


def test_load_task_reads_a_state_already_loaded_instead_of_the_file(tmp_path):
    path, written = write_checkpoint(tmp_path / "last.pt", "rotation", {})
    state = torch.load(path, weights_only=True)
    path.unlink()  # only the state is there to read
    loaded = load_task(path, state=state)
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in written.state_dict().items())


@pytest.mark.parametrize("damage, expected", [
    (lambda state: state.pop("model"), "is not an ssl-pretrain checkpoint: it has no model entry"),
    (lambda state: state["task"].update(name="nope"), "task.name 'nope'"),
    (lambda state: state["encoder"].update(in_channels=1), "encoder.in_channels 1"),
    (lambda state: state["model"].pop("head.5.bias"), "checkpoint"),
])
def test_a_wrong_checkpoint_is_a_one_line_checkpoint_error_naming_the_file(tmp_path, damage, expected):
    path, _ = write_checkpoint(tmp_path / "last.pt", "rotation", {})
    state = torch.load(path, weights_only=True)
    damage(state)
    torch.save(state, path)
    with pytest.raises(CheckpointError) as info:
        load_task(path)
    message = str(info.value)
    assert "\n" not in message and str(path) in message and expected in message


def test_a_file_that_is_no_checkpoint_is_a_one_line_checkpoint_error(tmp_path):
    path = tmp_path / "notes.pt"
    path.write_text("not a checkpoint")
    with pytest.raises(CheckpointError) as info:
        load_task(path)
    assert "\n" not in str(info.value) and str(path) in str(info.value)


def test_evaluation_and_transfer_import_no_task_module():
    """Probes, transfer, reports, console scripts and the training loop ask a task what PretextTask declares
    (selfsup.pretext and selfsup.pretext.base); only pretext/, diagnose/ (per-task solvers by design) and
    bench (per-task data pipelines) import a task's own module."""
    package = Path(__file__).resolve().parents[1] / "selfsup"
    task_modules = {cls.__module__ for cls in TASKS.values()}
    found = []
    for path in package.rglob("*.py"):
        relative = path.relative_to(package).as_posix()
        if relative.startswith(("pretext/", "diagnose/", "bench/")):
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and node.module in task_modules:
                found.append(f"selfsup/{relative} imports {node.module}")
    assert not found, "\n".join(found)


@pytest.mark.parametrize("name", sorted(TASKS))
def test_a_task_that_maps_its_input_declares_the_mapping(name):
    """Transfer folds what input_mapping declares into an RGB conv: a task that changes encoder_input must say
    how (the default declaration, plain RGB, would then be wrong)."""
    from selfsup.pretext.base import PretextTask
    task_cls = TASKS[name]
    if task_cls.encoder_input is not PretextTask.encoder_input:
        declared = task_cls.input_mapping.__func__  # a classmethod: compare the functions, not the bound methods
        assert declared is not PretextTask.input_mapping.__func__, f"{name} maps its input without declaring it"
