"""The lens of Minderer, Bachem, Houlsby & Tschannen, "Automatic Shortcut Removal for Self-Supervised
Representation Learning" (ICML 2020): a shallow U-Net in front of the encoder that adds a residual to
whatever the encoder is fed.

During pretraining the lens is the task's adversary: it is trained to make the pretext loss larger, under a
reconstruction penalty that keeps its changes small, while the encoder and heads make the loss smaller as
usual. Cues that solve the task cheaply and occupy few pixels (a logo, a watermark, chromatic aberration)
are the cheapest for the lens to erase, so the encoder has to learn something else. Afterwards the lens
stays in front of the encoder, for probes as well: the features were learnt on what it lets through.

Three choices differ from a plain "maximise the loss" adversary; each was needed, in an exploration on
small blobs, for the lens to erase a planted corner mark (the test of ``tests/test_lens.py``):

- The residual is zero-mean per image and channel. The loss's input gradient has a consistent sign per
  channel over the whole image, so an unconstrained lens first learns a global colour shift, which changes
  every pixel and erases nothing in particular.
- The lens ascends ``log(pretext loss)``, not the loss itself: its reversed gradient is scaled by
  ``1 / loss``. Once the network reads a shortcut the loss nears zero and a plain adversary's gradient
  vanishes with it (the softmax saturates); the logarithm keeps it alive, as the non-saturating GAN loss does.
- It has its own optimiser (Adam, ``lens.lr``; `selfsup.engine.Trainer` builds it): the size of the
  adversarial gradient changes by orders of magnitude as the loss falls, and with the task's SGD the lens
  diverged.

The game takes one backward pass. Between the lens's residual and the encoder sits :class:`_Adversary`, the
identity going forward; going back it hands the lens ``-gain x`` the pretext gradient plus the gradient of
``reconstruction_weight * mean(residual ** 2)``, where ``gain`` is ``1 / loss`` (:meth:`Lens.weigh_loss`).
So the lens descends ``-log(pretext_loss) + reconstruction_weight * mean((lens(x) - x) ** 2)`` while every
other parameter descends the pretext loss, which the task reports unchanged.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class _Adversary(torch.autograd.Function):
    """Identity on the lens's residual; its backward reverses the pretext gradient (times the lens's gain)
    and adds the penalty's."""

    @staticmethod
    def forward(ctx, residual: Tensor, lens: Lens) -> Tensor:
        ctx.save_for_backward(residual)
        ctx.lens = lens
        return residual.view_as(residual)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        (residual,) = ctx.saved_tensors
        lens = ctx.lens
        # d/d residual of weight * mean(residual ** 2): the mean is over this call's elements, so the penalty
        # does not grow with the batch size or with how many pieces a task cuts an image into
        penalty = residual * (2.0 * lens.reconstruction_weight / residual.numel())
        gain = 1.0 if lens.gain is None else lens.gain.to(grad.dtype)
        return -grad * gain + penalty.to(grad.dtype), None


class Lens(nn.Module):
    """``x + residual(x)`` for ``channels``-channel encoder inputs of any size, ``residual`` a two-level U-Net
    ``width`` channels wide whose output is made zero-mean per image and channel. Its last convolution starts
    at zero: a new lens is the identity.

    ``reconstruction_weight`` makes it the adversary of the loss its output feeds (see the module docstring;
    pretraining sets it); None, as when it is rebuilt from a checkpoint, makes it an ordinary module.
    """

    def __init__(self, channels: int, width: int, *, reconstruction_weight: float | None = None) -> None:
        super().__init__()
        self.channels = channels
        self.width = width
        self.reconstruction_weight = reconstruction_weight
        self.gain: Tensor | None = None  # 1 / the pretext loss of the step under way (weigh_loss)
        self.last_change: Tensor | None = None  # mean squared residual of the latest training forward (a log)
        self.down = nn.Sequential(nn.Conv2d(channels, width, 3, padding=1), nn.ReLU(inplace=True),
                                  nn.Conv2d(width, width, 3, padding=1), nn.ReLU(inplace=True))
        self.bottom = nn.Sequential(nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), nn.ReLU(inplace=True),
                                    nn.Conv2d(2 * width, 2 * width, 3, padding=1), nn.ReLU(inplace=True))
        # no bias: the residual's mean is taken out anyway
        self.up = nn.Sequential(nn.Conv2d(3 * width, width, 3, padding=1), nn.ReLU(inplace=True),
                                nn.Conv2d(width, channels, 1, bias=False))
        nn.init.zeros_(self.up[-1].weight)

    @property
    def adversarial(self) -> bool:
        return self.reconstruction_weight is not None

    def residual(self, x: Tensor) -> Tensor:
        """What the lens adds to ``x``: zero-mean over each image's pixels, channel by channel."""
        skip = self.down(x)
        # to the skip's size, not twice the bottom's: odd sides (a 7 px jigsaw tile) come back whole
        coarse = F.interpolate(self.bottom(skip), size=skip.shape[-2:], mode="nearest")
        residual = self.up(torch.cat([skip, coarse], dim=1))
        return residual - residual.mean(dim=(2, 3), keepdim=True)

    def forward(self, x: Tensor) -> Tensor:
        residual = self.residual(x)
        if self.adversarial and torch.is_grad_enabled():
            self.last_change = residual.detach().float().pow(2).mean()
            residual = _Adversary.apply(residual, self)
        return x + residual.to(x.dtype)

    def weigh_loss(self, loss: Tensor) -> None:
        """Sets the gain of the next backward pass from the step's pretext ``loss``: ``1 / loss``, so that the
        lens ascends ``log(loss)`` (kept on the device: no host sync)."""
        self.gain = 1.0 / loss.detach().float().clamp_min(1e-6)

    def spec(self) -> dict[str, int]:
        """What rebuilds this lens (``Lens(**spec)``): the checkpoint record's ``encoder.lens``."""
        return {"channels": self.channels, "width": self.width}
