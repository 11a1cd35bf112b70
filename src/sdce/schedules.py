"""Guidance-weight schedules as pure functions of the step.

Over `schedule_steps` S (null: the whole run, `training.steps`) the weight
falls from `initial_weight` w0 to `min_weight` w_min and is held at w_min
afterwards. With x = t / S and rate r:

    constant     w = w0
    linear       w = w_min + (w0 - w_min) * (1 - x)
    cosine       w = w_min + (w0 - w_min) * (1 + cos(pi x)) / 2        (no warmup)
    exponential  w = w_min + (w0 - w_min) * (exp(-r x) - exp(-r)) / (1 - exp(-r))
    reciprocal   w = w_min + (w0 - w_min) * (1/(1 + r x) - 1/(1 + r)) / (1 - 1/(1 + r))

The exponential and reciprocal curves are shifted and rescaled so that they
reach w_min exactly at t = S (no jump when the schedule ends); r sets how front-
loaded the decay is.
"""

from __future__ import annotations

import math


def guidance_weight(step: int, spec: dict, run_steps: int | None = None) -> float:
    """w(step) for a validated `guidance` spec; `run_steps` is the run's length, used when
    `schedule_steps` is null."""
    w0, w_min = spec["initial_weight"], spec["min_weight"]
    kind, total, r = spec["schedule"], spec["schedule_steps"] or run_steps, spec["decay_rate"]
    if kind == "constant":
        return float(w0)
    if total is None:
        raise ValueError("guidance.schedule_steps is null (the whole run) but the run length is not given")
    if step >= total:
        return float(w_min)
    x = step / total
    if kind == "linear":
        f = 1.0 - x
    elif kind == "cosine":
        f = 0.5 * (1.0 + math.cos(math.pi * x))
    elif kind == "exponential":
        f = (math.exp(-r * x) - math.exp(-r)) / (1.0 - math.exp(-r))
    elif kind == "reciprocal":
        f = (1.0 / (1.0 + r * x) - 1.0 / (1.0 + r)) / (1.0 - 1.0 / (1.0 + r))
    else:
        raise ValueError(
            f"unknown schedule '{kind}' (known: constant, linear, cosine, exponential, reciprocal)"
        )
    return float(w_min + (w0 - w_min) * f)
