"""The linear probe's heads on cached features: BatchNorm statistics computed once over the train features,
kept fixed while the heads train, and one progress line per epoch."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from selfsup.probes.linear import (
    LinearHeads, ProbeProtocol, cached_batches, feature_statistics, fix_batchnorm_statistics, train_heads,
)


@pytest.mark.parametrize("offset", [3.0, 300.0])  # 300: a mean large against the spread (no cancellation)
def test_feature_statistics_are_the_mean_and_population_variance_of_the_cache(offset):
    torch.manual_seed(0)
    features = (torch.randn(1000, 7) * torch.arange(1, 8) + offset).to(torch.bfloat16)
    mean, var = feature_statistics(features, chunk=64)
    exact = features.double()
    torch.testing.assert_close(mean, exact.mean(dim=0).float())
    torch.testing.assert_close(var, exact.var(dim=0, unbiased=False).float())


def test_fixed_batchnorm_heads_keep_the_train_statistics_and_standardise_with_them():
    torch.manual_seed(0)
    features = {"conv1": torch.randn(96, 5) * 4 + 2, "conv2": torch.randn(96, 3) - 1}
    labels = torch.arange(96) % 3
    heads = LinearHeads({"conv1": nn.Identity(), "conv2": nn.Identity()}, {"conv1": 5, "conv2": 3}, 3)
    statistics = {layer: feature_statistics(f) for layer, f in features.items()}
    fix_batchnorm_statistics(heads, features)
    protocol = ProbeProtocol("test", epochs=3, batch_size=16, lr=0.1, milestones=(2,), gamma=0.1, nesterov=False)
    lines = []
    best, history = train_heads(heads, cached_batches(features, labels, 16, torch.device("cpu"), shuffle_seed=0),
                                cached_batches(features, labels, 32, torch.device("cpu")), protocol, 6,
                                progress=lines.append, fixed_batchnorm=True)
    for layer, (mean, var) in statistics.items():  # not moved by the 18 training steps
        norm = heads.heads[layer][0]
        assert torch.equal(norm.running_mean, mean) and torch.equal(norm.running_var, var)
        norm.eval()
        standardised = (features[layer] - mean) / torch.sqrt(var + norm.eps)
        torch.testing.assert_close(norm(features[layer]), standardised)
    assert len(history) == 3 and all(1 <= best[layer]["epoch"] <= 3 for layer in best)
    assert [line.split()[2] for line in lines] == ["1/3:", "2/3:", "3/3:"]
    assert all("selection top-1 conv1" in line and "conv2" in line for line in lines)


def test_folded_batchnorm_heads_train_to_the_weights_of_batchnorm_then_linear():
    torch.manual_seed(0)
    features = {"conv1": torch.randn(96, 6) * 5 + 20, "conv2": torch.randn(96, 4) * 0.1 - 3}
    labels = torch.arange(96) % 3
    heads = LinearHeads({"conv1": nn.Identity(), "conv2": nn.Identity()}, {"conv1": 6, "conv2": 4}, 3)
    fix_batchnorm_statistics(heads, features)
    plain = copy.deepcopy(dict(heads.heads))
    protocol = ProbeProtocol("test", epochs=2, batch_size=16, lr=0.1, milestones=(1,), gamma=0.1, nesterov=True)
    train_heads(heads, cached_batches(features, labels, 16, torch.device("cpu"), shuffle_seed=0),
                cached_batches(features, labels, 32, torch.device("cpu")), protocol, 6, fixed_batchnorm=True)
    # the reference: each head as BatchNorm (eval) then Linear, the same optimiser and batches
    params = [p for head in plain.values() for p in head.parameters()]
    optimizer = torch.optim.SGD(params, lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, [6], gamma=0.1)
    for head in plain.values():
        head.eval()
    batches = cached_batches(features, labels, 16, torch.device("cpu"), shuffle_seed=0)
    for epoch in range(2):
        for pooled, target in batches(epoch):
            loss = sum(torch.nn.functional.cross_entropy(plain[layer](x), target) for layer, x in pooled.items())
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
    with torch.no_grad():
        logits = heads.eval()(features)
        for layer, head in plain.items():
            torch.testing.assert_close(heads.heads[layer][1].weight, head[1].weight, rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(heads.heads[layer][1].bias, head[1].bias, rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(logits[layer], head(features[layer]), rtol=1e-4, atol=1e-4)


def test_bf16_heads_compute_in_bf16_and_keep_fp32_parameters_gradients_and_logits():
    """--head-precision bf16: the products see the cached bfloat16 features and the weights rounded to
    bfloat16; parameters, their gradients and the logits stay float32, within bfloat16 rounding of fp32 heads."""
    torch.manual_seed(0)
    features = {"conv1": (torch.randn(64, 40) * 3 + 1).to(torch.bfloat16)}
    labels = torch.arange(64) % 4
    fp32 = LinearHeads({"conv1": nn.Identity()}, {"conv1": 40}, 4)
    fix_batchnorm_statistics(fp32, features)
    bf16 = copy.deepcopy(fp32)
    bf16.dtype = torch.bfloat16
    for heads in (fp32, bf16):
        heads.eval()
    logits = {}
    for name, heads in (("fp32", fp32), ("bf16", bf16)):
        out = heads(features)["conv1"]
        torch.nn.functional.cross_entropy(out, labels).backward()
        assert out.dtype == torch.float32
        assert all(p.dtype == torch.float32 and p.grad.dtype == torch.float32 for p in heads.parameters())
        logits[name] = out.detach()
    torch.testing.assert_close(logits["bf16"], logits["fp32"], rtol=0.02, atol=0.05)
    assert not torch.equal(logits["bf16"], logits["fp32"])  # the bf16 products did run
    weight_grads = [heads.heads["conv1"][1].weight.grad for heads in (fp32, bf16)]
    torch.testing.assert_close(weight_grads[1], weight_grads[0], rtol=0.02, atol=2e-3)


def test_head_precision_auto_is_bf16_only_where_the_hardware_multiplies_bf16(monkeypatch):
    from selfsup.probes.linear import head_dtype

    cpu = torch.device("cpu")
    assert head_dtype("fp32", cpu) == torch.float32 and head_dtype("bf16", cpu) == torch.bfloat16
    for avx512_bf16, amx, expected in ((False, False, torch.float32), (True, False, torch.bfloat16),
                                       (False, True, torch.bfloat16)):
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16, raising=False)
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx, raising=False)
        assert head_dtype("auto", cpu) == expected
    monkeypatch.delattr(torch.cpu, "_is_avx512_bf16_supported", raising=False)
    monkeypatch.delattr(torch.cpu, "_is_amx_tile_supported", raising=False)
    assert head_dtype("auto", cpu) == torch.float32  # a torch without the checks: the safe choice


def test_cached_batches_are_the_rows_of_a_seeded_permutation_as_plain_indexing_gives_them():
    torch.manual_seed(0)
    features = {"conv1": torch.randn(50, 6).to(torch.bfloat16), "conv2": torch.randn(50, 3)}
    labels = torch.arange(50) % 7
    batches = cached_batches(features, labels, 16, torch.device("cpu"), shuffle_seed=3)
    for epoch in range(2):
        seen = list(batches(epoch))
        assert len(seen) == 3  # the last partial batch of 2 is dropped
        order = torch.cat([target for _, target in seen])
        rows = {layer: torch.cat([pooled[layer] for pooled, _ in seen]) for layer in features}
        # labels are row index mod 7, so recover the rows through a second, unique key: conv2's values
        index = torch.tensor([int((features["conv2"] == row).all(dim=1).nonzero()) for row in rows["conv2"]])
        assert len(set(index.tolist())) == 48 and torch.equal(order, labels[index])
        assert all(torch.equal(rows[layer], features[layer][index]) for layer in features)
    assert not torch.equal(torch.cat([t for _, t in batches(0)]), torch.cat([t for _, t in batches(1)]))
    plain = list(cached_batches(features, labels, 16, torch.device("cpu"))())  # no seed: in order, all rows
    assert torch.equal(torch.cat([p["conv1"] for p, _ in plain]), features["conv1"])
