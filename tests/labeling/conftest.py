"""Fixtures of the labelling tests: a small image set, an embedding over it, studies and servers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from dimalign.io.objects import ObjectTable, write_object_table
from dimalign.io.runs import EmbeddingResult, save_embedding
from dimalign.labeling.app import create_app
from dimalign.labeling.study import create_study

REPO_ROOT = Path(__file__).resolve().parents[2]

#: Photos of animals in the shared image folder and scikit-image; dimension 0 favours them.
ANIMAL_PHOTOS = ("bird", "cat", "dragonfly", "owl", "parrot", "chelsea")

#: The 12 base photos x 3 variants give 36 images, more than the 30 cells of a grid.
N_DIMS = 12


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The read-only real data next to the repository."""
    path = REPO_ROOT.parent / "shared" / "data"
    assert path.is_dir(), f"real data folder {path} is missing"
    return path


def _base_photos(shared_data: Path) -> dict[str, np.ndarray]:
    from skimage import data as skimage_data

    photos = {}
    for path in sorted((shared_data / "images").iterdir()):
        if path.suffix.lower() in (".png", ".jpg"):
            photos[path.stem] = np.asarray(Image.open(path).convert("RGB"))
    for name in ("astronaut", "chelsea", "coffee", "rocket"):
        photos[name] = getattr(skimage_data, name)()
    return photos


@pytest.fixture(scope="session")
def image_set(tmp_path_factory, shared_data) -> tuple[Path, list[str]]:
    """A folder of 36 small images (each base photo as is, mirrored and colour-inverted).

    Returns the folder and the images' relative paths in object order.
    """
    folder = tmp_path_factory.mktemp("images")
    names = []
    for base, array in _base_photos(shared_data).items():
        image = ImageOps.fit(Image.fromarray(array), (96, 96))
        variants = {"plain": image, "mirrored": ImageOps.mirror(image), "inverted": ImageOps.invert(image)}
        for variant, picture in variants.items():
            relative = f"{variant}/{base}.png"
            (folder / variant).mkdir(exist_ok=True)
            picture.save(folder / relative)
            names.append(relative)
    return folder, names


@pytest.fixture(scope="session")
def labeling_run(tmp_path_factory, image_set) -> Path:
    """A run directory with a non-negative 36 x 12 embedding and an object table of the images.

    Dimension 0 is strongest for the animal photos and dimension 1 for the
    colour-inverted images; the other dimensions are random.
    """
    _, names = image_set
    rng = np.random.default_rng(7)
    embedding = rng.gamma(1.0, 0.2, size=(len(names), N_DIMS))
    for row, name in enumerate(names):
        variant, file_name = name.split("/")
        if Path(file_name).stem in ANIMAL_PHOTOS:
            embedding[row, 0] += 2.0
        if variant == "inverted":
            embedding[row, 1] += 2.0
    run = tmp_path_factory.mktemp("run")
    save_embedding(EmbeddingResult(embedding=embedding), run)
    ids = [name.replace("/", "_").removesuffix(".png") for name in names]
    write_object_table(ObjectTable(tuple(ids), tuple(names)), run / "objects.tsv")
    return run


@pytest.fixture
def study_path(tmp_path, labeling_run, image_set) -> Path:
    """A fresh study of the first five dimensions."""
    return create_study(tmp_path / "study.db", labeling_run, image_set[0], dims="0-4")


@pytest.fixture
def app(study_path):
    """The Flask app of ``study_path`` in testing mode, with the admin token ``secret-admin``."""
    application = create_app(study_path, admin_token="secret-admin")
    application.config["TESTING"] = True
    return application
