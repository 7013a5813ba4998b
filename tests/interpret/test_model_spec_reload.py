"""gradcam, maximize and manipulate on a map of features of a ``module:function`` network."""

from __future__ import annotations

import hashlib
import importlib
import sys
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from dimalign.cli import main
from dimalign.io.files import read_manifest

# weights_id "random-init(seed=0)" makes LoadedModel.weights "random", which a library model reloads with a seed.
NETWORK_SOURCE = '''
import torch
from torch import nn
from torchvision import transforms as T

from dimalign.features.models import LoadedModel


def build():
    with torch.random.fork_rng():
        torch.manual_seed(0)
        network = nn.Sequential(
            nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 6, 3, padding=1), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 2),
        )
    return LoadedModel(model=network.eval(), transform=T.Compose([T.Resize((16, 16)), T.ToTensor()]),
                       name="tiny", weights_id="random-init(seed=0)", weights_sha256=None,
                       default_layer="6:input", device=torch.device("cpu"))
'''


def run_cli(*argv: object) -> None:
    status = main([str(value) for value in argv])
    assert status == 0, f"dimalign {argv[0]} exited with {status}"


@pytest.fixture
def spec_map(tmp_path, monkeypatch):
    """Eight random images through extract --model spec_net:build and map, with spec_net.py on the path."""
    code = tmp_path / "user_code"
    code.mkdir()
    module = code / "spec_net.py"
    module.write_text(NETWORK_SOURCE, encoding="utf-8")
    monkeypatch.syspath_prepend(str(code))
    importlib.invalidate_caches()

    rng = np.random.default_rng(0)
    images = tmp_path / "images"
    images.mkdir()
    for index in range(8):
        Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(images / f"img{index:02d}.png")
    run_cli("extract", images, "-o", tmp_path / "features", "--model", "spec_net:build")
    embedding = tmp_path / "run"
    embedding.mkdir()
    np.save(embedding / "embedding.npy", rng.random((8, 3)))
    (embedding / "objects.tsv").write_bytes((tmp_path / "features" / "objects.tsv").read_bytes())
    run_cli("map", tmp_path / "features", "--embedding", embedding / "embedding.npy", "-o", tmp_path / "map")
    yield SimpleNamespace(root=tmp_path, images=images, map_dir=tmp_path / "map", module=module, code=code)
    sys.modules.pop("spec_net", None)


def test_map_records_module_checksum(spec_map):
    source = read_manifest(spec_map.map_dir)["settings"]["features_source"]

    assert source["model"] == "spec_net:build"
    assert source["model_module_file"] == str(spec_map.module)
    assert source["model_module_sha256"] == hashlib.sha256(spec_map.module.read_bytes()).hexdigest()


def test_commands_reload_spec_model(spec_map):
    out = spec_map.root

    run_cli("gradcam", spec_map.images / "img00.png", "--map", spec_map.map_dir, "--dim", 0, "-o", out / "gradcam")
    run_cli("maximize", "--map", spec_map.map_dir, "--dim", 1, "--steps", 2, "--n-init", 2, "--n-images", 1,
            "-o", out / "maximize")
    run_cli("manipulate", spec_map.images / "img01.png", "--map", spec_map.map_dir, "--edits", "grayscale",
            "-o", out / "manipulate")

    assert pd.read_csv(out / "gradcam" / "gradcam.csv")["dimension"].tolist() == [0]
    assert Image.open(out / "gradcam" / "img00_dim0_heatmap.png").size == (16, 16)
    assert Image.open(out / "maximize" / "dim1_image0.png").size == (16, 16)
    assert len(pd.read_csv(out / "manipulate" / "manipulations.csv")) == 3


def test_predictor_features_match_extraction(spec_map):
    import torch

    from dimalign.interpret.predictor import DimensionPredictor
    from dimalign.io.features import load_features

    predictor = DimensionPredictor.from_map_dir(spec_map.map_dir)
    features, _ = load_features(spec_map.root / "features")
    image = predictor.preprocessing.load(spec_map.images / "img03.png")

    with torch.no_grad():
        computed = predictor.features(image[None]).numpy()

    np.testing.assert_allclose(computed[0], np.asarray(features)[3], atol=1e-5)


def test_changed_module_rejected(spec_map, capsys):
    before = hashlib.sha256(spec_map.module.read_bytes()).hexdigest()
    edited = NETWORK_SOURCE.replace("nn.Conv2d(4, 6, 3, padding=1)", "nn.Conv2d(4, 6, 3, padding=1, bias=False)")
    assert edited != NETWORK_SOURCE
    spec_map.module.write_text(edited, encoding="utf-8")
    after = hashlib.sha256(spec_map.module.read_bytes()).hexdigest()

    status = main(["gradcam", str(spec_map.images / "img00.png"), "--map", str(spec_map.map_dir), "--dim", "0",
                   "-o", str(spec_map.root / "gradcam")])

    assert status == 1
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"dimalign gradcam: error: model spec_net:build: the module file {spec_map.module} changed since the "
        f"features were extracted (SHA-256 {before} then, {after} now), so it may build another network "
        "than the one whose features were mapped; restore that version of the module, or extract the "
        "features again with dimalign extract and fit the map again with dimalign map"
    )
    assert not (spec_map.root / "gradcam").exists()


def test_changed_module_rejected_before_import(spec_map, capsys):
    marker = spec_map.root / "imported.txt"
    spec_map.module.write_text(f"open({str(marker)!r}, 'w').close()\ndef build(:\n", encoding="utf-8")
    sys.modules.pop("spec_net")
    importlib.invalidate_caches()

    status = main(["manipulate", str(spec_map.images / "img00.png"), "--map", str(spec_map.map_dir),
                   "-o", str(spec_map.root / "manipulate")])

    assert status == 1
    assert "the module file" in capsys.readouterr().err.strip().splitlines()[-1]
    assert not marker.exists()
    assert not (spec_map.root / "manipulate").exists()


def test_module_off_path_names_folder(spec_map, monkeypatch, capsys):
    monkeypatch.setattr(sys, "path", [entry for entry in sys.path if entry != str(spec_map.code)])
    monkeypatch.delitem(sys.modules, "spec_net")
    importlib.invalidate_caches()

    status = main(["maximize", "--map", str(spec_map.map_dir), "--dim", "0", "-o", str(spec_map.root / "maximize")])

    assert status == 1
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"dimalign maximize: error: model spec_net:build: module 'spec_net' not found on the Python path; "
        f"the features were extracted with {spec_map.module}, so add {spec_map.code} to PYTHONPATH "
        f"(PYTHONPATH={spec_map.code} dimalign ...)"
    )


def test_weights_option_rejected_for_spec(spec_map, capsys):
    weights = spec_map.root / "other.pth"
    weights.write_bytes(b"")

    status = main(["manipulate", str(spec_map.images / "img01.png"), "--map", str(spec_map.map_dir),
                   "--edits", "grayscale", "--weights", str(weights), "-o", str(spec_map.root / "manipulate")])

    assert status == 1
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"dimalign manipulate: error: the map {spec_map.map_dir} was fitted on features of the network of "
        f"your own spec_net:build, whose function sets its weights, so --weights {weights} does not apply; "
        "leave out --weights (Python: weights=)"
    )


def test_given_model_of_changed_module(spec_map):
    from dimalign.features.models import load_model
    from dimalign.interpret.predictor import DimensionPredictor

    before = hashlib.sha256(spec_map.module.read_bytes()).hexdigest()
    spec_map.module.write_text(NETWORK_SOURCE + "\n# retrained\n", encoding="utf-8")
    after = hashlib.sha256(spec_map.module.read_bytes()).hexdigest()
    loaded = load_model("spec_net:build")

    with pytest.raises(ValueError) as caught:
        DimensionPredictor.from_map_dir(spec_map.map_dir, model=loaded)

    assert str(caught.value) == (
        f"the given model spec_net:build comes from the module file {spec_map.module} (SHA-256 {after}), "
        f"but the features of the map {spec_map.map_dir} were extracted with the module file "
        f"{spec_map.module} (SHA-256 {before}), so the predictor would explain another network; restore "
        "that version of the module, or extract the features and fit the map again"
    )
