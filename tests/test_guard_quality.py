"""The domain guard with its real embedder on the benchmark FAQs (bench/guard_data/).

Floors a little under the figures recorded in BENCHMARKS.md, so that a change that makes the
guard route questions worse fails here, not silently in a user's assistant. Only the held-out
FAQs (see ROLES in bench/guard_bench.py) were never looked at while choosing the guard's settings.
"""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

pytestmark = pytest.mark.integration

DOMAINS = ["biblioteca", "veterinaria", "matricula", "gimnasio", "municipalidad", "internet", "hospital"]


@pytest.mark.parametrize("domain", DOMAINS)
def test_guard_routes_benchmark_probes(domain):
    from guard_bench import run_domain

    result = run_domain(domain, paraphrases=1)["modes"]
    refuse, strict = result["refuse"], result["strict"]
    assert refuse["accuracy"] >= 0.80 and refuse["wrongly_refused_in_domain"] <= 0.07, refuse["by_kind"]
    assert strict["accuracy"] >= 0.74, strict["by_kind"]
    assert int(refuse["by_kind"]["injection"].split("/")[0]) >= 12


def test_benchmark_roles_cover_every_domain():
    from guard_bench import ROLES

    assert sorted(ROLES) == sorted(DOMAINS)
    assert sorted(p.name.removesuffix("_faq.csv") for p in (Path(__file__).resolve().parents[1] / "bench" / "guard_data").glob("*_faq.csv")) == sorted(DOMAINS)
