"""DeepCluster's clustering step: k-means time with faiss vs scikit-learn, and its share of an epoch.

    python experiments/bench_clustering.py                         # 50k x 256 features, k = 1000
    python experiments/bench_clustering.py --record experiments/records/bench_clustering.json
    python experiments/bench_clustering.py --summary RUN/summary.json   # + share of a DeepCluster epoch
    python experiments/bench_clustering.py --summary experiments/records/cifar10_tasks/pretrain_deepcluster.json \
        --record experiments/records/bench_clustering.json --markdown experiments/results/bench_clustering.md

Part 1 clusters synthetic features shaped like DeepCluster's (PCA-whitened, L2-normalised, drawn
around k centres so that k-means has structure to find) with both back-ends at the same iterations,
and prints time and objective. Part 2 reads the per-epoch timings that a DeepCluster run logs
(feature extraction, PCA + k-means, the whole epoch) from its summary.json and prints what fraction
of each epoch the clustering step took.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch

from selfsup.provenance import command_line, git_commit, machine_description
from selfsup.clustering import faiss_available, kmeans, l2_normalize, nmi, pca_whiten


def synthetic_features(n: int, dim: int, k: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((k, dim)).astype(np.float32)
    x = centres[rng.integers(k, size=n)] + 0.8 * rng.standard_normal((n, dim)).astype(np.float32)
    return l2_normalize(pca_whiten(x, dim))


def bench_kmeans(n: int, dim: int, k: int, niter: int, seed: int) -> list[dict]:
    x = synthetic_features(n, dim, k, seed)
    rows, assignments = [], {}
    for backend in (["faiss"] if faiss_available() else []) + ["sklearn"]:
        started = time.perf_counter()
        result = kmeans(x, k, seed=seed, niter=niter, backend=backend)
        seconds = time.perf_counter() - started
        assignments[backend] = result.assignment
        rows.append({"backend": result.backend, "n": n, "dim": dim, "k": k, "iterations": niter,
                     "seconds": round(seconds, 2), "objective": round(result.objective, 1),
                     "empty_clusters_repaired": result.empty_clusters})
    if len(assignments) == 2:
        agreement = nmi(assignments["faiss"], assignments["sklearn"])
        for row in rows:
            row["nmi_between_backends"] = round(agreement, 3)
    return rows


def epoch_shares(summary_path: Path) -> list[dict]:
    summary = json.loads(summary_path.read_text())
    rows, previous = [], 0.0  # epochs that clustered, with the share of their time spent on it
    for entry in summary["history"]:
        epoch_s = entry["elapsed_s"] - previous
        previous = entry["elapsed_s"]
        if "extract_s" not in entry:  # an epoch that reused the previous assignment
            continue
        clustering = entry["extract_s"] + entry["cluster_s"]
        rows.append({"epoch": entry["epoch"], "epoch_s": round(epoch_s, 1), "extract_s": entry.get("extract_s"),
                     "kmeans_s": entry["cluster_s"], "clustering_share": round(clustering / max(epoch_s, 1e-9), 3),
                     "nmi_labels": entry.get("nmi_labels")})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=50_000)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--k", type=int, default=1000)
    parser.add_argument("--iterations", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--summary", type=Path, help="summary.json of a DeepCluster run (part 2)")
    parser.add_argument("--record", type=Path, help="write the results as JSON here")
    parser.add_argument("--markdown", type=Path, help="write the results as a markdown table here")
    args = parser.parse_args()

    machine = f"{platform.platform()}, {torch.get_num_threads()} threads"
    print(f"k-means on {args.n} x {args.dim} features, k = {args.k}, {args.iterations} iterations ({machine})")
    kmeans_rows = bench_kmeans(args.n, args.dim, args.k, args.iterations, args.seed)
    print(f"{'backend':<12}{'seconds':>10}{'objective':>14}{'empty fixed':>13}")
    for row in kmeans_rows:
        print(f"{row['backend']:<12}{row['seconds']:>10.2f}{row['objective']:>14.1f}{row['empty_clusters_repaired']:>13}")
    if len(kmeans_rows) == 2:
        print(f"faiss / scikit-learn time: {kmeans_rows[0]['seconds'] / kmeans_rows[1]['seconds']:.3f}; "
              f"NMI between their assignments {kmeans_rows[0]['nmi_between_backends']}")
    shares = epoch_shares(args.summary) if args.summary else []
    if shares:
        print(f"\nclustering step per epoch of {args.summary}")
        print(f"{'epoch':>5}{'epoch s':>10}{'extract s':>11}{'k-means s':>11}{'share':>8}{'NMI labels':>12}")
        for row in shares:
            print(f"{row['epoch']:>5}{row['epoch_s']:>10.1f}{row['extract_s']:>11.2f}{row['kmeans_s']:>11.2f}"
                  f"{row['clustering_share']:>8.1%}{row['nmi_labels'] or float('nan'):>12.3f}")
    record = {"kmeans": kmeans_rows, "epochs": shares, "machine": machine_description(torch.device("cpu")),
              "summary": str(args.summary) if args.summary else None, "command": command_line(),
              "git_commit": git_commit()}
    if args.record:
        args.record.parent.mkdir(parents=True, exist_ok=True)
        args.record.write_text(json.dumps(record, indent=2))
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(markdown(record))


def markdown(record: dict) -> str:
    machine = record["machine"]
    lines = ["# DeepCluster's clustering step: faiss vs scikit-learn, and its share of an epoch", "",
             f"Made by `{record['command']}` at commit `{record['git_commit']}` on {machine['platform']}, "
             f"{machine['cpu_count']} CPU cores, {machine['torch_threads']} torch threads; do not edit by hand.", "",
             "| back-end | features | k | iterations | seconds | objective | empty clusters repaired | NMI between back-ends |",
             "|---|---|---|---|---|---|---|---|"]
    for row in record["kmeans"]:
        lines.append(f"| {row['backend']} | {row['n']:,} x {row['dim']} | {row['k']} | {row['iterations']} | "
                     f"{row['seconds']:.2f} | {row['objective']:.1f} | {row['empty_clusters_repaired']} | "
                     f"{row.get('nmi_between_backends', '')} |")
    if record["epochs"]:
        lines += ["", f"Clustering step per epoch of the DeepCluster run summarised in `{record['summary']}`:", "",
                  "| epoch | epoch s | feature pass s | PCA + k-means s | clustering share of the epoch | NMI with labels |",
                  "|---|---|---|---|---|---|"]
        for row in record["epochs"]:
            nmi_text = "" if row["nmi_labels"] is None else f"{row['nmi_labels']:.3f}"
            lines.append(f"| {row['epoch']} | {row['epoch_s']:.1f} | {row['extract_s']:.2f} | {row['kmeans_s']:.2f} | "
                         f"{100 * row['clustering_share']:.1f}% | {nmi_text} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
