"""The uniform teacher: lists nothing and leaves all its mass to the uniform tail.

Mixing it into the targets is label smoothing, the data-independent control of the
bigram objective (`sdce.losses.label_smoothing_loss`).
"""

from __future__ import annotations

import torch

from sdce.teachers.signal import GuidanceSignal


class UniformTeacher:
    def to(self, device) -> UniformTeacher:
        return self

    def signal(self, input_ids: torch.Tensor, offsets=None) -> GuidanceSignal:
        b, t = input_ids.shape
        empty = input_ids.new_zeros((b, t, 0))
        return GuidanceSignal(empty, empty.float(), torch.ones(b, t, device=input_ids.device))
