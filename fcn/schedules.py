"""Learning-rate schedules: the rate of each step as a function of the step alone.

The training loop computes the rate of step ``s`` (1-based) on the host from
``s - 1`` steps done and hands it to the optimizer before the step runs, so a
resumed run, whose step comes from the checkpoint, continues the schedule
exactly, and TensorBoard's ``learning_rate`` is the rate that step used.

With ``done`` steps done, ``max_steps`` = ``train.max_steps``, ``base`` =
``train.learning_rate`` and ``low`` = ``train.min_learning_rate``:

- ``constant``: ``base``.
- ``poly``: ``low + (base - low) * (1 - done / max_steps) ** poly_power``
  (mmsegmentation's ``PolyLR`` with ``eta_min``; power 0.9).
- ``cosine``: ``low + (base - low) * (1 + cos(pi * done / max_steps)) / 2``.

A linear warm-up (``train.warmup_steps`` = W > 0) multiplies the rate of the
first W steps by ``(done + 1) / W``: step 1 runs at 1/W of the schedule's
rate, step W at all of it.

Pure Python: the configuration checks the names without TensorFlow.
"""

import math


def constant(done: int, max_steps: int, base: float, low: float, power: float) -> float:
    return base


def poly(done: int, max_steps: int, base: float, low: float, power: float) -> float:
    remaining = max(0.0, 1.0 - done / max_steps)
    return low + (base - low) * remaining**power


def cosine(done: int, max_steps: int, base: float, low: float, power: float) -> float:
    progress = min(1.0, done / max_steps)
    return low + (base - low) * 0.5 * (1.0 + math.cos(math.pi * progress))


# train.schedule -> the rate after ``done`` steps (before warm-up).
SCHEDULES = {"constant": constant, "poly": poly, "cosine": cosine}


def learning_rate(train, step: int) -> float:
    """The learning rate of training step ``step`` (1-based) under ``train`` (a ``TrainConfig``)."""
    done = max(step - 1, 0)
    rate = SCHEDULES[train.schedule](done, train.max_steps, train.learning_rate, train.min_learning_rate, train.poly_power)
    if train.warmup_steps and done < train.warmup_steps:
        rate *= (done + 1) / train.warmup_steps
    return rate
