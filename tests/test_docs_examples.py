"""Every fenced Python example in README.md and docs/*.md runs and holds.

Each ```` ```python ```` block is one test. It runs in a fresh temporary
working directory with a fresh namespace, one top-level statement at a time,
so that the value of every bare expression (the lines the docs annotate with
a result) is recorded for the checks below. An HTML comment on the line
right before the fence sets how the block runs:

- no comment: the block runs as it is;
- ``<!-- test: setup=NAME -->``: ``SETUPS[NAME]`` first puts the input files
  that the example names into the working directory (links to the real
  THINGS files in ``../shared/data``, or small files it writes) and defines
  the variables that the surrounding text introduces. Its ``check`` then
  compares the numbers the docs quote next to the example with the values
  the block produced. Add ``slow`` (``<!-- test: setup=NAME slow -->``) for a
  block that takes more than about 10 s;
- ``<!-- not tested: REASON -->``: the block is not run, for example because
  it downloads files or fits for many minutes. REASON names what it needs. The
  block must still compile, and its import statements run.
"""

from __future__ import annotations

import ast
import contextlib
import io
import textwrap
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
DOC_FILES = [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").glob("*.md"))]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"

FENCE = "```python"
NOT_TESTED = re.compile(r"<!-- not tested: (?P<reason>.*?) -->")
TEST_OPTIONS = re.compile(r"<!-- test: (?P<options>.*?) -->")
# A reason names what the block needs, so a bare "skip" or "todo" is rejected.
MIN_REASON_WORDS = 4
# Key of the printed output among the values that ``run_block`` returns.
STDOUT = "<stdout>"


@dataclass(frozen=True)
class Example:
    """One fenced Python block of a Markdown file."""

    path: Path
    line: int  # 1-based line of the opening fence
    code: str
    marker: str  # the line before the fence

    @property
    def name(self) -> str:
        return f"{self.path.relative_to(REPO_ROOT)}:{self.line}"


def collect_examples() -> list[Example]:
    """Return every ```` ```python ```` block of the docs, in file and line order."""
    examples = []
    for path in DOC_FILES:
        lines = path.read_text(encoding="utf-8").splitlines()
        index = 0
        while index < len(lines):
            if lines[index].strip() != FENCE:
                index += 1
                continue
            end = index + 1
            while end < len(lines) and lines[end].strip() != "```":
                end += 1
            marker = lines[index - 1].strip() if index > 0 else ""
            # A fence inside a list item is indented, and so is its code.
            code = textwrap.dedent("\n".join(lines[index + 1 : end]) + "\n")
            examples.append(Example(path, index + 1, code, marker))
            index = end + 1
    return examples


def parse_marker(example: Example) -> tuple[str | None, str | None, bool]:
    """Return ``(not_tested_reason, setup_name, slow)`` from the comment before the fence.

    Raises:
        ValueError: For a comment that is neither marker, a ``not tested``
            reason of fewer than :data:`MIN_REASON_WORDS` words, or an
            unknown option.
    """
    found = NOT_TESTED.fullmatch(example.marker)
    if found:
        reason = found["reason"].strip()
        if len(reason.split()) < MIN_REASON_WORDS:
            raise ValueError(
                f"{example.name}: 'not tested' needs a reason of at least {MIN_REASON_WORDS} words "
                f"that says what the block needs, got {reason!r}"
            )
        return reason, None, False
    found = TEST_OPTIONS.fullmatch(example.marker)
    if not found:
        if example.marker.startswith("<!--"):
            raise ValueError(
                f"{example.name}: the comment before the fence is neither '<!-- not tested: REASON -->' "
                f"nor '<!-- test: OPTIONS -->': {example.marker!r}"
            )
        return None, None, False
    setup, slow = None, False
    for option in found["options"].split():
        if option == "slow":
            slow = True
        elif option.startswith("setup="):
            setup = option.removeprefix("setup=")
        else:
            raise ValueError(f"{example.name}: unknown option {option!r} in {example.marker!r}")
    return None, setup, slow


# ---------------------------------------------------------------------------
# Setups: input files and variables for examples that continue the text


@dataclass
class Context:
    """What a setup works with: the example's working directory and shared caches."""

    workdir: Path
    things: Path
    images: Path
    cache: Path  # session folder for artefacts that several setups build once

    def link_things(self, *names: str, folder: str = ".") -> None:
        """Link THINGS files into the working directory under their own names."""
        target = self.workdir / folder
        target.mkdir(parents=True, exist_ok=True)
        for name in names:
            (target / name).symlink_to(self.things / name)

    def link(self, name: str, source: Path) -> None:
        path = self.workdir / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.symlink_to(source)


@dataclass(frozen=True)
class Setup:
    """Preparation of an example, and a check of the results the docs quote next to it."""

    prepare: Callable[[Context], dict[str, Any]] = lambda context: {}
    check: Callable[[dict[str, Any], dict[str, Any]], None] = lambda namespace, values: None


_SESSION_ARTEFACTS: dict[str, Any] = {}


def cached(key: str, build: Callable[[], Any]) -> Any:
    """Build an artefact once per test session."""
    if key not in _SESSION_ARTEFACTS:
        _SESSION_ARTEFACTS[key] = build()
    return _SESSION_ARTEFACTS[key]


def human_triplets(context: Context) -> np.ndarray:
    return cached("human_triplets", lambda: np.loadtxt(context.things / "human_triplets.txt", dtype=np.int64))


def spose49(context: Context) -> np.ndarray:
    return cached("spose49", lambda: np.loadtxt(context.things / "spose_embedding_49d_sorted.txt"))


def prepare_fitted_models(context: Context) -> dict[str, Any]:
    """Fit short VICE models to 40 objects: the fitted estimators ``compare`` takes."""
    from dimalign.embedding import VICE
    from dimalign.triplets import sample_triplets, simulate_choices

    rng = np.random.default_rng(0)
    human_features = rng.gamma(1.0, size=(40, 4))
    dnn_features = human_features + rng.gamma(0.5, size=(40, 4))
    sampled = sample_triplets(n_objects=40, n_triplets=3000, random_state=0)
    models = []
    for seed, features in enumerate([human_features, dnn_features]):
        triplets = simulate_choices(features, sampled, random_state=seed).triplets
        model = VICE(n_dims=8, max_epochs=30, stability_epochs=30, min_objects=2, random_state=seed)
        models.append(model.fit(triplets, n_objects=40))
    return {"human_model": models[0], "dnn_model": models[1]}


def prepare_sweep(context: Context) -> dict[str, Any]:
    """Run a three-seed ``dimalign sweep`` of 30 objects into ``sweep/``."""
    from dimalign.cli import main
    from dimalign.triplets import sample_triplets, simulate_choices

    rng = np.random.default_rng(0)
    features = rng.gamma(1.0, size=(30, 3))
    triplets = simulate_choices(features, sample_triplets(30, 2000, random_state=0), random_state=0).triplets
    np.save(context.workdir / "triplets.npy", triplets)
    status = main(["-q", "sweep", "triplets.npy", "--n-objects", "30", "-o", "sweep", "--seeds", "3",
                   "--n-dims", "6", "--max-epochs", "20", "--min-objects", "2"])
    assert status == 0
    return {}


def prepare_ridge(context: Context) -> dict[str, Any]:
    """Features and embedding of the THINGS objects, split by even and odd rows.

    The VGG-16-like SRF factors stand in for VGG-16 ``classifier.4`` features,
    which are not available offline, and the published SPoSE 49-d embedding
    is the target.
    """
    features = np.load(context.things / "vgg16_srf_factors_rank200.npy")
    embedding = spose49(context).clip(min=0)
    return {
        "features": features[0::2], "embedding": embedding[0::2],
        "new_features": features[1::2], "new_embedding": embedding[1::2],
    }


def prepare_things_run(context: Context) -> dict[str, Any]:
    """Fit a 3-epoch VICE run of 40 objects into ``runs/human``, as ``dimalign fit`` does."""
    from dimalign.cli import main
    from dimalign.triplets import sample_triplets

    triplets = sample_triplets(40, 2000, random_state=0)
    np.save(context.workdir / "triplets.npy", triplets)
    status = main(["-q", "fit", "triplets.npy", "--n-objects", "40", "-o", "runs/human",
                   "--max-epochs", "3", "--n-dims", "5"])
    assert status == 0
    return {}


def prepare_things_files(context: Context) -> dict[str, Any]:
    """Link the THINGS files that the first example of docs/evaluation.md reads."""
    context.link_things("spose_embedding_49d_sorted.txt", "human_triplets.txt", "unique_id.txt")
    return {}


def prepare_evaluation(context: Context) -> dict[str, Any]:
    """The SPoSE 49-d embedding and the human triplets, as the first example of the page loads them."""
    prepare_things_files(context)
    context.link("path/to/things", context.things)
    return {"embedding": spose49(context), "triplets": human_triplets(context)}


def prepare_rsa(context: Context) -> dict[str, Any]:
    """Predicted similarities of 60 THINGS objects from two published embeddings."""
    from dimalign.analysis.similarity import similarity_matrix

    objects = np.arange(0, 1854, 31)
    vice42 = np.load(context.things / "vice_embedding_42d.npy")
    return {
        "S_model": similarity_matrix(vice42, objects=objects),
        "S_human": similarity_matrix(spose49(context), objects=objects),
    }


def prepare_relevance(context: Context) -> dict[str, Any]:
    """The SPoSE 49-d embedding and the human triplets as floats, as ``np.loadtxt`` reads them."""
    return {"embedding": spose49(context), "triplets": human_triplets(context).astype(np.float64)}


def prepare_summaries(context: Context) -> dict[str, Any]:
    from dimalign.io.triplets import split_triplets

    triplets = human_triplets(context)
    train, test = split_triplets(triplets, val_fraction=0.1, random_state=0)
    return {"triplets": triplets, "train": train, "test": test}


def prepare_vgg16_features(context: Context) -> dict[str, Any]:
    """Extract features of the eight shared photos with a randomly initialised VGG-16.

    The THINGS images and VGG-16's ImageNet weights are not available
    offline, so the folders ``vgg16/`` and ``vgg16_blocks/`` hold the same
    layers of an untrained network.
    """
    from dimalign.features import extract_features

    photos = context.workdir / "things_images"
    photos.mkdir()
    for image in sorted(context.images.glob("*.png")) + sorted(context.images.glob("*.jpg")):
        (photos / image.name).symlink_to(image)
    extract_features(photos, context.workdir / "vgg16", model="vgg16", weights="random", seed=0,
                     layers=["classifier.4"])
    extract_features(photos, context.workdir / "vgg16_blocks", model="vgg16", weights="random", seed=0,
                     layers=["features.4", "features.16", "features.30"], pools=["gap"])
    return {}


def link_photos(context: Context) -> None:
    photos = context.workdir / "photos"
    photos.mkdir()
    for image in sorted(context.images.iterdir()):
        if image.suffix in {".png", ".jpg"}:
            (photos / image.name).symlink_to(image)


def prepare_photos(context: Context) -> dict[str, Any]:
    link_photos(context)
    return {}


def prepare_own_photos(context: Context) -> dict[str, Any]:
    """The eight photos, THINGS unique_id.txt, and their features from a randomly initialised ResNet-18."""
    import torch

    from dimalign.features import extract_features
    from dimalign.features.models import LoadedModel, imagenet_transform

    link_photos(context)
    context.link_things("unique_id.txt")
    loaded = LoadedModel(
        model=build_resnet18().eval(), transform=imagenet_transform(), name="my_resnet18",
        weights_id="my_resnet18, random weights", weights_sha256=None, default_layer="fc:input",
        device=torch.device("cpu"),
    )
    extract_features(context.workdir / "photos", context.workdir / "my_features", model=loaded)
    return {}


def build_resnet18() -> Any:
    import torchvision

    return torchvision.models.resnet18(weights=None)


def check_own_network(namespace: dict[str, Any], values: dict[str, Any]) -> None:
    assert namespace["result"].n_rows == 8
    assert {name: path.as_posix() for name, path in values["result.files"].items()} == {
        "fc:input": "my_features/features.npy"
    }


def check_own_module(namespace: dict[str, Any], values: dict[str, Any]) -> None:
    """Run the command lines under the example with the block saved as my_network.py."""
    import sys

    from dimalign.cli import main
    from dimalign.features.models import LoadedModel
    from dimalign.io.files import read_manifest

    assert isinstance(namespace["build"](), LoadedModel)
    example = next(example for example in collect_examples() if example.marker == "<!-- test: setup=own_module -->")
    Path("my_network.py").write_text(example.code, encoding="utf-8")
    folder = str(Path.cwd())
    sys.path.insert(0, folder)
    try:
        status = main(["-q", "extract", "photos/", "-o", "my_features/", "--model", "my_network:build"])
    finally:
        sys.path.remove(folder)
        sys.modules.pop("my_network", None)
    assert status == 0
    settings = read_manifest("my_features")["settings"]
    assert settings["model"] == "my_network:build"
    assert settings["weights_id"] == "my_resnet18, random weights"
    assert settings["model_module_file"] == str(Path("my_network.py").resolve())
    assert read_manifest("my_features")["outputs"]["shapes"] == {"fc:input": [8, 512]}


def check_own_photos(namespace: dict[str, Any], values: dict[str, Any]) -> None:
    assert namespace["ids"] == ["bird", "cat", "dragonfly", "hotdog", "owl", "parrot", "sunflower", "uniform"]
    assert values["sorted(set(ids) - things_ids)"] == []
    assert namespace["mean_features"].shape == (8, 512)
    assert (namespace["mean_features"] >= 0).all()


def build_map(context: Context) -> Path:
    """Fit a ``dimalign map`` of EfficientNet-Lite0 features of the photos to a 3-d embedding."""
    from dimalign.cli import main
    from dimalign.features import extract_features

    root = context.cache / "map"
    photos = root / "photos"
    photos.mkdir(parents=True)
    for image in sorted(context.images.iterdir()):
        if image.suffix in {".png", ".jpg"}:
            (photos / image.name).symlink_to(image)
    extract_features(photos, root / "features", model="efficientnet_lite0", weights="pretrained")
    # An embedding of the eight photos to map onto; its values do not matter here.
    weights = np.random.default_rng(0).gamma(1.0, size=(8, 3))
    np.save(root / "embedding.npy", weights)
    (root / "objects.tsv").write_text((root / "features" / "objects.tsv").read_text(encoding="utf-8"))
    status = main(["-q", "map", str(root / "features"), "--embedding", str(root / "embedding.npy"),
                   "-o", str(root / "map"), "--folds", "2"])
    assert status == 0
    return root / "map"


def prepare_predictor(context: Context) -> dict[str, Any]:
    """A ``map/`` folder of the photos in ``photos/``, and the predictor and image of the page's example."""
    from dimalign.interpret.predictor import DimensionPredictor

    map_dir = cached("map", lambda: build_map(context))
    context.link("map", map_dir)
    link_photos(context)
    predictor = DimensionPredictor.from_map_dir(map_dir)
    image = predictor.preprocessing.load(context.workdir / "photos" / "parrot.jpg")
    return {"predictor": predictor, "image": image}


def prepare_map_only(context: Context) -> dict[str, Any]:
    """The ``map/`` and ``photos/`` folders, without the variables of later examples."""
    prepare_predictor(context)
    return {}


def prepare_quick_study(context: Context) -> dict[str, Any]:
    """Link ``examples/`` into the working directory, as at the repository root."""
    context.link("examples", REPO_ROOT / "examples")
    return {}


def build_quick_study(context: Context) -> Path:
    """Run the shortened THINGS study of docs/pipeline.md, when its example did not run before."""
    from dimalign.report.config import load_config
    from dimalign.report.pipeline import run_study

    settings = ["human_fit.max_epochs=3", "dnn_fit.max_epochs=3", "human_fit.n_dims=20", "dnn_fit.n_dims=20",
                "dnn_triplets.n_triplets=20000", "compare.similarity_objects=150", "compare.n_bootstrap=100"]
    config = load_config(REPO_ROOT / "examples" / "things_study.toml", settings)
    study = context.cache / "things-study"
    run_study(config, study)
    return study


def prepare_report(context: Context) -> dict[str, Any]:
    """A finished quick THINGS study in ``things-study/`` and the THINGS files in ``things/``."""
    context.link("things-study", cached("quick_study", lambda: build_quick_study(context)))
    context.link("things", context.things)
    return {}


def prepare_simulation(context: Context) -> dict[str, Any]:
    from dimalign.triplets import sample_triplets

    features = np.load(context.things / "vgg16_srf_factors_rank200.npy")
    return {"features": features, "triplets": sample_triplets(1854, 20_000, random_state=0)}


def prepare_human_labels(context: Context) -> dict[str, Any]:
    context.link_things("labels_49.mat", "labels_66.txt")
    return {}


def prepare_rater_labels(context: Context) -> dict[str, Any]:
    """``most_relevant_dnn.csv`` as ``dimalign compare --triplets`` writes it, for four triplets."""
    (context.workdir / "most_relevant_dnn.csv").write_text(
        "triplet_index,most_relevant_dim\n0,0\n1,0\n2,1\n3,2\n", encoding="utf-8"
    )
    return {}


def prepare_judgements(context: Context) -> dict[str, Any]:
    """``judgements.txt``: 100 human THINGS triplets in the canonical layout."""
    context.link_things("unique_id.txt")
    np.savetxt(context.workdir / "judgements.txt", human_triplets(context)[:100], fmt="%d")
    return {}


# --- checks of the numbers the docs quote


def check_things_entry(namespace: dict[str, Any], values: dict[str, Any]) -> None:
    assert values["entry.url"].startswith("https://raw.githubusercontent.com/ViCCo-Group/semantic_features_gpt_3/3b132af")
    assert values["entry.url"].endswith("/data/things/spose_embedding_49d_sorted.txt")
    assert values["entry.sha256"] == "b934fac338b803c5f87f60dfe1da90de8d62bacc346e74346a8428aa10cbe175"
    assert values["entry.size"] == 2273072


def check_loaded_run(namespace: dict[str, Any], values: dict[str, Any]) -> None:
    assert values['model.score(val) == model.history_[-1]["val_accuracy"]'] is True
    assert values["model.n_epochs_"] == 5
    assert values['VICE.load("runs/human").n_epochs_'] == 5


def check_triplet_metrics(namespace: dict[str, Any], values: dict[str, Any]) -> None:
    assert round(values["odd_one_out_accuracy(embedding, triplets)"], 4) == 0.6587
    result = values["odd_one_out_accuracy(embedding, triplets, return_ties=True)"]
    assert repr(result).startswith("AccuracyResult(accuracy=0.6587")
    assert repr(result).endswith(", n_triplets=131552, n_ties=0)")
    assert round(values["triplet_nll(embedding, triplets)"], 3) == 0.788


def check_similarity(namespace: dict[str, Any], values: dict[str, Any]) -> None:
    assert namespace["S"].shape == (1854, 1854)
    assert namespace["S"].dtype == np.float64
    assert np.allclose(namespace["S48"], namespace["S"][np.ix_([5, 17, 230], [5, 17, 230])])


def check_rsa(namespace: dict[str, Any], values: dict[str, Any]) -> None:
    assert values['correlate_vectors([1, 2, 3, 4, 100], [1, 2, 3, 4, 5], method="spearman")'] == pytest.approx(1.0)


def check_things48(namespace: dict[str, Any], values: dict[str, Any]) -> None:
    assert round(values['things48_correlation(embedding, things_dir="path/to/things")'], 3) == 0.887


def check_noise_ceiling(namespace: dict[str, Any], values: dict[str, Any]) -> None:
    ceiling = values["triplet_noise_ceiling(triplets)"]
    assert (round(ceiling.value, 4), ceiling.n_sets, ceiling.n_responses) == (0.5714, 7, 14)


def check_summary(namespace: dict[str, Any], values: dict[str, Any]) -> None:
    summary = namespace["summary"]
    assert (summary.n_triplets, summary.n_unique_sets) == (131552, 131545)
    assert (summary.n_duplicates, summary.n_conflicting_sets) == (4, 3)
    assert (summary.min_count, summary.max_count) == (172, 264)
    assert summary.unseen_objects == []


def check_sampling(namespace: dict[str, Any], values: dict[str, Any]) -> None:
    triplets = namespace["triplets"]
    assert triplets.shape == (1_000_000, 3)
    assert (triplets[:, 0] < triplets[:, 1]).all()
    assert (triplets[:, 1] < triplets[:, 2]).all()


def check_human_labels(namespace: dict[str, Any], values: dict[str, Any]) -> None:
    assert namespace["labels"][:2] == [
        "made of metal / artificial / hard", "food-related / eating-related / kitchen-related",
    ]
    assert values[STDOUT].startswith("labels_66.txt has 66 labels but the embedding has 49 dimensions: ")


def check_rater_labels(namespace: dict[str, Any], values: dict[str, Any]) -> None:
    from dimalign.labeling.analysis import Agreement

    agreement = values['analysis.rater_agreement(["visual", "semantic"], ["visual", "visual"])']
    assert agreement == Agreement(n=2, percent_agreement=50.0, kappa=0.0)
    assert namespace["resolved"] == ["visual", "semantic", "unresolved"]


def check_quick_study(namespace: dict[str, Any], values: dict[str, Any]) -> None:
    stages = ["human_fit", "dnn_triplets", "dnn_fit", "evaluate", "compare", "map", "report"]
    assert list(values["plan.to_run"]) == stages
    assert "stage" in values[STDOUT]
    assert (Path("things-study") / "report" / "report.html").is_file()
    # The example of docs/report.md reads this study instead of running it again.
    _SESSION_ARTEFACTS.setdefault("quick_study", Path("things-study").resolve())


def check_vgg16_features(namespace: dict[str, Any], values: dict[str, Any]) -> None:
    assert namespace["features"].shape == (8, 4096)
    assert namespace["conv5"].shape == (8, 512)
    assert len(namespace["objects"].object_ids) == 8


def check_extraction(namespace: dict[str, Any], values: dict[str, Any]) -> None:
    result = namespace["result"]
    assert result.n_rows == 8
    assert len(result.skipped) == 0


def check_predictor(namespace: dict[str, Any], values: dict[str, Any]) -> None:
    image = namespace["image"]
    assert tuple(image.shape) == (3, 224, 224)
    assert float(image.min()) >= 0
    assert float(image.max()) <= 1
    assert tuple(namespace["embedding"].shape) == (namespace["predictor"].n_dims,)


def check_gradcam(namespace: dict[str, Any], values: dict[str, Any]) -> None:
    assert namespace["cam"].shape == (224, 224)
    assert namespace["cam"].dtype == np.float32
    assert namespace["picture"].dtype == np.uint8


SETUPS: dict[str, Setup] = {
    "things_entry": Setup(check=check_things_entry),
    "fitted_models": Setup(prepare_fitted_models),
    "sweep": Setup(prepare_sweep),
    "ridge": Setup(prepare_ridge),
    "things_run": Setup(prepare_things_run),
    "loaded_run": Setup(prepare_things_run, check_loaded_run),
    "triplet_metrics": Setup(prepare_things_files, check_triplet_metrics),
    "evaluation": Setup(prepare_evaluation),
    "similarity": Setup(prepare_evaluation, check_similarity),
    "relevance": Setup(prepare_relevance),
    "rsa": Setup(prepare_rsa, check_rsa),
    "things48": Setup(prepare_evaluation, check_things48),
    "noise_ceiling": Setup(prepare_evaluation, check_noise_ceiling),
    "summaries": Setup(prepare_summaries, check_summary),
    "sampling": Setup(check=check_sampling),
    "simulation": Setup(prepare_simulation),
    "judgements": Setup(prepare_judgements),
    "vgg16_features": Setup(prepare_vgg16_features, check_vgg16_features),
    "photos": Setup(prepare_photos, check_extraction),
    "own_module": Setup(prepare_photos, check_own_module),
    "own_network": Setup(prepare_photos, check_own_network),
    "own_photos": Setup(prepare_own_photos, check_own_photos),
    "map": Setup(prepare_map_only, check_predictor),
    "predictor": Setup(prepare_predictor, check_gradcam),
    "manipulation": Setup(prepare_predictor),
    "human_labels": Setup(prepare_human_labels, check_human_labels),
    "rater_labels": Setup(prepare_rater_labels, check_rater_labels),
    "quick_study": Setup(prepare_quick_study, check_quick_study),
    "report": Setup(prepare_report),
}


# ---------------------------------------------------------------------------
# Running a block


def run_block(code: str, namespace: dict[str, Any], name: str) -> dict[str, Any]:
    """Execute ``code`` statement by statement.

    Returns:
        dict[str, Any]: The value of each bare expression, keyed by its
        source text, and what the block printed under :data:`STDOUT`.
    """
    tree = ast.parse(code, filename=name)
    values = {}
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        for statement in tree.body:
            source = ast.get_source_segment(code, statement)
            if isinstance(statement, ast.Expr):
                expression = compile(ast.Expression(statement.value), name, "eval")
                values[source] = eval(expression, namespace)
            else:
                exec(compile(ast.Module([statement], type_ignores=[]), name, "exec"), namespace)
    values[STDOUT] = printed.getvalue()
    return values


def run_imports(code: str, name: str) -> None:
    """Run only the top-level import statements of ``code``."""
    tree = ast.parse(code, filename=name)
    imports = [statement for statement in tree.body if isinstance(statement, (ast.Import, ast.ImportFrom))]
    exec(compile(ast.Module(imports, type_ignores=[]), name, "exec"), {})


def example_params() -> list:
    params = []
    for example in collect_examples():
        _, _, slow = parse_marker(example)
        marks = [pytest.mark.slow] if slow else []
        params.append(pytest.param(example, id=example.name, marks=marks))
    return params


def test_examples_are_found():
    examples = collect_examples()
    assert len(examples) >= 30
    assert {example.path.name for example in examples} >= {"README.md", "evaluation.md", "pipeline.md"}


def test_python_fences_use_python_tag():
    # A block fenced as ```py or ```python3 would not be collected, so it would never run.
    for path in DOC_FILES:
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            tag = line.strip().removeprefix("```").removeprefix("~~~").strip().lower()
            if line.strip().startswith(("```", "~~~")) and tag.startswith("py"):
                assert line.strip() == FENCE, f"{path.name}:{number}: write the fence as {FENCE!r}, got {line!r}"


@pytest.mark.parametrize(
    "marker, message",
    [
        ("<!-- not tested: slow -->", "needs a reason of at least"),
        ("<!-- not tested -->", "neither"),
        ("<!-- test: setup=sweep fast -->", "unknown option 'fast'"),
    ],
)
def test_marker_errors(marker, message):
    example = Example(REPO_ROOT / "README.md", 1, "pass\n", marker)
    with pytest.raises(ValueError, match=message):
        parse_marker(example)


def test_marker_options():
    example = Example(REPO_ROOT / "README.md", 1, "pass\n", "<!-- test: setup=report slow -->")
    assert parse_marker(example) == (None, "report", True)


def test_every_setup_is_used():
    used = {parse_marker(example)[1] for example in collect_examples()}
    assert set(SETUPS) <= used


@pytest.mark.parametrize("example", example_params())
def test_docs_example(example: Example, shared_data: Path, tmp_path: Path, tmp_path_factory, monkeypatch):
    reason, setup_name, _ = parse_marker(example)
    if reason is not None:
        compile(example.code, example.name, "exec")
        run_imports(example.code, example.name)
        return

    assert setup_name is None or setup_name in SETUPS, f"{example.name}: no setup named {setup_name!r}"
    setup = SETUPS[setup_name] if setup_name else Setup()
    workdir = tmp_path / "work"
    workdir.mkdir()
    cache = cached("cache_dir", lambda: tmp_path_factory.mktemp("docs-examples-cache"))
    context = Context(workdir, shared_data / "things", shared_data / "images", cache)
    monkeypatch.chdir(workdir)
    # Keep the user's download cache out of reach, so that an example reads only the files its setup provides.
    monkeypatch.setenv("DIMALIGN_DATA", str(tmp_path / "no-downloads"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    namespace = {"__name__": "__docs_example__", **setup.prepare(context)}
    with warnings.catch_warnings():
        # The examples include warnings on purpose (a small noise ceiling, tiny fits).
        warnings.simplefilter("ignore")
        values = run_block(example.code, namespace, example.name)
    setup.check(namespace, values)
