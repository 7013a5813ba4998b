"""A study that reads a given human embedding (inputs.human_embedding) in place of a human fit."""

from __future__ import annotations

import json
import logging
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from report_helpers import N_OBJECTS, STUDY_TEMPLATE, write_data

from dimalign.io.objects import ObjectTable, write_object_table
from dimalign.io.runs import load_embedding
from dimalign.io.triplets import load_triplets
from dimalign.report.config import load_config
from dimalign.report.pipeline import plan_study, run_study

pytestmark = pytest.mark.filterwarnings("ignore:the chosen ridge penalty")

READERS = ["human_fit", "evaluate", "compare", "map"]


def embedding_study(root: Path, *, triplets: bool = True, human_fit: str = "", compare: str = "") -> Path:
    """Write the tiny study's data, a 24 x 3 embedding and a study file that names it."""
    data = write_data(root / "data")
    rng = np.random.default_rng(3)
    planted = rng.random((N_OBJECTS, 3)) * 0.3
    planted[np.arange(N_OBJECTS), np.arange(N_OBJECTS) % 3] += 2.0
    np.savetxt(data / "embedding.txt", planted, fmt="%.6f")
    text = STUDY_TEMPLATE.format(extra_inputs='human_embedding = "${data_dir}/embedding.txt"', report="\n[report]\n")
    # The human fit's table is replaced by the given one (empty by default).
    start, end = text.index("[human_fit]"), text.index("[dnn_triplets]")
    text = text[:start] + (f"[human_fit]\n{human_fit}\n\n" if human_fit else "") + text[end:]
    if not triplets:
        text = text.replace('human_triplets = "${data_dir}/human_triplets.txt"\n', "")
    if compare:
        text = text.replace("[compare]\n", f"[compare]\n{compare}\n")
    text = text.replace("[map]\n", '[map]\ntarget = "human"\n')
    path = root / "study.toml"
    path.write_text(text, encoding="utf-8")
    return path


class ListHandler(logging.Handler):
    """Collect the messages of a logger, for a fixture shared by several tests."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(f"{record.levelname} {record.getMessage()}")


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("embedding")
    config = embedding_study(root)
    study_dir = root / "study"
    handler = ListHandler()
    stage_logger = logging.getLogger("dimalign.report.stages")
    previous = stage_logger.level
    stage_logger.setLevel(logging.INFO)
    stage_logger.addHandler(handler)
    try:
        plan = run_study(load_config(config), study_dir)
    finally:
        stage_logger.removeHandler(handler)
        stage_logger.setLevel(previous)
    assert plan.to_run == ["human_fit", "dnn_triplets", "dnn_fit", "evaluate", "compare", "map", "report"]
    (root / "log.txt").write_text("\n".join(handler.messages) + "\n", encoding="utf-8")
    return config, study_dir


def test_logs_say_not_held_out(study):
    config, study_dir = study
    data = study_dir.parent / "data"
    messages = (study_dir.parent / "log.txt").read_text(encoding="utf-8").splitlines()
    assert (
        f"WARNING human_fit: the stages that score the human embedding {data / 'embedding.txt'} use all 1510 "
        f"triplets of {data / 'human_triplets.txt'}, which are not held out: a published embedding may have "
        "been trained on them"
    ) in messages
    assert (
        "WARNING evaluate: scored the given human embedding on all 1510 human triplets, which are not held out. "
        "A published embedding may have been trained on them, so its accuracy may be optimistic"
    ) in messages
    assert (
        "WARNING compare: the jackknife explains human triplets that are not held out, because the human "
        "embedding is the given inputs.human_embedding, which may have been trained on them"
    ) in messages


def test_plan_names_embedding_reason(study):
    config, study_dir = study
    plan = plan_study(load_config(config), study_dir)
    assert plan.stage("human_fit").action == "skip"
    assert plan.stage("human_fit").reasons == ["unchanged", "uses inputs.human_embedding, no fit"]
    assert "uses inputs.human_embedding, no fit" in plan.format()


def test_stages_read_given_embedding(study):
    config, study_dir = study
    expected = np.loadtxt(study_dir.parent / "data" / "embedding.txt")
    np.testing.assert_array_equal(load_embedding(study_dir / "human_fit").embedding, expected)
    assert not (study_dir / "human_fit" / "history.csv").exists()
    assert not (study_dir / "human_fit" / "checkpoint.pt").exists()
    every = load_triplets(study_dir.parent / "data" / "human_triplets.txt", N_OBJECTS)
    np.testing.assert_array_equal(load_triplets(study_dir / "human_fit" / "val.npy", N_OBJECTS), every)
    ridge = json.loads((study_dir / "map" / "manifest.json").read_text())
    assert ridge["inputs"]["embedding"]["path"] == str(study_dir / "human_fit" / "embedding.npz")


def test_evaluate_says_not_held_out(study):
    config, study_dir = study
    human = json.loads((study_dir / "evaluate" / "human.json").read_text())
    assert human["held_out"] is False
    assert human["n_triplets"] == 1510
    summary = json.loads((study_dir / "evaluate" / "summary.json").read_text())
    assert summary["human"]["held_out"] is False
    assert "dnn" in summary
    assert "held_out" not in summary["dnn"]


def test_report_says_not_held_out(study):
    config, study_dir = study
    html = (study_dir / "report" / "report.html").read_text(encoding="utf-8")
    assert "not held out" in html
    assert "inputs.human_embedding" in html
    human = json.loads((study_dir / "evaluate" / "human.json").read_text())
    summary = json.loads((study_dir / "evaluate" / "summary.json").read_text())
    assert '<th scope="row">Held-out triplets</th><td>1,510 (all, not held out)</td>' in html
    accuracy = f"{human['accuracy']:.3f} (not held out)"
    assert f'<th scope="row">Held-out odd-one-out accuracy</th><td>{accuracy}</td>' in html
    on_human = f"{summary['dnn_embedding_on_human_val_accuracy']:.3f} (human triplets not held out)"
    assert f"<td></td><td>{on_human}</td>" in html


def test_edited_embedding_reruns_readers(study, tmp_path):
    config, study_dir = study
    copy_root = tmp_path / "copy"
    shutil.copytree(study_dir.parent, copy_root)
    path = copy_root / "data" / "embedding.txt"
    values = np.loadtxt(path)
    values[0, 0] += 1.0
    np.savetxt(path, values, fmt="%.6f")
    plan = plan_study(load_config(copy_root / "study.toml"), copy_root / "study")
    assert plan.stage("human_fit").reasons == ["input changed: human_embedding", "uses inputs.human_embedding, no fit"]
    assert plan.to_run == READERS + ["report"]


def test_fit_settings_with_embedding_rejected(tmp_path):
    config = embedding_study(tmp_path, human_fit="n_dims = 6\nmax_epochs = 3")
    with pytest.raises(ValueError) as error:
        plan_study(load_config(config), tmp_path / "study")
    message = str(error.value)
    assert "human_fit.max_epochs, human_fit.n_dims" in message
    assert "inputs.human_embedding" in message
    assert str(config) in message


def test_triplet_format_settings_allowed(tmp_path):
    config = embedding_study(tmp_path, human_fit="one_based = false\nodd_column = 2")
    plan = plan_study(load_config(config), tmp_path / "study")
    assert plan.stage("human_fit").settings == {"one_based": False, "odd_column": 2}


def test_evaluate_without_triplets_names_key(tmp_path):
    config = embedding_study(tmp_path, triplets=False)
    with pytest.raises(ValueError, match=r"stage evaluate scores the human embedding on inputs\.human_triplets"):
        plan_study(load_config(config), tmp_path / "study")


def test_relevance_without_triplets_names_key(tmp_path):
    config = embedding_study(tmp_path, triplets=False)
    text = config.read_text().replace("[evaluate]\n", "")
    config.write_text(text)
    with pytest.raises(ValueError, match=r"compare\.relevance_triplets = 0"):
        plan_study(load_config(config), tmp_path / "study")


def test_compare_without_triplets_plans(tmp_path):
    config = embedding_study(tmp_path, triplets=False, compare="relevance_triplets = 0")
    config.write_text(config.read_text().replace("[evaluate]\n", ""))
    plan = plan_study(load_config(config), tmp_path / "study")
    assert plan.to_run == ["human_fit", "dnn_triplets", "dnn_fit", "compare", "map", "report"]
    assert sorted(plan.stage("human_fit").inputs) == ["human_embedding", "objects"]


def test_embedding_row_count_rejected(tmp_path):
    config = embedding_study(tmp_path)
    path = tmp_path / "data" / "embedding.txt"
    np.savetxt(path, np.loadtxt(path)[:23], fmt="%.6f")
    with pytest.raises(ValueError) as error:
        plan_study(load_config(config), tmp_path / "study")
    message = str(error.value)
    assert f"inputs.human_embedding {path} has 23 rows" in message
    assert f"inputs.objects {tmp_path / 'data' / 'objects.txt'} lists 24 objects" in message


def test_negative_embedding_value_rejected(tmp_path):
    config = embedding_study(tmp_path)
    path = tmp_path / "data" / "embedding.txt"
    values = np.loadtxt(path)
    values[2, 1] = -0.5
    np.savetxt(path, values, fmt="%.6f")
    with pytest.raises(ValueError) as error:
        plan_study(load_config(config), tmp_path / "study")
    message = str(error.value)
    assert str(path) in message
    assert "the lowest -0.5 at row 2, dimension 1" in message


def test_nan_embedding_value_rejected(tmp_path):
    config = embedding_study(tmp_path)
    path = tmp_path / "data" / "embedding.txt"
    values = np.loadtxt(path)
    values[3, 0] = np.nan
    values[7, 2] = np.nan
    np.savetxt(path, values, fmt="%.6f")
    with pytest.raises(ValueError) as error:
        plan_study(load_config(config), tmp_path / "study")
    message = str(error.value)
    assert f"inputs.human_embedding {path}: NaN or inf at row 3, column 0 (2 values)" in message


def test_embedding_without_columns_rejected(tmp_path):
    config = embedding_study(tmp_path)
    path = tmp_path / "data" / "embedding.npy"
    np.save(path, np.zeros((N_OBJECTS, 0)))
    text = config.read_text(encoding="utf-8").replace("embedding.txt", "embedding.npy")
    config.write_text(text, encoding="utf-8")

    with pytest.raises(ValueError) as error:
        plan_study(load_config(config), tmp_path / "study")

    assert str(error.value).startswith(
        f"inputs.human_embedding {path} has no columns, so it gives the objects no dimension: check that "
        "it is the right file, which needs one column per dimension"
    )


def test_embedding_of_zeros_rejected(tmp_path):
    config = embedding_study(tmp_path)
    path = tmp_path / "data" / "embedding.txt"
    np.savetxt(path, np.zeros((N_OBJECTS, 3)), fmt="%.6f")

    with pytest.raises(ValueError) as error:
        plan_study(load_config(config), tmp_path / "study")

    assert str(error.value).startswith(
        f"inputs.human_embedding {path}: every weight is 0, so all objects are equally similar and no "
        "stage can use it: check that it is the right file"
    )


def test_overflowing_embedding_rejected(tmp_path):
    config = embedding_study(tmp_path)
    path = tmp_path / "data" / "embedding.txt"
    values = np.loadtxt(path)
    values[5, 2] = 1e200
    np.savetxt(path, values, fmt="%.6g")

    with pytest.raises(ValueError) as error:
        plan_study(load_config(config), tmp_path / "study")

    assert str(error.value).startswith(
        f"inputs.human_embedding {path}: the dot product of row 5 with itself is beyond float64 (largest "
        "weight 1e+200), so its similarities are undefined: check that it is the right file, or divide "
        "its weights by a common factor"
    )


def test_fit_folder_of_other_objects_rejected(tmp_path, study):
    config = embedding_study(tmp_path)
    run_dir = tmp_path / "data" / "other_fit"
    shutil.copytree(study[1] / "human_fit", run_dir)
    names = [f"thing{index:02d}" for index in range(N_OBJECTS)]
    write_object_table(ObjectTable(tuple(names)), run_dir / "objects.tsv")
    config.write_text(config.read_text().replace("${data_dir}/embedding.txt", "${data_dir}/other_fit"))
    with pytest.raises(ValueError) as error:
        plan_study(load_config(config), tmp_path / "study")
    message = str(error.value)
    assert f"{run_dir / 'objects.tsv'} lists other objects than inputs.objects" in message
    assert re.search(r"row 0: 'thing00' instead of 'object00'", message)


def test_fit_folder_of_same_objects_used(tmp_path, study):
    config = embedding_study(tmp_path)
    run_dir = tmp_path / "data" / "same_fit"
    shutil.copytree(study[1] / "human_fit", run_dir)
    config.write_text(config.read_text().replace("${data_dir}/embedding.txt", "${data_dir}/same_fit"))
    plan = plan_study(load_config(config), tmp_path / "study")
    assert plan.stage("human_fit").inputs["human_embedding"] == run_dir


def test_spose49_example_plans(things_dir, tmp_path):
    example = Path(__file__).resolve().parents[2] / "examples" / "things_spose49_study.toml"
    plan = plan_study(load_config(example), tmp_path / "study")
    assert plan.to_run == ["human_fit", "dnn_triplets", "dnn_fit", "evaluate", "compare", "map", "report"]
    human_fit = plan.stage("human_fit")
    assert human_fit.reasons == ["new", "uses inputs.human_embedding, no fit"]
    assert human_fit.inputs["human_embedding"] == things_dir / "spose_embedding_49d_sorted.txt"


def test_removed_embedding_plans_fit(study, tmp_path):
    config, study_dir = study
    copy_root = tmp_path / "copy"
    shutil.copytree(study_dir.parent, copy_root)
    study_file = copy_root / "study.toml"
    text = study_file.read_text().replace('human_embedding = "${data_dir}/embedding.txt"\n', "")
    study_file.write_text(text.replace("[dnn_triplets]", "[human_fit]\nn_dims = 4\nmax_epochs = 2\n\n[dnn_triplets]"))
    plan = plan_study(load_config(study_file), copy_root / "study")
    reasons = plan.stage("human_fit").reasons
    assert reasons[0].startswith("settings changed: ")
    assert "input changed: human_embedding" in reasons
    assert "uses inputs.human_embedding, no fit" not in reasons
    assert plan.to_run == READERS + ["report"]


def test_embedding_inside_study_rejected(study, tmp_path):
    config, study_dir = study
    copy_root = tmp_path / "copy"
    shutil.copytree(study_dir.parent, copy_root)
    study_file = copy_root / "study.toml"
    study_file.write_text(study_file.read_text().replace("${data_dir}/embedding.txt", "study/human_fit"))
    before = sorted(path.name for path in (copy_root / "study").iterdir())
    with pytest.raises(ValueError) as error:
        run_study(load_config(study_file), copy_root / "study")
    assert str(error.value) == (
        f"inputs.human_embedding = {copy_root / 'study' / 'human_fit'} lies inside the study directory "
        f"{copy_root / 'study'}, whose human_fit stage would replace it; copy the embedding out of the study "
        "and name the copy"
    )
    assert sorted(path.name for path in (copy_root / "study").iterdir()) == before
