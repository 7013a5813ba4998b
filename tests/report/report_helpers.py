"""A tiny study (24 objects) that the pipeline, figure and report tests run in seconds."""

from __future__ import annotations

from pathlib import Path

import numpy as np

N_OBJECTS = 24
CATEGORIES = ("animal", "bird", "tool")
KINDS = ("visual", "semantic", "mixed")


def object_names() -> list[str]:
    """Names of the tiny study's objects (one is written with HTML characters on purpose)."""
    names = [f"object{index:02d}" for index in range(N_OBJECTS)]
    names[5] = "<i>odd & co"
    return names


def write_data(folder: Path, *, images: bool = False) -> Path:
    """Write objects, human triplets, features, categories (and images) of a planted 3-dimensional space."""
    from PIL import Image

    from dimalign.io.triplets import save_triplets
    from dimalign.triplets import sample_triplets, simulate_choices

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    names = object_names()
    (folder / "objects.txt").write_text("\n".join(names) + "\n", encoding="utf-8")

    # Each object loads mostly on one of three planted dimensions.
    planted = rng.random((N_OBJECTS, 3)) * 0.3
    planted[np.arange(N_OBJECTS), np.arange(N_OBJECTS) % 3] += 2.0
    sampled = sample_triplets(N_OBJECTS, 1500, random_state=1)
    human = simulate_choices(planted, sampled, rule="softmax", temperature=0.5, random_state=2).triplets
    # Ten object sets judged twice give the noise ceiling something to count.
    human = np.concatenate([human, human[:10, [1, 0, 2]]])
    save_triplets(human, folder / "human_triplets.txt")

    features = np.hstack([planted, rng.random((N_OBJECTS, 5)) * 0.2])
    np.save(folder / "features.npy", features)

    # Category of object i: animal for i % 3 == 0, bird (and animal) for i % 3 == 1,
    # tool for i % 6 == 2, none for i % 6 == 5.
    rows = ["\t".join(CATEGORIES)]
    for index in range(N_OBJECTS):
        membership = [index % 3 in (0, 1), index % 3 == 1, index % 6 == 2]
        rows.append("\t".join(str(int(value)) for value in membership))
    (folder / "categories.tsv").write_text("\n".join(rows) + "\n", encoding="utf-8")

    if images:
        image_dir = folder / "images"
        image_dir.mkdir(exist_ok=True)
        for index, name in enumerate(names):
            color = tuple(int(value) for value in rng.integers(0, 255, 3))
            Image.new("RGB", (32, 32), color).save(image_dir / f"{name}.png")
    return folder


STUDY_TEMPLATE = """\
[study]
name = "Tiny study"
data_dir = "data"
seed = 0

[inputs]
objects = "${{data_dir}}/objects.txt"
human_triplets = "${{data_dir}}/human_triplets.txt"
dnn_features = "${{data_dir}}/features.npy"
categories = "${{data_dir}}/categories.tsv"
{extra_inputs}

[human_fit]
n_dims = 6
max_epochs = 3
batch_size = 64
min_objects = 1
mc_samples = 5
val_fraction = 0.2

[dnn_triplets]
n_triplets = 800
val_fraction = 0.2

[dnn_fit]
n_dims = 6
max_epochs = 3
batch_size = 64
min_objects = 1
mc_samples = 5
seed = 1

[evaluate]

[compare]
n_bootstrap = 20
top_k = 3

[map]
n_alphas = 5
{report}"""


def write_study(root: Path, *, images: bool = False, report: bool = True) -> Path:
    """Write the data and a study file into ``root`` and return the study file."""
    write_data(root / "data", images=images)
    extra = 'images = "${data_dir}/images"' if images else ""
    text = STUDY_TEMPLATE.format(extra_inputs=extra, report="\n[report]\ntop_k = 4\nn_disagreements = 3\n" if report else "")
    path = root / "study.toml"
    path.write_text(text, encoding="utf-8")
    return path


def write_labels(folder: Path, dims: dict[str, int]) -> Path:
    """Write a labels summary like ``dimalign labels summarize``: dimensions.csv, shares.csv and word clouds.

    Args:
        folder (Path): The summary folder.
        dims (dict[str, int]): Dimensions per embedding name (``human_fit``, ``dnn_fit``).
    """
    import pandas as pd

    from dimalign.labeling import analysis

    cloud_dir = folder / "wordclouds"
    cloud_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    kinds_by_embedding = {}
    for embedding, n_dims in dims.items():
        kinds = []
        for dim in range(n_dims):
            kind = KINDS[dim % len(KINDS)]
            kinds.append(kind)
            frequencies = analysis.label_frequencies([f"label {dim}", f"label {dim}", "round </script>"])
            cloud = cloud_dir / f"{embedding}_dim{dim}.png"
            analysis.write_word_cloud(frequencies, cloud, width=120, height=60)
            rows.append({
                "embedding": embedding, "dimension": dim, "n_answers": 2,
                "top_labels": analysis.format_top_labels(analysis.top_labels(frequencies)),
                "resolved_kind": kind, "resolved_interpretability": "one",
                "wordcloud": f"wordclouds/{cloud.name}",
            })
        kinds_by_embedding[embedding] = kinds
    pd.DataFrame(rows).to_csv(folder / "dimensions.csv", index=False)
    analysis.kind_shares(kinds_by_embedding).to_csv(folder / "shares.csv", index=False)
    return folder


CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
    "--disable-sync", "--no-first-run", "--disable-quic",
]


def open_report(playwright, path, width: int = 1200):
    """Open a report file; return the browser, the page and the lists of failed requests and console errors."""
    browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", headless=True, args=CHROMIUM_ARGS)
    page = browser.new_page(viewport={"width": width, "height": 900})
    failed, errors, requests = [], [], []
    page.on("requestfailed", lambda request: failed.append(request.url))
    page.on("request", lambda request: requests.append(request.url))
    page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(path.resolve().as_uri())
    page.wait_for_load_state("load")
    return browser, page, failed, errors, requests
