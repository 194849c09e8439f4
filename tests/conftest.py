import os
import sys
import warnings

import pytest

sys.path.insert(0, os.path.dirname(__file__))
warnings.filterwarnings("ignore")


@pytest.fixture(scope="session")
def exported(tmp_path_factory):
    """Export each test architecture once per exporter: {(name, exporter): path}."""
    from archs import export

    cache = {}
    root = tmp_path_factory.mktemp("exports")

    def get(name: str, exporter: str) -> str:
        key = (name, exporter)
        if key not in cache:
            cache[key] = export(name, str(root / f"{name}.{exporter}.onnx"), exporter == "dynamo")
        return cache[key]
    return get
