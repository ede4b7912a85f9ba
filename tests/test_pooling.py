import pytest
import torch

from selfsup.models import ARCHS, build_encoder
from selfsup.probes.pooling import TARGET_DIM, build_pool

SIZES = {"alexnet": 224, "alexnet_deepcluster": 224, "alexnet_jigsaw": 64, "resnet18": 64, "resnet50": 64}


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_auto_pooling_stays_below_about_9k_dims(arch):
    encoder = build_encoder(arch)
    shapes = encoder.feature_shapes(SIZES.get(arch, 32))
    for layer, shape in shapes.items():
        pool, dims, _ = build_pool("auto", layer, shape)
        assert dims <= TARGET_DIM or dims == shape[0]  # only a layer wider than 9216 channels may exceed it
        assert dims >= min(shape[0] * shape[1] * shape[2], TARGET_DIM) // 4  # and pooling does not throw most away


@pytest.mark.parametrize(
    "preset,arch,expected",
    [
        ("rotnet", "alexnet", {"conv1": 9216, "conv2": 9408, "conv3": 9600, "conv4": 9216, "conv5": 9216}),
        ("deepcluster", "alexnet_deepcluster", {"conv1": 9600, "conv2": 9216, "conv3": 9600, "conv4": 9600, "conv5": 9216}),
    ],
)
def test_paper_pooling_presets_match_the_published_dimensions(preset, arch, expected):
    import torch

    encoder = build_encoder(arch)
    shapes = encoder.feature_shapes(224)
    for layer, dims in expected.items():
        pool, out_dims, _ = build_pool(preset, layer, shapes[layer])
        assert out_dims == dims
        assert pool(torch.zeros(1, *shapes[layer])).shape == (1, dims)


def test_paper_presets_refuse_non_alexnet_layers():
    with pytest.raises(ValueError, match="--pool auto"):
        build_pool("rotnet", "res3", (128, 16, 16))


def test_global_pooling_gives_one_mean_per_channel():
    pool, dims, text = build_pool("global", "res4", (32, 5, 7))
    maps = torch.randn(2, 32, 5, 7)
    assert dims == 32 and text == "global avg 1x1"
    assert torch.allclose(pool(maps), maps.mean(dim=(2, 3)))
