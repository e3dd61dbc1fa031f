"""The domain guard with the real embedded MiniLM on the benchmark FAQs (bench/guard_data/).

Floors a little under the figures recorded in BENCHMARKS.md, so that a change that makes the
guard route questions worse fails here, not silently in a user's assistant. The held-out FAQs
(veterinaria, matricula) were never used to choose the guard's settings.
"""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("domain", ["biblioteca", "veterinaria", "matricula"])
def test_guard_routes_benchmark_probes(domain):
    from guard_bench import run_domain

    result = run_domain(domain, paraphrases=1)["modes"]
    refuse, strict = result["refuse"], result["strict"]
    assert refuse["accuracy"] >= 0.78 and refuse["wrongly_refused_in_domain"] <= 0.12, refuse["by_kind"]
    assert strict["accuracy"] >= 0.70, strict["by_kind"]
    assert int(refuse["by_kind"]["injection"].split("/")[0]) >= 13
