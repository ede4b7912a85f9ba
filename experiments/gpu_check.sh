#!/usr/bin/env bash
# The GPU paths and benchmarks in one run, for a machine with a CUDA GPU (about 6 minutes on one H100/H200).
#
#   bash experiments/gpu_check.sh [OUT]        # OUT defaults to runs/gpu_check; records and tables land there
#
# It installs nothing (GPU machines are often offline): it first checks that the project and the packages it
# needs import, and names any that is missing. Then, all on CUDA in bf16:
#   1. every pretext task for 200 steps on the demo set (demo presets), and jigsaw behind the learned lens
#      (lens.enabled: its custom backward under bf16 autocast): steps/s and images/s;
#   2. ssl-bench pipeline for ResNet-50 rotation at 224 px on synthetic JPEGs (end-to-end vs step-only);
#   3. ssl-bench data for jigsaw and context, inputs made on the GPU;
#   4. one linear probe (conv1..conv5) of the rotation checkpoint;
#   5. one ssl-detect epoch with that checkpoint.
# It prints one table and writes the records under OUT (bench_*.json/.md, summaries, probe and detection
# records), to be copied into experiments/records/gpu/ and experiments/results/ with the device's name.
set -euo pipefail

OUT=${1:-runs/gpu_check}
PYTHON=${PYTHON:-python}
export HF_HUB_OFFLINE=1
mkdir -p "$OUT"

missing=()
for module in selfsup torch torchvision timm numpy sklearn faiss yaml tqdm tensorboard PIL; do
    "$PYTHON" -c "import $module" 2>/dev/null || missing+=("$module")
done
if ((${#missing[@]})); then
    echo "gpu_check: cannot import: ${missing[*]} (install the project with pip install -e . first; nothing is installed here)" >&2
    exit 2
fi
if ! "$PYTHON" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "gpu_check: torch sees no CUDA device (torch $("$PYTHON" -c 'import torch; print(torch.__version__)')): a CPU-only build, or no driver" >&2
    exit 2
fi
"$PYTHON" -c "import torch; print('gpu_check on', torch.cuda.get_device_name(0), '| torch', torch.__version__)"
started=$(date +%s)

echo "== 1. every task, 200 steps, bf16, demo presets"
for task in rotation jigsaw context counting colorization deepcluster; do
    ssl-pretrain --task "$task" --device cuda --precision bf16 --max-steps 200 --epochs 1000 \
        --out "$OUT/runs/$task" > "$OUT/pretrain_$task.log" 2>&1 \
        || { echo "gpu_check: ssl-pretrain --task $task failed; see $OUT/pretrain_$task.log" >&2; exit 1; }
done
ssl-pretrain --task jigsaw --set lens.enabled=true --device cuda --precision bf16 --max-steps 200 --epochs 1000 \
    --out "$OUT/runs/jigsaw_lens" > "$OUT/pretrain_jigsaw_lens.log" 2>&1 \
    || { echo "gpu_check: ssl-pretrain --task jigsaw with the lens failed; see $OUT/pretrain_jigsaw_lens.log" >&2; exit 1; }

echo "== 2. ssl-bench pipeline: ResNet-50 rotation, 224 px, synthetic JPEGs"
"$PYTHON" - "$OUT/jpegs" <<'EOF'
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

root = Path(sys.argv[1])
done = root.with_name(root.name + ".done")  # beside the folder: a stray file inside would be counted as ignored
if not done.is_file():
    rng = np.random.default_rng(0)
    for i in range(3000):
        folder = root / f"class{i % 10}"
        folder.mkdir(parents=True, exist_ok=True)
        base = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
        img = Image.fromarray(base).resize((320, 256), Image.BICUBIC)
        draw = ImageDraw.Draw(img)
        for _ in range(6):
            x, y = rng.integers(0, 300), rng.integers(0, 236)
            draw.ellipse((x, y, x + rng.integers(10, 80), y + rng.integers(10, 80)), fill=tuple(rng.integers(0, 256, 3).tolist()))
        img.save(folder / f"{i:05d}.jpg", quality=90)
    done.write_text("3000 synthetic JPEGs, 320x256\n")
EOF
# once with the JPEGs decoded on the GPU (no decoded cache), once from the decoded cache (the default for a set
# this small: 0.7 GB decoded)
ssl-bench pipeline --task rotation --arch resnet50 --image-size 224 --batch-size 128 --data "$OUT/jpegs" \
    --device cuda --precision bf16 --steps 60 --rounds 3 --set data.decoded_cache_gb=0 \
    --json "$OUT/bench_pipeline_gpu_jpeg.json" --table "$OUT/bench_pipeline_gpu_jpeg.md"
SELFSUP_DECODED_DIR="$OUT/decoded" ssl-bench pipeline --task rotation --arch resnet50 --image-size 224 \
    --batch-size 128 --data "$OUT/jpegs" --device cuda --precision bf16 --steps 60 --rounds 3 \
    --json "$OUT/bench_pipeline_gpu_cache.json" --table "$OUT/bench_pipeline_gpu_cache.md"

echo "== 3. ssl-bench data (inputs made on the GPU)"
ssl-bench data --device cuda --json "$OUT/bench_data_gpu.json" --table "$OUT/bench_data_gpu.md"

echo "== 4. linear probe of the rotation checkpoint"
ssl-probe --checkpoint "$OUT/runs/rotation/last.pt" --freeze all --precision bf16 --out "$OUT/probe_rotation.json" \
    > "$OUT/probe.log" 2>&1 || { echo "gpu_check: ssl-probe failed; see $OUT/probe.log" >&2; exit 1; }

echo "== 5. one ssl-detect epoch"
ssl-detect --checkpoint "$OUT/runs/rotation/last.pt" --device cuda --precision bf16 --epochs 1 \
    --out "$OUT/detect_rotation.json" > "$OUT/detect.log" 2>&1 \
    || { echo "gpu_check: ssl-detect failed; see $OUT/detect.log" >&2; exit 1; }

"$PYTHON" - "$OUT" "$(( $(date +%s) - started ))" <<'EOF'
import json
import sys
from pathlib import Path

out, seconds = Path(sys.argv[1]), int(sys.argv[2])
print("\n| check | result |\n|---|---|")
for summary in sorted((out / "runs").glob("*/summary.json")):
    s = json.loads(summary.read_text())
    lens = " + lens" if s["encoder"].get("lens") else ""
    print(f"| pretrain {s['task']['name']}{lens} ({s['encoder']['arch']}, {s['image_size']} px) | {s['steps']} steps, "
          f"{s['images_per_s']:.0f} img/s, {s['wall_time_s']:.0f} s |")
for name in ("bench_pipeline_gpu_jpeg.json", "bench_pipeline_gpu_cache.json"):
  for row in json.loads((out / name).read_text())["rows"]:
    print(f"| bench pipeline {row['task']} {row['arch']} {row['image_size']} px, {row['decoding']} | end-to-end {row['end_to_end_img_s']:.0f} "
          f"img/s ({4 * row['end_to_end_img_s']:.0f} views/s), step-only {row['step_only_img_s']:.0f}, efficiency "
          f"{row['efficiency']:.2f} |")
for row in json.loads((out / "bench_data_gpu.json").read_text())["rows"]:
    print(f"| bench data {row['task']} {row['scale']} | {row['batched_ms_per_image']:.3f} ms/img vs per-sample PIL "
          f"{row['per_sample_pil_ms_per_image']:.3f} (ratio {row['ratio']:.2f}) |")
probe = json.loads((out / "probe_rotation.json").read_text())
best = max(probe["layers"].items(), key=lambda item: item[1]["test_top1"])
print(f"| probe rotation, conv1..conv5 | best {best[0]} {best[1]['test_top1']:.1f}% test top-1, "
      f"{probe['wall_time_s']:.0f} s |")
detect = json.loads((out / "detect_rotation.json").read_text())
for layer, scores in detect["layers"].items():
    print(f"| ssl-detect, 1 epoch ({layer} backbone) | test mAP {scores['test_mAP']:.1f}, {detect['wall_time_s']:.0f} s |")
print(f"| total | {seconds} s |")
EOF
