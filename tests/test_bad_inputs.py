"""Bad input to every console script: one ``error:`` line naming the file, option or value, exit status 2,
never a traceback; and a checkpoint whose pickle would run code runs nothing in any command."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from selfsup.checkpoint import atomic_save, load_checkpoint
from selfsup.cli.detect import main as detect_main
from selfsup.cli.export import main as export_main
from selfsup.cli.finetune import main as finetune_main
from selfsup.cli.inspect import main as inspect_main
from selfsup.cli.pretrain import main as pretrain_main
from selfsup.cli.probe import main as probe_main
from selfsup.cli.report import main as report_main
from selfsup.errors import CheckpointError
from test_detection import write_tiny_voc

COMMANDS = {
    "ssl-pretrain": pretrain_main, "ssl-probe": probe_main, "ssl-finetune": finetune_main, "ssl-detect": detect_main,
    "ssl-export": export_main, "ssl-inspect": inspect_main, "ssl-report": report_main,
}
TINY = ["--epochs", "1", "--batch-size", "8", "--workers", "0", "--image-size", "16", "--width", "0.25",
        "--device", "cpu"]
# A path no one can create, root included (CI runs as root, for whom permission bits do not count).
UNWRITABLE = "/proc/selfsup-no-such-dir/out"


class RunsCode:
    """Unpickling this creates the marker file: it stands for any code a malicious pickle runs."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.fixture(scope="module")
def files(tiny_folder, tmp_path_factory) -> dict[str, Path]:
    """Every kind of bad file the corpus feeds, made once."""
    root = tmp_path_factory.mktemp("bad")
    good = root / "good"
    assert pretrain_main(["--data", str(tiny_folder), *TINY, "--out", str(good)]) == 0
    state = load_checkpoint(good / "last.pt")
    made = {"good": good / "last.pt", "marker": root / "marker"}

    made["evil"] = root / "evil" / "last.pt"
    made["evil"].parent.mkdir()
    torch.save({**state, "payload": RunsCode(made["marker"])}, made["evil"])

    made["truncated"] = root / "truncated.pt"
    made["truncated"].write_bytes(made["good"].read_bytes()[:4096])
    made["text"] = root / "notes.pt"
    made["text"].write_text("these are my notes, not a checkpoint\n")

    nan_state = {**state, "model": dict(state["model"])}
    nan_state["model"]["encoder.conv1.0.weight"] = torch.full_like(nan_state["model"]["encoder.conv1.0.weight"], float("nan"))
    made["nan"] = root / "nan.pt"
    atomic_save(nan_state, made["nan"])

    made["no_record"] = root / "no_record.pt"
    atomic_save({"model": state["model"]}, made["no_record"])

    # declares a ResNet but holds the AlexNet's weights
    made["wrong_arch"] = root / "wrong_arch.pt"
    atomic_save({**state, "encoder": {**state["encoder"], "arch": "resnet18_small"}}, made["wrong_arch"])

    made["unknown_task"] = root / "unknown_task.pt"
    atomic_save({**state, "task": {**state["task"], "name": "telepathy"}}, made["unknown_task"])

    made["empty_dir"] = root / "empty"
    made["empty_dir"].mkdir()
    unreadable = root / "unreadable" / "pictures"
    unreadable.mkdir(parents=True)
    for i in range(12):
        (unreadable / f"{i}.png").write_bytes(b"not a png at all")
    made["unreadable"] = unreadable.parent

    mixed = root / "mixed"
    (mixed / "sub").mkdir(parents=True)
    for i in range(3):
        Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(mixed / f"{i}.png")
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(mixed / "sub" / "x.png")
    made["mixed"] = mixed

    made["a_file"] = root / "a_file.txt"
    made["a_file"].write_text("x")
    made["bad_yaml"] = root / "bad.yaml"
    made["bad_yaml"].write_text("optim: {lr: [unclosed\n")

    voc = write_tiny_voc(root / "voc")
    made["voc"] = voc
    inverted = write_tiny_voc(root / "voc_inverted")
    annotation = inverted / "Annotations" / "000001.xml"
    text = annotation.read_text()
    annotation.write_text(text.replace("<xmin>", "<xmin>9", 1))  # xmin 9x > xmax
    made["voc_inverted"] = inverted

    records = root / "records"
    records.mkdir()
    (records / "truncated.json").write_text('{"kind": "probe", "layers": {')
    (records / "latin1.json").write_bytes(b'{"kind": "probe", "method": "caf\xe9"}')
    made["records"] = records
    return made


# (command, arguments, text the error line must contain); {name} is replaced by the path of files[name],
# {tmp} by the test's own folder, {out} by a fresh output folder in it.
NO_CUDA = not torch.cuda.is_available()
CORPUS = [
    # ssl-pretrain
    ("ssl-pretrain", ["--data", "{tiny}", *TINY, "--lr", "nan", "--out", "{out}"], "optim.lr"),
    ("ssl-pretrain", ["--data", "{tiny}", *TINY, "--set", "optim.momentum=.inf", "--out", "{out}"], "optim.momentum"),
    ("ssl-pretrain", ["--data", "{tiny}", *TINY, "--epochs", "0", "--out", "{out}"], "train.epochs"),
    ("ssl-pretrain", ["--data", "{tiny}", *TINY, "--task", "telepathy", "--out", "{out}"], "telepathy"),
    ("ssl-pretrain", ["--data", "{tiny}", *TINY, "--arch", "vgg99", "--out", "{out}"], "vgg99"),
    ("ssl-pretrain", ["--data", "{tmp}/nowhere", *TINY, "--out", "{out}"], "nowhere"),
    ("ssl-pretrain", ["--data", "{empty_dir}", *TINY, "--out", "{out}"], "no images"),
    ("ssl-pretrain", ["--data", "{unreadable}", *TINY, "--out", "{out}"], "readable"),
    ("ssl-pretrain", ["--data", "{mixed}", *TINY, "--out", "{out}"], "--data-layout"),
    ("ssl-pretrain", ["--data", "{tiny}", *TINY, "--data-layout", "spiral", "--out", "{out}"], "spiral"),
    ("ssl-pretrain", ["--data", "{tiny}", *TINY, "--out", "{a_file}"], "a_file.txt"),
    ("ssl-pretrain", ["--data", "{tiny}", *TINY, "--out", UNWRITABLE], UNWRITABLE),
    ("ssl-pretrain", ["--data", "{tiny}", *TINY, "--out", "{tmp}/{{nope}}"], "train.out"),
    ("ssl-pretrain", ["--data", "{tiny}", *TINY, "--batch-size", "999", "--out", "{out}"], "train.batch_size"),
    ("ssl-pretrain", ["--data", "{tiny}", *TINY, "--image-size", "4", "--out", "{out}"], "data.image_size"),
    ("ssl-pretrain", ["--data", "{tiny}", *TINY, "--config", "{tmp}/missing.yaml"], "missing.yaml"),
    ("ssl-pretrain", ["--data", "{tiny}", *TINY, "--config", "{bad_yaml}"], "bad.yaml"),
    ("ssl-pretrain", ["--data", "{tiny}", *TINY, "--set", "optim.lr"], "optim.lr"),
    ("ssl-pretrain", ["--data", "{tiny}", *TINY, "--set", "optim.learning_rate=0.1"], "learning_rate"),
    ("ssl-pretrain", ["--data", "{tiny}", *TINY, "--out", "{good_run}", "--resume", "--task", "counting"], "cannot change"),
    ("ssl-pretrain", ["--data", "{tiny}", *TINY, "--out", "{evil_run}", "--resume"], "refused"),
    ("ssl-pretrain", ["--data", "{tiny}", *TINY, "--no-such-flag"], "--no-such-flag"),
    # ssl-probe
    ("ssl-probe", ["--checkpoint", "{tmp}/missing.pt"], "missing.pt"),
    ("ssl-probe", ["--checkpoint", "{truncated}"], "truncated.pt"),
    ("ssl-probe", ["--checkpoint", "{text}"], "notes.pt"),
    ("ssl-probe", ["--checkpoint", "{nan}"], "non-finite"),
    ("ssl-probe", ["--checkpoint", "{no_record}"], "no_record.pt"),
    ("ssl-probe", ["--checkpoint", "{unknown_task}"], "telepathy"),
    ("ssl-probe", ["--checkpoint", "{good}", "--data", "{tiny}", "--freeze", "conv9"], "conv9"),
    ("ssl-probe", ["--checkpoint", "{good}", "--data", "{tiny}", "--epochs", "0"], "--epochs"),
    ("ssl-probe", ["--checkpoint", "{good}", "--data", "{tiny}", "--lr", "nan"], "nan"),
    ("ssl-probe", ["--checkpoint", "{good}", "--data", "{tiny}", "--out", "{tmp}"], "{tmp}"),
    ("ssl-probe", ["--checkpoint", "{good}", "--data", "{tmp}/nowhere"], "nowhere"),
    # ssl-finetune
    ("ssl-finetune", ["--checkpoint", "{good}", "--data", "{tiny}", "--epochs", "0"], "--epochs"),
    ("ssl-finetune", ["--checkpoint", "{good}", "--data", "{tiny}", "--lr", "inf"], "inf"),
    ("ssl-finetune", ["--checkpoint", "{good}", "--data", "{tiny}", "--batch-size", "1"], "--batch-size"),
    ("ssl-finetune", ["--checkpoint", "{good}", "--data", "{tiny}", "--out", "{tmp}"], "{tmp}"),
    ("ssl-finetune", ["--checkpoint", "{wrong_arch}", "--data", "{tiny}"], "wrong_arch.pt"),
    # ssl-detect
    ("ssl-detect", ["--checkpoint", "{good}", "--data", "{tmp}/nowhere"], "nowhere"),
    ("ssl-detect", ["--checkpoint", "{good}", "--data", "{voc_inverted}", "--workers", "0"], "000001.xml"),
    ("ssl-detect", ["--checkpoint", "{wrong_arch}", "--data", "{voc}", "--workers", "0"], "wrong_arch.pt"),
    ("ssl-detect", ["--checkpoint", "{good}", "--data", "{voc}", "--lr", "nan"], "nan"),
    ("ssl-detect", ["--checkpoint", "{good}", "--data", "{voc}", "--epochs", "0"], "--epochs"),
    # ssl-export
    ("ssl-export", ["--checkpoint", "{good}", "--format", "torchvision", "--out", "{tmp}/x.pt"], "--format"),
    ("ssl-export", ["--checkpoint", "{wrong_arch}", "--format", "selfsup", "--out", "{tmp}/x.pt"], "wrong_arch.pt"),
    ("ssl-export", ["--checkpoint", "{good}", "--format", "selfsup", "--out", "{tmp}"], "{tmp}"),
    ("ssl-export", ["--checkpoint", "{text}", "--format", "selfsup", "--out", "{tmp}/x.pt"], "notes.pt"),
    # ssl-inspect
    ("ssl-inspect", ["--checkpoint", "{good}", "--data", "{tiny}", "--task", "jigsaw"], "jigsaw"),
    ("ssl-inspect", ["--checkpoint", "{truncated}", "--data", "{tiny}"], "truncated.pt"),
    ("ssl-inspect", ["--data", "{tiny}", "--out", UNWRITABLE + ".png"], UNWRITABLE),
    ("ssl-inspect", ["--data", "{tiny}", "--count", "0"], "--count"),
    # ssl-report
    ("ssl-report", ["{tmp}/no-records-here"], "no-records-here"),
    ("ssl-report", ["{records}"], "records"),
    ("ssl-report", ["{records}", "--out", "{tmp}"], "{tmp}"),
]
if NO_CUDA:
    CORPUS.append(("ssl-probe", ["--checkpoint", "{good}", "--data", "{tiny}", "--device", "cuda"], "cuda"))
    CORPUS.append(("ssl-pretrain", ["--data", "{tiny}", *TINY[:-2], "--device", "cuda", "--out", "{out}"], "cuda"))


def filled(texts: list[str], paths: dict[str, str]) -> list[str]:
    return [text.format(**paths) for text in texts]


def error_line(capsys: pytest.CaptureFixture) -> str:
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err, captured.err
    lines = [line for line in captured.err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, captured.err[-3000:]
    return lines[0]


@pytest.fixture
def paths(files, tiny_folder, tmp_path) -> dict[str, str]:
    return {**{name: str(path) for name, path in files.items()}, "tiny": str(tiny_folder), "tmp": str(tmp_path),
            "out": str(tmp_path / "out"), "good_run": str(files["good"].parent), "evil_run": str(files["evil"].parent)}


def test_the_corpus_covers_every_command_with_forty_inputs():
    assert len(CORPUS) >= 40 and {command for command, _, _ in CORPUS} == set(COMMANDS)


@pytest.mark.parametrize("command,args,named", CORPUS, ids=[f"{c}-{i}" for i, (c, _, _) in enumerate(CORPUS)])
def test_bad_input_is_one_line_with_exit_status_2(command, args, named, paths, capsys):
    args = filled(args, paths)
    assert COMMANDS[command](args) == 2, (command, args)
    line = error_line(capsys)
    assert named.format(**paths) in line, (command, args, line)
    assert not Path(paths["marker"]).exists()


@pytest.mark.parametrize("command", ["ssl-probe", "ssl-finetune", "ssl-detect", "ssl-export", "ssl-inspect",
                                     "ssl-pretrain"])
def test_a_checkpoint_that_would_run_code_runs_nothing_in_any_command(command, paths, capsys):
    args = {
        "ssl-probe": ["--checkpoint", "{evil}", "--data", "{tiny}"],
        "ssl-finetune": ["--checkpoint", "{evil}", "--data", "{tiny}"],
        "ssl-detect": ["--checkpoint", "{evil}", "--data", "{voc}"],
        "ssl-export": ["--checkpoint", "{evil}", "--format", "selfsup", "--out", "{tmp}/x.pt"],
        "ssl-inspect": ["--checkpoint", "{evil}", "--data", "{tiny}"],
        "ssl-pretrain": ["--data", "{tiny}", *TINY, "--out", "{evil_run}", "--resume"],
    }[command]
    assert COMMANDS[command](filled(args, paths)) == 2
    line = error_line(capsys)
    assert "refused" in line and paths["evil"] in line and "--trust-checkpoint" in line, line
    assert not Path(paths["marker"]).exists()


def test_debug_shows_the_traceback_of_a_user_error(paths):
    with pytest.raises(CheckpointError, match="refused"):
        probe_main(["--checkpoint", paths["evil"], "--debug"])
    assert not Path(paths["marker"]).exists()


def test_report_names_unreadable_records_and_builds_from_the_rest(paths, tmp_path, capsys):
    records = tmp_path / "records"
    records.mkdir()
    assert probe_main(["--checkpoint", paths["good"], "--data", paths["tiny"], "--freeze", "conv5", "--epochs", "1",
                       "--batch-size", "12",
                       "--out", str(records / "probe.json")]) == 0
    for bad in Path(paths["records"]).iterdir():
        (records / bad.name).write_bytes(bad.read_bytes())
    capsys.readouterr()
    assert report_main([str(records)]) == 0
    captured = capsys.readouterr()
    assert "truncated.json" in captured.err and "latin1.json" in captured.err
    assert "conv5" in captured.out
