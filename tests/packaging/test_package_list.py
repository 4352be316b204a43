"""Every package of the code is in pyproject's explicit package list, so installs and the
packaged application ship it (a package left out imports in the checkout, fails installed)."""

import tomllib

from tests.conftest import ROOT


def test_every_code_package_is_listed():
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(init.parent.relative_to(ROOT).parts) for init in (ROOT / "atl_desktop").rglob("__init__.py")}
    assert found - listed == set()
