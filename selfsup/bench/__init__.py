"""ssl-bench's library side: speed measures of the training pipeline, each the ratio of two sides timed
interleaved in one process, so that a busy or throttled machine slows both alike.

- :mod:`selfsup.bench.pipeline`: end-to-end steps against step-only steps (``measure_pipeline``), per torch
  thread count (``measure_threads``), and a task's epoch preparation against its steps (``measure_epoch_share``).
- :mod:`selfsup.bench.data_side`: jigsaw's and context's batched input-making against a per-sample PIL
  reference written as the original repositories made inputs (``measure_data_side``).
- :mod:`selfsup.bench.probe_heads`: the probe's head step against the memory traffic no head step can skip
  (``measure_head_steps``).
"""
