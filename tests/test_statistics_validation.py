"""A few replications of the validation study (bench/bench_estimates.py): the real queue, the real
estimators, a known truth. The full study (200 replications per cell) is a benchmark, not a test."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench" / "bench_estimates.py"


def _bench():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("bench_estimates", BENCH)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up by name
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("overlap", [1, 2])
def test_estimates_through_the_queue_are_unbiased_on_a_few_replications(engine, overlap: int) -> None:  # type: ignore[no-untyped-def]
    be = _bench()
    cell = be.Cell(items=400, budget=0.3, overlap=overlap, reviewer_accuracy=0.85 if overlap == 2 else 1.0)
    reps = [be.replicate(engine, cell, seed) for seed in range(8)]
    for name in ("accuracy", "unsafe_rate (human)", "unsafe_rate (corrected)", "under_blocking"):
        errors = np.array([r[name]["estimate"] - r[name]["truth"] for r in reps])
        assert np.all(np.isfinite(errors)), name
        # unbiased: the mean error is within 4 standard errors of 0 (a biased design is off by 0.05-0.2)
        assert abs(errors.mean()) < 4 * errors.std(ddof=1) / math.sqrt(len(errors)) + 0.005, (name, errors)
        widths = np.array([r[name]["width"] for r in reps])
        assert np.all((widths > 0) & (widths < 0.5)), (name, widths)
    corrected = np.mean([r["unsafe_rate (corrected)"]["width"] for r in reps])
    human = np.mean([r["unsafe_rate (human)"]["width"] for r in reps])
    assert corrected < human  # an informative judge narrows the interval
    for r in reps:
        t = r.get("threshold_under_blocking")
        if t is not None and t["certified"]:
            assert t["estimate"] <= 0.3  # never wildly above a 0.1 target (the guarantee is checked by the study)
