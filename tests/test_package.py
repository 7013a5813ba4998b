"""Package-level names of the libraries."""

from __future__ import annotations

import importlib

import pytest


@pytest.mark.parametrize(
    "package", ["dimalign.embedding", "dimalign.features", "dimalign.analysis", "dimalign.interpret"]
)
def test_lazy_exports_resolve_and_are_listed(package):
    """dir() drives tab completion, so it must list the names imported on first use."""
    module = importlib.import_module(package)
    assert module.__all__
    for name in module.__all__:
        assert name in dir(module)
        value = getattr(module, name)
        # A function named like its module would be shadowed by the submodule.
        assert getattr(value, "__name__", name) == name
    with pytest.raises(AttributeError, match=f"module '{package}' has no attribute 'missing'"):
        getattr(module, "missing")


def test_warning_helper_names_first_frame_outside_package():
    from dimalign._warnings import warn

    with pytest.warns(RuntimeWarning, match="^example$") as caught:
        warn("example", RuntimeWarning)
    assert [warning.filename for warning in caught] == [__file__]


# Each library function with a progress bar, called on a terminal. The bar's
# description is what the test looks for in the terminal output.
PROGRESS_SCRIPT = """
import numpy as np
from dimalign.analysis.compare import bootstrap_rsa
from dimalign.analysis.relevance import jackknife_relevance
from dimalign.analysis.similarity import similarity_matrix
from dimalign.embedding import SPoSE
from dimalign.triplets import sample_triplets, simulate_choices

rng = np.random.default_rng(0)
embedding = rng.random((20, 3))
triplets = sample_triplets(20, 200)
similarity_matrix(embedding)
simulate_choices(embedding, triplets, batch_size=50)
jackknife_relevance(embedding, triplets, batch_size=50)
bootstrap_rsa(similarity_matrix(embedding), similarity_matrix(embedding + 1), n_bootstrap=20)
SPoSE(n_dims=2, max_epochs=2, min_objects=0, verbose=True).fit(triplets, n_objects=20)
"""
PROGRESS_BARS = ["similarity matrix", "Gram matrix", "simulating choices", "jackknife", "bootstrap", "fit spose"]


def run_on_terminal(script: str, environment: dict[str, str]) -> str:
    """Run a Python script with stdout and stderr on a pseudo-terminal and return what it wrote."""
    import fcntl
    import os
    import pty
    import struct
    import subprocess
    import sys
    import termios

    leader, follower = pty.openpty()
    # A new pseudo-terminal is 0 columns wide, which tqdm fills with an empty bar.
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 200, 0, 0))
    process = subprocess.Popen(
        [sys.executable, "-c", script], stdin=subprocess.DEVNULL, stdout=follower, stderr=follower,
        env={**os.environ, **environment},
    )
    os.close(follower)
    chunks = []
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:
            # Linux raises EIO once the process has closed its end.
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(leader)
    assert process.wait(timeout=300) == 0, b"".join(chunks).decode(errors="replace")
    return b"".join(chunks).decode(errors="replace")


@pytest.mark.parametrize(("setting", "shown"), [("", True), ("0", True), ("1", False), ("true", False)])
def test_progress_bars_follow_tqdm_disable(setting, shown):
    """TQDM_DISABLE, tqdm's own switch, hides every bar, also in a notebook, where tqdm ignores it."""
    import os

    environment = {"PYTHONPATH": os.pathsep.join(filter(None, ["src", os.environ.get("PYTHONPATH")])),
                   "TQDM_DISABLE": setting}
    output = run_on_terminal(PROGRESS_SCRIPT, environment)
    for description in PROGRESS_BARS:
        assert (f"{description}:" in output) is shown, (description, output)


@pytest.mark.parametrize(
    "package",
    ["dimalign.embedding", "dimalign.analysis", "dimalign.triplets", "dimalign.io", "dimalign.features",
     "dimalign.interpret", "dimalign.labeling", "dimalign.report"],
)
def test_subpackage_docstring_lists_modules(package):
    """help(package) in a notebook names the modules of the functions, for the packages that export none."""
    import pkgutil

    module = importlib.import_module(package)
    assert module.__doc__
    if getattr(module, "__all__", None):
        return
    for info in pkgutil.iter_modules(module.__path__):
        if not info.name.startswith("_") and info.name != "commands":
            assert f"{package}.{info.name}" in module.__doc__, info.name


def visible_lines(output: str) -> list[str]:
    """Return the lines a terminal shows at the end: on each line, the text after its last carriage return."""
    return [line.rsplit("\r", 1)[-1] for line in output.replace("\r\n", "\n").split("\n")]


def test_cumulative_rsa_leaves_no_bars():
    """cumulative_rsa builds one similarity matrix per step, and each finished bar would stay on screen."""
    import os

    script = (
        "import numpy as np\n"
        "from dimalign.analysis.matching import cumulative_rsa\n"
        "from dimalign.analysis.similarity import similarity_matrix\n"
        "embedding = np.random.default_rng(0).random((20, 6))\n"
        "cumulative_rsa(similarity_matrix(embedding), embedding, order=range(6))\n"
        "print('finished')\n"
    )
    environment = {"PYTHONPATH": os.pathsep.join(filter(None, ["src", os.environ.get("PYTHONPATH")])),
                   "TQDM_DISABLE": ""}
    output = run_on_terminal(script, environment)

    assert "similarity matrix:" in output
    shown = [line for line in visible_lines(output) if "similarity matrix" in line]
    assert shown == []
    assert "finished" in visible_lines(output)
