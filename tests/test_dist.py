"""The sdist and the wheel of ``make dist``: the package and its package data, nothing else.

Built as ``make dist`` builds them (``python -m build --no-isolation``: the sdist, then the wheel
from the unpacked sdist), into a temporary folder. ``.ci/wheel_check`` installs the wheel into a
fresh virtual environment and runs it.
"""

import configparser
import importlib.util
import subprocess
import sys
import tarfile
import zipfile
from email.parser import Parser
from pathlib import Path, PurePosixPath

import pytest

import vaelab

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "vaelab"


def _package_data_patterns() -> list[str]:
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    return [p.strip() for p in cfg["options.package_data"]["vaelab"].split(",") if p.strip()]


def _source_files() -> set[str]:
    """Every module of the package and every file its package data names, as wheel paths."""
    files = {p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts}
    for pattern in _package_data_patterns():
        files.update(PACKAGE.glob(pattern))
    return {p.relative_to(ROOT).as_posix() for p in files}


@pytest.fixture(scope="module")
def dist(tmp_path_factory) -> Path:
    if importlib.util.find_spec("build") is None:
        pytest.skip("the `build` package (dev extra) is not installed; `make test` installs it")
    out = tmp_path_factory.mktemp("dist")
    proc = subprocess.run(
        [sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), "."],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return out


def test_the_wheel_holds_the_package_and_its_data_only(dist):
    (wheel,) = dist.glob(f"vaelab-{vaelab.__version__}-py3-none-any.whl")
    names = zipfile.ZipFile(wheel).namelist()
    info = f"vaelab-{vaelab.__version__}.dist-info/"
    package = {n for n in names if not n.startswith(info)}

    strays = sorted(n for n in package if PurePosixPath(n).parts[0] != "vaelab")
    assert not strays, f"the wheel holds files outside the package (tests, data?): {strays}"
    # the package holds modules and the declared package data: no data set, checkpoint or picture
    declared = {n for n in package if not n.endswith(".py")}
    assert declared <= {n for n in _source_files() if not n.endswith(".py")}, declared
    missing = sorted(_source_files() - package)
    assert not missing, (f"not in the wheel: {missing}; declare them in setup.cfg "
                         "[options.package_data] (or [options.packages.find])")
    assert "vaelab/py.typed" in package
    assert any(n.startswith("vaelab/recipes/") and n.endswith(".toml") for n in package) == \
        any(PACKAGE.glob("recipes/*.toml"))

    with zipfile.ZipFile(wheel) as z:
        entry_points = z.read(info + "entry_points.txt").decode()
        meta = Parser().parsestr(z.read(info + "METADATA").decode())
    assert "vaelab = vaelab.cli:main" in entry_points
    requires = {r.split(">")[0].split("=")[0].split(";")[0].strip() for r in
                meta.get_all("Requires-Dist") if "extra ==" not in r}
    assert {"torch", "pyro-ppl", "numpy", "pydantic", "tomli-w", "tqdm", "matplotlib"} <= requires
    assert {"dev", "docs"} <= set(meta.get_all("Provides-Extra"))


def test_the_sdist_holds_the_sources_the_wheel_is_built_from(dist):
    (sdist,) = dist.glob(f"vaelab-{vaelab.__version__}.tar.gz")
    top = f"vaelab-{vaelab.__version__}/"
    with tarfile.open(sdist) as tar:
        names = {m.name.removeprefix(top) for m in tar.getmembers() if m.isfile()}
    assert {"README.md", "setup.cfg", "pyproject.toml", "constraints.txt"} <= names
    assert _source_files() <= names
    others = sorted(n for n in names if PurePosixPath(n).parts[0] not in
                    ("vaelab", "vaelab.egg-info")
                    and n not in ("README.md", "setup.cfg", "pyproject.toml", "constraints.txt",
                                  "MANIFEST.in", "PKG-INFO"))
    assert not others, f"the sdist holds more than the package: {others}"
