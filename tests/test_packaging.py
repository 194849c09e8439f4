"""The installed package is the whole package: pyproject's explicit package list (needed to ship
passes/ and targets/ as graphprune.passes/graphprune.targets) names every subpackage on disk.
An editable install finds unlisted subpackages anyway, so only `pip install .` would miss them."""
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_subpackage_on_disk_is_listed_for_installation():
    conf = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    dirs = {"graphprune": "graphprune", **conf["package-dir"]}
    on_disk = set()
    for top, folder in dirs.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / folder).parts
            on_disk.add(".".join((top,) + rel))
    assert on_disk - set(conf["packages"]) == set()
    assert set(conf["packages"]) - on_disk == set()
