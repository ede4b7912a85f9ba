import torch

from selfsup.models import build_encoder
from selfsup.pretext import new_task
from selfsup.pretext.rotation import NUM_ROTATIONS, rotate_batch


def upright_arrow(size: int = 9) -> torch.Tensor:
    """A single-channel image with a vertical bar and a marked top pixel: its orientation is unambiguous."""
    img = torch.zeros(1, size, size)
    img[0, 1:, size // 2] = 1.0
    img[0, 0, size // 2] = 2.0  # tip at the top
    return img


def tip_position(img: torch.Tensor) -> tuple[int, int]:
    flat = int(img[0].argmax())
    return divmod(flat, img.shape[-1])


def test_rotating_upright_image_k_times_gives_label_k():
    size = 9
    image = upright_arrow(size)[None]
    rotated, labels = rotate_batch(image)
    # rot90 turns counter-clockwise: the tip moves top -> left -> bottom -> right
    expected_tips = [(0, size // 2), (size // 2, 0), (size - 1, size // 2), (size // 2, size - 1)]
    for k in range(NUM_ROTATIONS):
        assert int(labels[k]) == k
        assert tip_position(rotated[k]) == expected_tips[k]
        assert torch.equal(rotated[k], torch.rot90(image[0], k, dims=(1, 2)))


def test_every_image_appears_in_all_four_rotations_in_the_batch():
    images = torch.rand(5, 3, 8, 8)
    rotated, labels = rotate_batch(images)
    assert rotated.shape == (20, 3, 8, 8)
    assert labels.tolist() == [k for k in range(4) for _ in range(5)]
    for i in range(5):
        for k in range(4):
            assert torch.equal(rotated[k * 5 + i], torch.rot90(images[i], k, dims=(1, 2)))


def test_rotation_task_forward_gives_loss_and_accuracy_and_learns():
    torch.manual_seed(0)
    task = new_task("rotation", build_encoder("alexnet_small", width=0.25), {"head_hidden": 32})
    images = torch.rand(4, 3, 16, 16)
    images[:, :, :4] = 1.0  # a bright top band: trivially learnable orientation
    labels = torch.full((4,), -1)
    optimizer = torch.optim.SGD(task.parameters(), lr=0.05, momentum=0.9)
    first = None
    for _ in range(30):
        out = task(images, labels)
        first = first if first is not None else float(out["loss"].detach())
        optimizer.zero_grad()
        out["loss"].backward()
        optimizer.step()
    assert set(out) == {"loss", "acc"}
    assert float(out["loss"].detach()) < first * 0.5
    assert float(out["acc"]) >= 0.75
