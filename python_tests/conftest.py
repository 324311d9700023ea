import os

import pytest
import torch

import ssrvg_ext  # noqa: F401  (loads the ops once for the whole session)

try:  # hypothesis draws the same examples every run (no example database between runs)
    from hypothesis import settings as _hypothesis_settings

    _hypothesis_settings.register_profile("ssrvg", derandomize=True, database=None)
    _hypothesis_settings.load_profile("ssrvg")
except ImportError:
    pass

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def test_seed() -> int:
    """The seed of every randomised test: 0 unless SSRVG_TEST_SEED is set (``random`` draws a fresh
    one, to sweep seeds). Reported in the header and with every failure."""
    v = os.environ.get("SSRVG_TEST_SEED", "0")
    if v == "random":
        v = os.environ["SSRVG_TEST_SEED"] = str(int.from_bytes(os.urandom(4), "little"))
    return int(v)


test_seed.__test__ = False  # a helper, not a test


def pytest_report_header(config):
    return f"ssrvg_ext test seed: {test_seed()} (SSRVG_TEST_SEED=<n> or =random to change)"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if rep.failed:
        rep.sections.append(("seed", f"reproduce with SSRVG_TEST_SEED={test_seed()}"))


@pytest.fixture
def rng():
    """A generator seeded by :func:`test_seed` (fixed by default: reproducible runs)."""
    return torch.Generator().manual_seed(test_seed())


@pytest.fixture(scope="session")
def load_benchmark():
    """load_benchmark(name) -> benchmarks/<name>.py as a module (the folder is not a package)."""
    import importlib.util

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

    def load(name: str):
        spec = importlib.util.spec_from_file_location(name, os.path.join(root, "benchmarks", f"{name}.py"))
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return mod

    return load
