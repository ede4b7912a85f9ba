"""The library without its console scripts: rotation pretraining for a few steps on the demo set, then a linear
probe of conv3 (frozen features, a BatchNorm + linear head). About a minute on a laptop CPU:

    python examples/minimal_rotation.py
"""

import torch

from selfsup.data.sources import open_splits
from selfsup.data.crops import CenterCrop, RandomCrop
from selfsup.data.loading import EpochBatchSampler, eval_loader, train_loader
from selfsup.models import build_encoder
from selfsup.pretext import new_task
from selfsup.probes.linear import (PROTOCOLS, LinearHeads, cached_batches, evaluate, extract_features,
                                   fix_batchnorm_statistics, train_heads)
from selfsup.probes.pooling import build_pool

torch.manual_seed(0)
splits = open_splits("demo")  # generated once (about a minute), then read from the cache
task = new_task("rotation", build_encoder("alexnet_small", width=0.5), {})
optimizer = torch.optim.SGD(task.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
sampler = EpochBatchSampler(len(splits.pretrain), 64, seed=0)
for step, batch in zip(range(40), train_loader(splits.pretrain, RandomCrop(32), sampler, workers=0, pin_memory=False)):
    out = task(batch.images.float() / 255, batch.labels, torch.Generator().manual_seed(step))
    optimizer.zero_grad()
    out["loss"].backward()
    optimizer.step()
    if step % 10 == 0:
        print(f"step {step}: loss {out['loss'].item():.3f}, rotation accuracy {out['acc'].item():.2f}")

task.eval()
pool, dims, _ = build_pool("auto", "conv3", task.encoder.feature_shapes(32)["conv3"])
features = {name: extract_features(task.encoder, task.eval_input, {"conv3": pool},
                                   eval_loader(source, CenterCrop(32), batch_size=256, workers=0),
                                   torch.device("cpu"), name, on_bad=lambda messages: None)
            for name, source in (("train", splits.train), ("val", splits.val), ("test", splits.test))}
heads = LinearHeads({"conv3": pool}, {"conv3": dims}, num_classes=len(splits.train.classes))
fix_batchnorm_statistics(heads, features["train"].features)
protocol = PROTOCOLS["common"]
best, _ = train_heads(heads, cached_batches(features["train"].features, features["train"].labels, 192,
                                            torch.device("cpu"), shuffle_seed=0),
                      cached_batches(features["val"].features, features["val"].labels, 256, torch.device("cpu")),
                      protocol, len(features["train"].labels) // 192, progress=print, fixed_batchnorm=True)
heads.heads["conv3"].load_state_dict(best["conv3"]["state"])
test = evaluate(heads, cached_batches(features["test"].features, features["test"].labels, 256, torch.device("cpu"))())
print(f"conv3 linear probe: test top-1 {test['conv3']['top1']:.1f}% (val-selected epoch {best['conv3']['epoch']})")
