"""The front door: examples/minimal_rotation.py, the library used without its console scripts, runs as written."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "minimal_rotation.py"


def test_the_minimal_example_pretrains_rotation_and_probes_conv3():
    result = subprocess.run([sys.executable, str(EXAMPLE)], capture_output=True, text=True, timeout=900,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    losses = [float(value) for value in re.findall(r"step \d+: loss ([\d.]+)", result.stdout)]
    assert len(losses) == 4 and losses[-1] < losses[0]  # the pretext task is learning
    assert len(re.findall(r"^head epoch \d+/30", result.stdout, re.M)) == 30  # a line per probe epoch
    top1 = float(re.search(r"conv3 linear probe: test top-1 ([\d.]+)%", result.stdout).group(1))
    assert top1 > 30  # 10 classes: chance is 10%
