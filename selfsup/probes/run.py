"""One ssl-probe run from its options: load the frozen encoder, pool its layers, run the protocol (linear,
low-shot, kNN: :mod:`selfsup.probes.classification`; VOC07 SVMs: :mod:`selfsup.probes.voc07`) and write
each record with what every probe record says."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import torch

from selfsup.checkpoint import seed_everything
from selfsup.data.crops import CenterCrop
from selfsup.data.loading import BadFileLog
from selfsup.distributed import pick_device
from selfsup.epoch import autocast_context, resolve_precision
from selfsup.models import use_channels_last
from selfsup.models.base import check_input_size
from selfsup.outputs import check_output_file
from selfsup.probes.bn import bn_statistics
from selfsup.probes.classification import run_classification
from selfsup.probes.context import ProbeContext, probe_layers, probe_pools
from selfsup.probes.frozen import load_frozen
from selfsup.probes.linear import head_dtype
from selfsup.probes.options import ProbeOptions, check_options, check_outputs, default_out
from selfsup.probes.records import finish_record, write_record
from selfsup.probes.voc07 import run_svm


@dataclasses.dataclass
class ProbeRun:
    """The records a run wrote and where: the probe's first, then one per ``--also`` protocol."""

    written: list[tuple[dict[str, Any], Path]]

    @property
    def record(self) -> dict[str, Any]:
        """The record of the protocol asked for by ``method`` (and ``shots``)."""
        return self.written[0][0]


def run_probe(options: ProbeOptions) -> ProbeRun:
    """Checks ``options``, probes the frozen encoder by the protocol they ask for, and writes its record (and
    one per ``--also`` protocol beside it); progress and warnings go to stderr. The caller prints the tables."""
    started = time.perf_counter()
    check_options(options)
    check_outputs(options)
    device = pick_device(options.device)
    seed_everything(options.seed)
    frozen = load_frozen(options.checkpoint, arch=options.arch, width=options.width, image_size=options.image_size,
                         seed=options.seed, input_task=options.input_like, trust=options.trust_checkpoint)
    if options.out is None:
        check_output_file(default_out(options), "the default --out")
    layers = probe_layers(frozen, options.freeze)
    check_input_size(frozen.encoder, frozen.image_size, "--image-size")
    frozen.encoder.to(device).eval()
    if use_channels_last(frozen.encoder, device, training=False):
        frozen.encoder.to(memory_format=torch.channels_last)
    pools, dims, pooling = probe_pools(frozen, layers, options.pool)
    wants_global = {"global", "global-knn"} & set(options.also)
    global_pools, global_dims, global_pooling = probe_pools(frozen, layers, "global") if wants_global else ({}, {}, {})
    for pool in (*pools.values(), *global_pools.values()):
        pool.to(device)
    eval_crop = (1.0 if frozen.image_size < 96 else 0.875) if options.eval_crop is None else options.eval_crop
    context = ProbeContext(options, frozen, device, pools, CenterCrop(frozen.image_size, eval_crop), BadFileLog(),
                           {"checkpoint": bn_statistics(frozen.encoder)},
                           global_pools=global_pools, global_dims=global_dims,
                           autocast=lambda: autocast_context(options.precision, device),
                           head_dtype=head_dtype(options.head_precision, device))
    if options.method == "svm":
        record = run_svm(context)
    else:
        record = run_classification(context, dims)
    out = default_out(options)
    written = [(record, dims, pooling, options.pool, out)]
    for name, extra in context.also_records.items():
        if name.startswith("global"):
            extra_dims, extra_pooling, preset = global_dims, global_pooling, "global"
        else:
            extra_dims, extra_pooling, preset = dims, pooling, options.pool
        written.append((extra, extra_dims, extra_pooling, preset, out.with_name(f"{out.stem}.{name}{out.suffix}")))
    return ProbeRun([(entry[0], finish_probe_record(context, *entry, eval_crop=eval_crop, started=started))
                     for entry in written])


def finish_probe_record(context: ProbeContext, record: dict[str, Any], dims: dict[str, int], pooling: dict[str, str],
                        pool_preset: str, out: Path, *, eval_crop: float, started: float) -> Path:
    """Adds what every probe record says (size, BatchNorm statistics, dims and pooling per layer, command,
    commit, machine) and writes it to ``out``."""
    options, frozen = context.options, context.frozen
    record["protocol"].update(seed=options.seed, probe_image_size=frozen.image_size,
                              probe_image_size_source=frozen.image_size_source,
                              bn_stats=context.bn_record,
                              precision=resolve_precision(options.precision, context.device))
    for layer, entry in record["layers"].items():
        record["layers"][layer] = {"dims": dims[layer], "pooling": pooling[layer], **entry}
    record.update(image_size=frozen.image_size, eval_crop=eval_crop, pool_preset=pool_preset,
                  bad_files_skipped=context.bad.count)
    if options.save_features is not None:
        record["saved_features"] = str(Path(options.save_features))
    finish_record(record, started=started, device=context.device)
    return write_record(record, out)
