"""An evaluation job that takes a while, so that a test can kill a Dask worker while jobs run
on it (imported by the workers from tests/ on their PYTHONPATH)."""
import time

from graphprune.search.objectives import evaluate_job


def slow_evaluate_job(config):
    time.sleep(0.4)
    return evaluate_job(config)
