"""Data stage: read any seed-style dataset, check it, and prepare train/eval examples.

    report = check_data(["faq.csv"])            # afinar data check
    prepared = prepare_data(recipe, "runs/x/data")  # afinar data prepare
"""

from afinar.data.check import DataReport, check_data
from afinar.data.prepare import PreparedData, load_prepared, prepare_data
from afinar.data.readers import Issue
from afinar.data.schemas import Example

__all__ = ["DataReport", "Example", "Issue", "PreparedData", "check_data", "load_prepared", "prepare_data"]
