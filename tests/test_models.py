import socket

import pytest
import torch
import torchvision
from torch import nn

from selfsup.errors import CheckpointError, ConfigError
from selfsup.models import ARCHS, Encoder, build_encoder
from selfsup.models.base import check_input_size, freeze_layers, load_weights

# (arch, build kwargs, input size, expected (C, H, W) per tap in forward order)
SHAPES = [
    ("alexnet", {}, 224, [(64, 55, 55), (192, 27, 27), (384, 13, 13), (256, 13, 13), (256, 13, 13)]),
    ("alexnet_deepcluster", {}, 224, [(96, 55, 55), (256, 27, 27), (384, 13, 13), (384, 13, 13), (256, 13, 13)]),
    ("alexnet_jigsaw", {}, 64, [(96, 27, 27), (256, 13, 13), (384, 6, 6), (384, 6, 6), (256, 6, 6)]),
    ("alexnet_small", {}, 32, [(32, 32, 32), (96, 16, 16), (192, 8, 8), (128, 8, 8), (128, 8, 8)]),
    ("alexnet_small", {"width": 1.0}, 32, [(64, 32, 32), (192, 16, 16), (384, 8, 8), (256, 8, 8), (256, 8, 8)]),
    # ImageNet-stem ResNets at 64 px to stay fast: every stage halves the map (pool in res2).
    ("resnet18", {}, 64, [(64, 32, 32), (64, 16, 16), (128, 8, 8), (256, 4, 4), (512, 2, 2)]),
    ("resnet50", {}, 64, [(64, 32, 32), (256, 16, 16), (512, 8, 8), (1024, 4, 4), (2048, 2, 2)]),
    ("resnet18_small", {"width": 0.25}, 32, [(16, 32, 32), (16, 32, 32), (32, 16, 16), (64, 8, 8), (128, 4, 4)]),
    ("resnet18_small", {}, 32, [(64, 32, 32), (64, 32, 32), (128, 16, 16), (256, 8, 8), (512, 4, 4)]),
    ("resnet50_small", {"width": 0.25}, 32, [(16, 32, 32), (64, 32, 32), (128, 16, 16), (256, 8, 8), (512, 4, 4)]),
]


@pytest.mark.parametrize("in_channels", [1, 2, 3])
@pytest.mark.parametrize("arch,kwargs,size,expected", SHAPES, ids=[f"{s[0]}{s[1]}" for s in SHAPES])
def test_tap_shapes(arch, kwargs, size, expected, in_channels):
    enc = build_encoder(arch, in_channels=in_channels, **kwargs)
    assert isinstance(enc, Encoder)
    assert enc.arch == arch and enc.in_channels == in_channels
    shapes = enc.feature_shapes(size)
    assert list(shapes) == list(enc.layer_names)
    assert list(shapes.values()) == expected
    for name, (c, _, _) in shapes.items():
        assert enc.out_channels(name) == c


def test_every_arch_has_a_shape_check():
    assert {s[0] for s in SHAPES} == set(ARCHS)


def test_readable_state_dict_keys():
    assert "conv2.0.weight" in build_encoder("alexnet_small").state_dict()
    keys = build_encoder("resnet18_small", width=0.25).state_dict()
    assert "conv1.0.weight" in keys and "res2.0.conv1.weight" in keys and "res3.0.downsample.0.weight" in keys


def test_forward_taps_keys_and_aliases():
    enc = build_encoder("resnet18_small", width=0.25).eval()
    x = torch.randn(2, 3, 32, 32)
    out = enc.forward_taps(x, ["conv3", "res3", "conv1"])
    assert list(out) == ["conv3", "res3", "conv1"]
    assert torch.equal(out["conv3"], out["res3"])
    assert out["conv1"].shape == (2, 16, 32, 32)
    assert enc.out_channels("conv5") == enc.out_channels("res5") == 128


class _Boom(nn.Module):
    def forward(self, x):
        raise AssertionError("stage after the deepest requested tap was run")


@pytest.mark.parametrize("arch,later", [("alexnet_small", "conv3"), ("resnet18_small", "res3")])
def test_forward_taps_stops_early(arch, later):
    enc = build_encoder(arch, width=0.25)
    setattr(enc, later, _Boom())
    out = enc.forward_taps(torch.randn(1, 3, 32, 32), ["conv2"])
    assert list(out) == ["conv2"]
    with pytest.raises(AssertionError, match="deepest"):
        enc(torch.randn(1, 3, 32, 32))


@pytest.mark.parametrize("arch", ["alexnet_small", "resnet18_small"])
def test_forward_equals_last_tap(arch):
    enc = build_encoder(arch, width=0.25).eval()
    x = torch.randn(2, 3, 32, 32)
    last = enc.layer_names[-1]
    assert torch.equal(enc(x), enc.forward_taps(x, [last])[last])


def _bn(enc, stage):
    return [m for m in getattr(enc, stage).modules() if isinstance(m, nn.BatchNorm2d)]


@pytest.mark.parametrize("arch,through,frozen", [
    ("alexnet_small", "conv2", ["conv1", "conv2"]),
    ("resnet18_small", "conv2", ["conv1", "res2"]),  # alias of res2
])
def test_freeze_through(arch, through, frozen):
    enc = build_encoder(arch, width=0.25)
    enc.freeze_through(through)
    enc.eval().train()  # the override must re-freeze BN on every .train()
    trainable = [n for n in enc.layer_names if n not in frozen]
    for name in enc.layer_names:
        assert all(p.requires_grad == (name in trainable) for p in getattr(enc, name).parameters())
        assert all(bn.training == (name in trainable) for bn in _bn(enc, name))

    before = {n: [bn.running_mean.clone() for bn in _bn(enc, n)] for n in enc.layer_names}
    enc(torch.randn(4, 3, 32, 32)).square().mean().backward()
    for name in enc.layer_names:
        changed = [not torch.equal(b, bn.running_mean) for b, bn in zip(before[name], _bn(enc, name))]
        assert all(changed) if name in trainable else not any(changed)
        grads = [p.grad for p in getattr(enc, name).parameters()]
        assert all(g is not None for g in grads) if name in trainable else all(g is None for g in grads)

    # Freezing is cumulative: a shallower call leaves the deeper stages frozen.
    enc.freeze_through(enc.layer_names[0])
    assert not any(p.requires_grad for p in getattr(enc, frozen[-1]).parameters())


def test_feature_shapes_leaves_state_alone():
    enc = build_encoder("alexnet_small").train()
    stats = {k: v.clone() for k, v in enc.state_dict().items()}
    enc.feature_shapes(32)
    assert enc.training
    assert all(torch.equal(stats[k], v) for k, v in enc.state_dict().items())


def test_unknown_arch_lists_archs():
    with pytest.raises(ValueError, match="vgg16") as err:
        build_encoder("vgg16")
    assert all(a in str(err.value) for a in ARCHS)


def test_unknown_tap_lists_layers():
    enc = build_encoder("resnet18_small", width=0.25)
    for call in (lambda: enc.canonical("conv6"), lambda: enc.forward_taps(torch.zeros(1, 3, 32, 32), ["conv6"]),
                 lambda: enc.out_channels("conv6"), lambda: enc.freeze_through("conv6")):
        with pytest.raises(ValueError, match="conv6") as err:
            call()
        assert all(n in str(err.value) for n in (*enc.layer_names, "conv2", "conv5"))


def test_bad_options():
    with pytest.raises(ConfigError, match="width"):
        build_encoder("resnet18", width=0.5)
    with pytest.raises(ConfigError, match="resnet18"):
        build_encoder("alexnet", pretrained=True)
    with pytest.raises(ConfigError, match="--freeze 'conv9' is invalid for alexnet_small"):
        freeze_layers(build_encoder("alexnet_small", width=0.25), "conv9")
    with pytest.raises(ValueError, match="width"):
        build_encoder("alexnet_small", width=0)


def test_an_input_too_small_for_the_layers_names_the_option():
    check_input_size(build_encoder("alexnet", width=0.25), 64, "--image-size")
    with pytest.raises(ConfigError, match="--image-size 8 is too small for alexnet"):
        check_input_size(build_encoder("alexnet", width=0.25), 8, "--image-size")


@pytest.mark.parametrize("edit, message", [
    (lambda w: w.pop("conv2.0.weight"),
     "file.pt does not fit the model it describes: it has no encoder.conv2.0.weight;"),
    (lambda w: w.update(extra=torch.zeros(1)), "it has an unexpected entry encoder.extra;"),
    (lambda w: w.update({"conv1.0.weight": torch.zeros(2, 3)}),
     "encoder.conv1.0.weight is 2x3 in the file but 16x3x5x5"),
    (lambda w: w.update({"conv1.0.weight": "weights"}), 'parameter named "conv1.0.weight"'),
])
def test_load_weights_names_the_first_entry_that_does_not_fit(edit, message):
    encoder = build_encoder("alexnet_small", width=0.25)
    weights = dict(encoder.state_dict())
    edit(weights)
    with pytest.raises(CheckpointError) as info:
        load_weights(encoder, weights, "file.pt", key_prefix="encoder.")
    assert message in str(info.value) and "\n" not in str(info.value)


def _tv_features(tv, x):
    x = tv.maxpool(tv.relu(tv.bn1(tv.conv1(x))))
    return tv.layer4(tv.layer3(tv.layer2(tv.layer1(x))))


def test_torchvision_state_dict_round_trip():
    enc = build_encoder("resnet18")
    with torch.no_grad():  # non-trivial BN statistics so eval mode is a real check
        for m in enc.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    enc.eval()
    sd = enc.torchvision_state_dict()
    tv = torchvision.models.resnet18(weights=None).eval()
    result = tv.load_state_dict(sd, strict=False)
    assert sorted(result.missing_keys) == ["fc.bias", "fc.weight"] and not result.unexpected_keys

    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(enc(x), _tv_features(tv, x))
        back = build_encoder("resnet18").eval()
        back.load_torchvision_state_dict(tv.state_dict())
        assert torch.equal(back(x), enc(x))


def test_resnet50_torchvision_keys():
    sd = build_encoder("resnet50").torchvision_state_dict()
    expected = [k for k in torchvision.models.resnet50(weights=None).state_dict() if not k.startswith("fc.")]
    assert list(sd) == expected


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("tried to use the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)
    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)


@pytest.mark.parametrize("arch", list(ARCHS))
def test_build_never_downloads(no_network, arch):
    build_encoder(arch, in_channels=2)


def test_pretrained_loads_imagenet_weights(monkeypatch):
    reference = torchvision.models.resnet18(weights=None)
    urls = []

    def fake_download(url, **kwargs):
        urls.append(url)
        return reference.state_dict()

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", fake_download)
    enc = build_encoder("resnet18", pretrained=True)
    assert urls == [torchvision.models.ResNet18_Weights.IMAGENET1K_V1.url]
    assert torch.equal(enc.res5[1].conv2.weight, reference.layer4[1].conv2.weight)

    gray = build_encoder("resnet18", in_channels=1, pretrained=True)
    assert torch.allclose(gray.conv1[0].weight, reference.conv1.weight.sum(1, keepdim=True))


def test_channels_last_gives_the_same_features_and_probes_pool_them_in_the_same_order():
    from selfsup.models import use_channels_last
    from selfsup.probes.pooling import build_pool

    torch.manual_seed(0)
    for arch in ("alexnet_small", "resnet18_small"):
        encoder = build_encoder(arch, in_channels=3).eval()
        images = torch.rand(4, 3, 32, 32)
        shapes = encoder.feature_shapes(32)
        with torch.no_grad():
            plain = encoder.forward_taps(images, encoder.layer_names)
            pools = {layer: build_pool("auto", layer, shapes[layer])[0] for layer in encoder.layer_names}
            pooled = {layer: pools[layer](maps) for layer, maps in plain.items()}
            encoder.to(memory_format=torch.channels_last)
            fast = encoder.forward_taps(images, encoder.layer_names)
        for layer in encoder.layer_names:
            assert fast[layer].is_contiguous(memory_format=torch.channels_last) or fast[layer].shape[-1] == 1
            torch.testing.assert_close(fast[layer], plain[layer], rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(pools[layer](fast[layer]), pooled[layer], rtol=1e-4, atol=1e-5)
        # inference always; a CPU training step only where the family measured it faster
        assert use_channels_last(encoder, torch.device("cpu"), training=False)
        assert use_channels_last(encoder, torch.device("cpu"), training=True) == arch.startswith("alexnet")
