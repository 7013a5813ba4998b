"""The features stage: images of the shared folder -> one EfficientNet-Lite0 feature row per object."""

from __future__ import annotations

import numpy as np
import pytest

from dimalign.io.objects import read_object_table
from dimalign.report.pipeline import run_study
from dimalign.report.stage_records import read_stage_record
from dimalign.report.stages import images_per_object

OBJECTS = ("bird", "cat", "dragonfly", "grace_hopper", "sunflower", "hot_dog", "owl", "parrot")


def test_images_per_object_by_stem_or_folder():
    rows = images_per_object(("a", "b", "c"), ("a.png", "b/1.jpg", "b/2.jpg", "c.jpeg", "d.png"))
    assert rows == [[0], [1, 2], [3]]


def test_object_without_image_is_listed():
    with pytest.raises(ValueError, match=r"1 objects have no image: \['c'\]"):
        images_per_object(("a", "c"), ("a.png", "b.png"))


def test_features_stage_feeds_simulation(shared_data, tmp_path):
    (tmp_path / "objects.txt").write_text("\n".join(OBJECTS) + "\n")
    (tmp_path / "study.toml").write_text(
        "[inputs]\n"
        'objects = "objects.txt"\n'
        f'images = "{shared_data / "images"}"\n'
        "[features]\nbatch_size = 4\n"
        "[dnn_triplets]\nn_triplets = 50\nval_fraction = 0.2\n"
    )
    study_dir = tmp_path / "study"
    plan = run_study(tmp_path / "study.toml", study_dir)
    assert plan.to_run == ["features", "dnn_triplets"]

    features = np.load(study_dir / "features" / "features.npy")
    assert features.shape == (8, 1280)
    assert read_object_table(study_dir / "features" / "objects.tsv").object_ids == OBJECTS
    # One image per object, so each row is that image's feature row from the extraction.
    extracted = np.load(study_dir / "features" / "extract" / "features.npy")
    extracted_ids = read_object_table(study_dir / "features" / "extract" / "objects.tsv").object_ids
    row = [name.rsplit(".", 1)[0] for name in extracted_ids].index("owl")
    np.testing.assert_allclose(features[OBJECTS.index("owl")], extracted[row], rtol=1e-6)

    record = read_stage_record(study_dir / "dnn_triplets")
    assert record["upstream"] == {"features": read_stage_record(study_dir / "features")["hash"]}
    assert len(np.load(study_dir / "dnn_triplets" / "train.npy")) == 40
    assert len(np.load(study_dir / "dnn_triplets" / "val.npy")) == 10


def test_weights_file_resolves_from_study_folder(shared_data, tmp_path, monkeypatch):
    from dimalign.report.config import load_config
    from dimalign.report.pipeline import plan_study

    (tmp_path / "objects.txt").write_text("bird\ncat\nowl\n")
    (tmp_path / "models").mkdir()
    weights = tmp_path / "models" / "effnet.pt"
    weights.write_bytes(b"first")
    (tmp_path / "study.toml").write_text(
        f'[inputs]\nobjects = "objects.txt"\nimages = "{shared_data / "images"}"\n'
        '[features]\nweights = "models/effnet.pt"\n'
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)

    stage = plan_study(load_config(tmp_path / "study.toml"), tmp_path / "study").stage("features")
    assert stage.inputs["weights"] == weights
    assert stage.settings["weights"] == "models/effnet.pt"
    # New weights under the same name give the features stage another hash.
    weights.write_bytes(b"second")
    assert plan_study(load_config(tmp_path / "study.toml"), tmp_path / "study").stage("features").hash != stage.hash
    # Weights names are no files.
    overrides = ['features.weights="pretrained"']
    assert "weights" not in plan_study(load_config(tmp_path / "study.toml", overrides), tmp_path / "s").stage(
        "features").inputs

    weights.unlink()
    with pytest.raises(FileNotFoundError, match=rf"weights file {weights} not found: features.weights = "
                       rf"'models/effnet.pt' \(in .*study.toml; relative paths start at {tmp_path}\)"):
        plan_study(load_config(tmp_path / "study.toml"), tmp_path / "study")


def test_features_stage_decoding_reaches_report(shared_data, tmp_path, capsys):
    from dimalign.cli import main
    from dimalign.features.recorded import Decoding
    from dimalign.io.files import read_manifest
    from dimalign.report.results import StudyResults

    (tmp_path / "objects.txt").write_text("\n".join(OBJECTS) + "\n")
    (tmp_path / "study.toml").write_text(
        "[inputs]\n"
        'objects = "objects.txt"\n'
        f'images = "{shared_data / "images"}"\n'
        '[features]\nbatch_size = 8\nbackground = "0,128,0"\nexif_transpose = false\n'
        "[dnn_triplets]\nn_triplets = 50\nval_fraction = 0.2\n"
    )
    study_dir = tmp_path / "study"
    run_study(tmp_path / "study.toml", study_dir)

    extracted = read_manifest(study_dir / "features" / "extract")["settings"]
    assert extracted["background"] == [0, 128, 0]
    assert extracted["exif_transpose"] is False
    source = str((study_dir / "features" / "manifest.json").resolve())
    assert StudyResults(study_dir).decoding == Decoding((0, 128, 0), False, source)

    status = main(["report", str(study_dir), "-o", str(tmp_path / "report.html"), "--background", "white",
                   "--images", str(shared_data / "images")])

    error = capsys.readouterr().err
    assert status != 0
    assert "--background white (RGB 255,255,255) contradicts the background 0,128,0" in error
    assert source in error
    assert not (tmp_path / "report.html").exists()


def test_default_decoding_keeps_stage_hash(shared_data, tmp_path):
    from dimalign.report.config import load_config
    from dimalign.report.pipeline import plan_study

    base = f'[inputs]\nobjects = "objects.txt"\nimages = "{shared_data / "images"}"\n[features]\n'
    (tmp_path / "objects.txt").write_text("bird\ncat\n")
    (tmp_path / "plain.toml").write_text(base)
    (tmp_path / "explicit.toml").write_text(base + 'background = "white"\nexif_transpose = true\n')
    (tmp_path / "black.toml").write_text(base + 'background = "black"\n')

    def features_hash(name):
        return plan_study(load_config(tmp_path / name), tmp_path / "study").stage("features").hash

    assert features_hash("plain.toml") == features_hash("explicit.toml")
    assert features_hash("plain.toml") != features_hash("black.toml")


def test_features_stage_invalid_background(shared_data, tmp_path):
    from dimalign.report.config import load_config
    from dimalign.report.pipeline import plan_study

    (tmp_path / "objects.txt").write_text("bird\n")
    (tmp_path / "study.toml").write_text(
        f'[inputs]\nobjects = "objects.txt"\nimages = "{shared_data / "images"}"\n[features]\nbackground = "mauvish"\n'
    )

    with pytest.raises(ValueError, match=r"features.background = 'mauvish' is invalid: invalid background colour"):
        plan_study(load_config(tmp_path / "study.toml"), tmp_path / "study")


def test_object_without_image_fails_in_plan(shared_data, tmp_path):
    from dimalign.report.config import load_config
    from dimalign.report.pipeline import plan_study

    (tmp_path / "objects.txt").write_text("bird\nhotdog\ncat\n")
    (tmp_path / "study.toml").write_text(
        f'[inputs]\nobjects = "objects.txt"\nimages = "{shared_data / "images"}"\n[features]\n'
    )

    with pytest.raises(ValueError) as error:
        plan_study(load_config(tmp_path / "study.toml"), tmp_path / "study")

    assert str(error.value) == (
        "1 objects have no image: ['hotdog']; name images <object_id>.<ext> or put them in a folder "
        "<object_id>/. The images of no object are named ['dragonfly', 'grace_hopper', 'hot_dog', 'owl', "
        f"'parrot', 'sunflower'] (stage features of {tmp_path / 'study.toml'})"
    )
    assert not (tmp_path / "study").exists()


@pytest.mark.parametrize("model", ["resnet18", "vgg16", "timm:resnet18"])
def test_gap_on_default_layer_fails_in_plan(shared_data, tmp_path, model):
    from dimalign.report.config import load_config
    from dimalign.report.pipeline import plan_study

    (tmp_path / "objects.txt").write_text("bird\ncat\nowl\n")
    (tmp_path / "study.toml").write_text(
        f'[inputs]\nobjects = "objects.txt"\nimages = "{shared_data / "images"}"\n'
        f'[features]\nmodel = "{model}"\nweights = "random"\n'
    )

    with pytest.raises(ValueError) as error:
        plan_study(load_config(tmp_path / "study.toml"), tmp_path / "study")

    assert str(error.value) == (
        f'features.pool = "gap" does not fit the default layer of {model}, the input of its last Linear '
        "layer (or VGG's classifier.4), which has one value per feature and no spatial axes to average: "
        'set features.pool = "flatten", or name a convolutional layer with features.layer '
        f"(stage features of {tmp_path / 'study.toml'})"
    )


def test_images_of_no_object_listed():
    with pytest.raises(ValueError, match=r"The images of no object are named \['b'\]$"):
        images_per_object(("a", "c"), ("a.png", "b.png"))


def test_features_stage_extracts_only_object_images(shared_data, tmp_path):
    (tmp_path / "objects.txt").write_text("owl\nbird\nparrot\n")
    (tmp_path / "study.toml").write_text(
        f'[inputs]\nobjects = "objects.txt"\nimages = "{shared_data / "images"}"\n[features]\nbatch_size = 4\n'
    )
    study_dir = tmp_path / "study"
    run_study(tmp_path / "study.toml", study_dir)

    extracted_ids = read_object_table(study_dir / "features" / "extract" / "objects.tsv").object_ids
    assert extracted_ids == ("bird.png", "owl.jpg", "parrot.jpg")
    features = np.load(study_dir / "features" / "features.npy")
    extracted = np.load(study_dir / "features" / "extract" / "features.npy")
    np.testing.assert_array_equal(features, extracted[[1, 0, 2]])


def test_model_module_is_stage_input(shared_data, tmp_path, monkeypatch):
    import importlib

    from dimalign.report.config import load_config
    from dimalign.report.pipeline import plan_study

    code = tmp_path / "code"
    code.mkdir()
    module = code / "study_net_a.py"
    module.write_text("def build():\n    return None\n", encoding="utf-8")
    monkeypatch.syspath_prepend(str(code))
    importlib.invalidate_caches()
    (tmp_path / "objects.txt").write_text("bird\ncat\nowl\n")
    (tmp_path / "study.toml").write_text(
        f'[inputs]\nobjects = "objects.txt"\nimages = "{shared_data / "images"}"\n'
        '[features]\nmodel = "study_net_a:build"\npool = "flatten"\n'
    )

    stage = plan_study(load_config(tmp_path / "study.toml"), tmp_path / "study").stage("features")
    module.write_text("def build():\n    return 1\n", encoding="utf-8")
    changed = plan_study(load_config(tmp_path / "study.toml"), tmp_path / "study").stage("features")

    assert stage.inputs["model_module"] == module
    assert changed.hash != stage.hash


def test_model_spec_allows_gap(shared_data, tmp_path, monkeypatch):
    import importlib

    from dimalign.report.config import load_config
    from dimalign.report.pipeline import plan_study

    code = tmp_path / "code"
    code.mkdir()
    (code / "study_net_b.py").write_text("def build():\n    return None\n", encoding="utf-8")
    monkeypatch.syspath_prepend(str(code))
    importlib.invalidate_caches()
    (tmp_path / "objects.txt").write_text("bird\ncat\nowl\n")
    (tmp_path / "study.toml").write_text(
        f'[inputs]\nobjects = "objects.txt"\nimages = "{shared_data / "images"}"\n'
        '[features]\nmodel = "study_net_b:build"\n'
    )

    stage = plan_study(load_config(tmp_path / "study.toml"), tmp_path / "study").stage("features")

    assert stage.settings["pool"] == "gap"
