"""How much of the counting pretext task low-level colour statistics already solve, on CIFAR-10.

The counting loss asks phi(D x) = sum_j phi(T_j x) for an image x (D x: x downsampled by two; T_j x: its
four tiles) and phi(D y) far from that sum for another image y. A "colour count", the colour sums of a
view measured in pixels of the original image, is additive over tiles by construction, so it meets the
loss once a view's scale is known (a pixel of D x covers four of x). Three solvers, no deep learning:

  * oracle colour count: per-channel mean and mean of squares of each view (6 numbers), times 4 for D x;
  * blind colour count: the same without the factor 4 (what a network that cannot tell D x from a tile
    could do with colour alone);
  * detected colour count: the factor 4 where a logistic regression on 15 high-frequency statistics of
    the view says "D x" (fitted on the first half of the images, D x against one of its tiles): D x is
    sharper than a tile of the same size. (Weighting by the detector's probability instead scored lower.)

Each is scored on the same pretext inputs the task builds (its colour jitter, grayscale and random
downsampling filters, generator seed 0), on the second half of the images, with counting's own loss and
count accuracy; each solver's overall scale (which the loss's margin depends on) is fitted on the first
half. Beside them: the trained counting network of fair_tasks.py and a random one, on the same inputs.

    python experiments/fair_cifar10/counting_shortcut.py     # after fair_tasks.py --task counting; ~1 minute

Writes experiments/records/fair_cifar10_shortcuts/counting_shortcut.json and the table
experiments/results/fair_cifar10_counting_shortcut.md.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from rotation_vs_random import HERE, cifar_folder  # noqa: E402

from selfsup.checkpoint import atomic_file  # noqa: E402
from selfsup.provenance import command_line, git_commit, machine_description  # noqa: E402
from selfsup.data.folders import scan_folder  # noqa: E402
from selfsup.data.sources import stratified_subset  # noqa: E402
from selfsup.models import build_encoder  # noqa: E402
from selfsup.pretext.counting import NUM_TILES, CountingConfig, CountingTask, counting_loss  # noqa: E402
from selfsup.pretext import load_task  # noqa: E402
from selfsup.probes.records import write_record  # noqa: E402

RECORD = HERE / "records" / "fair_cifar10_shortcuts" / "counting_shortcut.json"
TABLE = HERE / "results" / "fair_cifar10_counting_shortcut.md"
CHECKPOINT = HERE.parent / "runs" / "experiments" / "fair_cifar10" / "counting" / "seed0" / "last.pt"
SCALES = np.geomspace(0.01, 100, 81)  # overall scales tried for each solver's counts


def load_images(folder: Path, count: int) -> torch.Tensor:
    source = stratified_subset(scan_folder(folder), count, seed=0)
    pixels = [np.asarray(source.load(i).convert("RGB"), dtype=np.uint8) for i in range(len(source))]
    return torch.from_numpy(np.stack(pixels)).permute(0, 3, 1, 2).float() / 255


def colour_stats(views: torch.Tensor) -> torch.Tensor:
    """Per-channel mean and mean of squares of each view: 6 numbers."""
    return torch.cat([views.mean(dim=(2, 3)), views.pow(2).mean(dim=(2, 3))], dim=1)


def sharpness(views: torch.Tensor) -> np.ndarray:
    """High-frequency statistics of each view, per channel: mean absolute and mean squared differences of
    neighbouring pixels at distance 1 and 2 (both directions), and the mean squared Laplacian: 15 numbers."""
    def diffs(step: int) -> torch.Tensor:
        dx = views[..., :, step:] - views[..., :, :-step]
        dy = views[..., step:, :] - views[..., :-step, :]
        return torch.cat([dx.abs().mean(dim=(2, 3)) + dy.abs().mean(dim=(2, 3)),
                          dx.pow(2).mean(dim=(2, 3)) + dy.pow(2).mean(dim=(2, 3))], dim=1)

    laplacian = (4 * views[..., 1:-1, 1:-1] - views[..., :-2, 1:-1] - views[..., 2:, 1:-1]
                 - views[..., 1:-1, :-2] - views[..., 1:-1, 2:])
    stats = torch.cat([diffs(1), diffs(2), laplacian.pow(2).mean(dim=(2, 3))], dim=1)
    return np.log(stats.numpy() + 1e-6)


def scored(phi: torch.Tensor, n: int, margin: float, fit: slice, test: slice) -> dict[str, float]:
    """Counting loss and accuracy of counts ``phi`` (5n views: D x, then the tiles tile-major) on the ``test``
    images, at the overall scale that minimises the loss on the ``fit`` images."""

    def metrics(scale: float, images: slice) -> dict[str, float]:
        down, tiles = phi[:n] * scale, (phi[n:] * scale).view(NUM_TILES, n, -1).sum(dim=0)
        # the contrastive image is the previous one, as in the task, within the scored images
        own_down, own_tiles = down[images], tiles[images]
        out = counting_loss(own_down, own_tiles, own_down.roll(1, dims=0), margin)
        return {"loss": float(out["loss"]), "count_acc": float(out["count_acc"])}

    best = min(SCALES, key=lambda s: metrics(float(s), fit)["loss"])
    return {**metrics(float(best), test), "scale": float(best)}


def network(task: CountingTask, views: torch.Tensor, n: int, margin: float, test: slice) -> dict[str, float]:
    with torch.no_grad():
        phi = torch.cat([task.counting_features(chunk) for chunk in views.split(1024)])
    down, tiles = phi[:n], phi[n:].view(NUM_TILES, n, -1).sum(dim=0)
    out = counting_loss(down[test], tiles[test], down[test].roll(1, dims=0), margin)
    return {"loss": float(out["loss"]), "count_acc": float(out["count_acc"])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=4000, help="CIFAR-10 test images (stratified, seed 0)")
    parser.add_argument("--scratch", default="runs/data/cifar10")
    args = parser.parse_args()
    torch.set_grad_enabled(False)

    images = load_images(cifar_folder(Path(args.scratch)) / "test", args.images)
    n = images.shape[0]
    fit, test = slice(0, n // 2), slice(n // 2, n)
    cfg = CountingConfig()
    torch.manual_seed(0)
    random_task = CountingTask(build_encoder("alexnet_small", in_channels=3), cfg).eval()
    views = random_task.make_inputs(images, torch.Generator().manual_seed(0)).images  # 5n views
    stats = colour_stats(views)
    is_down = torch.zeros(5 * n, dtype=torch.bool)
    is_down[:n] = True

    # the scale detector: D x against one tile of the same image (balanced), fitted on the first half
    tile_pick = n + torch.randint(NUM_TILES, (n,), generator=torch.Generator().manual_seed(1)) * n + torch.arange(n)
    detect_views = torch.cat([torch.arange(n), tile_pick])
    features, truth = sharpness(views[detect_views]), is_down[detect_views].numpy()
    halves = np.concatenate([np.arange(n) < n // 2] * 2)
    detector = LogisticRegression(max_iter=5000).fit(features[halves], truth[halves])
    detector_acc = float((detector.predict(features[~halves]) == truth[~halves]).mean())
    detected = torch.from_numpy(detector.predict(sharpness(views))).bool()

    solvers = {
        "oracle colour count (6 dims, x4 for D x)": stats * torch.where(is_down, 4.0, 1.0)[:, None],
        "blind colour count (6 dims, no x4)": stats,
        "detected colour count (x4 where the detector says D x)": stats * torch.where(detected, 4.0, 1.0)[:, None],
    }
    rows = {name: scored(phi, n, cfg.margin, fit, test) for name, phi in solvers.items()}
    rows["random counting network (alexnet_small, seed 0)"] = network(random_task, views, n, cfg.margin, test)
    if CHECKPOINT.is_file():
        trained = load_task(CHECKPOINT)
        rows["trained counting network (fair_cifar10, 543 steps)"] = network(trained, views, n, cfg.margin, test)
    else:
        print(f"{CHECKPOINT} not found: run fair_tasks.py --task counting first for the trained network's row")

    record = {
        "kind": "counting_shortcut",
        "data": f"CIFAR-10 test, stratified {n} images (seed 0); scales fitted on {n // 2}, scored on the other {n - n // 2}",
        "pretext_inputs": "CountingTask.make_inputs with the default options (colour jitter 0.4, grayscale 0.3, "
                          "area/bilinear/bicubic/lanczos filters), generator seed 0",
        "chance_count_acc": 0.5,
        "collapse_loss": cfg.margin,
        "scale_detector_acc": detector_acc,
        "rows": rows,
        "command": "python experiments/fair_cifar10/" + command_line(),
        "git_commit": git_commit(),
        "machine": machine_description(torch.device("cpu")),
    }
    write_record(record, RECORD)
    lines = [
        "# Counting on CIFAR-10: how far colour statistics go",
        "",
        f"Made by: `{record['command']}` at commit {record['git_commit']} (script: "
        "experiments/fair_cifar10/counting_shortcut.py, record: experiments/records/fair_cifar10_shortcuts/). "
        f"Data: {record['data']}. Pretext inputs: {record['pretext_inputs']}. Chance count accuracy 50%; a "
        f"collapsed phi has loss {cfg.margin:g}. The networks are in eval mode (BatchNorm running statistics), "
        "which raises their loss against the training batches' but not their count accuracy.",
        "",
        f"Scale detector (D x against one of its tiles, logistic regression on 15 high-frequency statistics): "
        f"{100 * detector_acc:.1f}% on held-out views (chance 50%).",
        "",
        "| solver | count accuracy | counting loss |",
        "|---|---|---|",
        *[f"| {name} | {100 * row['count_acc']:.1f}% | {row['loss']:.2f} |" for name, row in rows.items()],
        "",
    ]
    with atomic_file(TABLE, "w") as handle:
        handle.write("\n".join(lines))
    print("\n".join(lines))
    print(f"wrote {RECORD.relative_to(HERE.parent)} and {TABLE.relative_to(HERE.parent)}")


if __name__ == "__main__":
    main()
