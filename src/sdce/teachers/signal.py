"""The one guidance signal every teacher produces.

Per position, a sparse distribution over *student-vocabulary* ids:

    ids        (B, T, K) long   token ids (padding entries carry probability 0)
    probs      (B, T, K) float  teacher probabilities of those ids
    rest       (B, T)    float  teacher mass not listed in `ids`

and, optionally:

    log_probs  (B, T, V) float  dense teacher log-probabilities over student ids
                                (-inf outside `support`; not renormalised there), for
                                full-vocabulary online KL; then K may be 0
    valid      (B, T)    bool   positions the teacher could align (cross-tokenizer
                                realignment masks the others; they carry nothing)
    support    (V,)      bool   student ids the teacher can express (the vocabulary
                                intersection); None = every id

For a teacher with its own tokenizer, `rest` is the teacher mass on the vocabulary
intersection that is not listed, so `probs.sum(-1) + rest` is the mass that survived
vocabulary mapping. Losses decide what `rest` means (see `sdce.losses`); the listed
mass, what survived mapping and thresholding, is logged as `teacher_mass`.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch


@dataclass
class GuidanceSignal:
    ids: torch.Tensor
    probs: torch.Tensor
    rest: torch.Tensor
    log_probs: torch.Tensor | None = None
    valid: torch.Tensor | None = None
    support: torch.Tensor | None = None

    def to(self, device) -> GuidanceSignal:
        moved = {f.name: getattr(self, f.name) for f in fields(self)}
        return GuidanceSignal(**{k: v.to(device) if v is not None else None for k, v in moved.items()})

    def listed_mass(self) -> torch.Tensor:
        """(B, T) mass carried by the sparse entries (a dense signal lists all it has)."""
        if self.log_probs is not None:
            return torch.logsumexp(self.log_probs.float(), dim=-1).exp()
        return self.probs.sum(-1)
