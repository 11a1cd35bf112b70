"""The one guidance signal every teacher produces.

Per position, a sparse distribution over *student-vocabulary* ids:

    ids   (B, T, K) long   token ids (padding entries carry probability 0)
    probs (B, T, K) float  teacher probabilities of those ids
    rest  (B, T)    float  teacher mass not listed in `ids`

Losses decide what `rest` means through an explicit `tail_policy` (see
`sdce.losses`). `probs.sum(-1) + rest` is the mass that survived vocabulary
mapping and thresholding; it is logged every step.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class GuidanceSignal:
    ids: torch.Tensor
    probs: torch.Tensor
    rest: torch.Tensor

    def to(self, device) -> GuidanceSignal:
        return GuidanceSignal(self.ids.to(device), self.probs.to(device), self.rest.to(device))

    def listed_mass(self) -> torch.Tensor:
        """(B, T) mass carried by the sparse entries."""
        return self.probs.sum(-1)
