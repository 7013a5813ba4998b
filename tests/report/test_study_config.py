"""Study files: --set parsing, paths, settings checks, errors and dry-run plans (no stage runs here)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from report_helpers import write_study

from dimalign.cli import main
from dimalign.report.config import load_config, parse_override
from dimalign.report.pipeline import plan_study, run_study, stage_hash
from dimalign.report.settings import Setting, check_settings

REPO_ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = REPO_ROOT / "examples" / "things_study.toml"


@pytest.fixture()
def study_file(tmp_path: Path) -> Path:
    return write_study(tmp_path, report=False)


@pytest.mark.parametrize(
    ("text", "section", "key", "value"),
    [
        ("human_fit.max_epochs=3", "human_fit", "max_epochs", 3),
        ("compare.similarity_objects = 150", "compare", "similarity_objects", 150),
        ("human_fit.lr=0.5", "human_fit", "lr", 0.5),
        ("map.shuffle=true", "map", "shuffle", True),
        ('study.name="quoted"', "study", "name", "quoted"),
        ("study.device=cuda", "study", "device", "cuda"),
        ("inputs.images=../a b/c", "inputs", "images", "../a b/c"),
        ("report.title=a=b", "report", "title", "a=b"),
    ],
)
def test_override_values_parse_as_toml(text, section, key, value):
    override = parse_override(text)
    assert (override.section, override.key) == (section, key)
    assert override.value == value
    assert type(override.value) is type(value)


@pytest.mark.parametrize("text", ["human_fit.max_epochs", "max_epochs=3", "a.b.c=1", ".x=1"])
def test_override_without_section_key_is_rejected(text):
    with pytest.raises(ValueError, match="SECTION.KEY"):
        parse_override(text)


def test_paths_resolve_from_config_folder(study_file, tmp_path, monkeypatch):
    monkeypatch.chdir(REPO_ROOT)
    config = load_config(study_file)
    assert config.input_path("objects") == tmp_path / "data" / "objects.txt"
    assert config.input_path("images") is None


def test_set_paths_resolve_from_current_directory(study_file, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path / "data")
    config = load_config(study_file, ["inputs.objects=objects.txt"])
    assert config.input_path("objects") == tmp_path / "data" / "objects.txt"


def test_data_dir_override_moves_every_input(study_file, tmp_path):
    other = tmp_path / "copy"
    config = load_config(study_file, [f"study.data_dir={other}"])
    assert config.input_path("human_triplets") == other / "human_triplets.txt"


def test_example_config_finds_shared_data(things_dir):
    config = load_config(EXAMPLE)
    assert config.input_path("human_triplets") == (things_dir / "human_triplets.txt").resolve()
    plan = plan_study(config, REPO_ROOT / "nonexistent-study")
    assert [stage.name for stage in plan.stages] == [
        "human_fit", "dnn_triplets", "dnn_fit", "evaluate", "compare", "map", "report",
    ]
    assert plan.stage("human_fit").settings["n_dims"] == 150
    assert plan.stage("dnn_fit").settings["seed"] == 1
    assert plan.stage("human_fit").settings["seed"] == 0


def test_images_example_plans(shared_data):
    plan = plan_study(load_config(REPO_ROOT / "examples" / "images_study.toml"), REPO_ROOT / "nonexistent-study")
    assert [stage.name for stage in plan.stages] == ["features", "dnn_triplets", "dnn_fit", "evaluate", "report"]
    assert plan.stage("features").inputs["images"] == (shared_data / "images").resolve()
    assert plan.stage("dnn_triplets").upstream == ["features"]


def test_unknown_stage_lists_valid_stages(study_file):
    study_file.write_text(study_file.read_text() + "\n[cluster]\nk = 3\n")
    with pytest.raises(ValueError, match=r"unknown stage cluster .*valid stages: features, human_fit"):
        plan_study(load_config(study_file), study_file.parent / "study")


def test_unknown_setting_lists_valid_keys(study_file):
    config = load_config(study_file, ["human_fit.max_epoch=3"])
    with pytest.raises(ValueError, match=r"unknown setting max_epoch in \[human_fit\] \(set with --set\); valid settings .*max_epochs"):
        plan_study(config, study_file.parent / "study")


def test_setting_of_other_method_is_unknown(study_file):
    config = load_config(study_file, ["human_fit.method=spose", "human_fit.pi=0.3"])
    with pytest.raises(ValueError, match=r"unknown settings mc_samples, pi .*l1"):
        plan_study(config, study_file.parent / "study")


def test_wrong_type_names_key_and_value(study_file):
    config = load_config(study_file, ["dnn_triplets.n_triplets=many"])
    with pytest.raises(ValueError, match=r"dnn_triplets.n_triplets = 'many' is invalid: expected an integer"):
        plan_study(config, study_file.parent / "study")


def test_choice_outside_allowed_values(study_file):
    config = load_config(study_file, ["dnn_triplets.rule=vote"])
    with pytest.raises(ValueError, match=r"use one of 'argmax', 'softmax' \(set with --set\)"):
        plan_study(config, study_file.parent / "study")


def test_unknown_input_key(study_file):
    study_file.write_text(study_file.read_text().replace("[inputs]", "[inputs]\nfeatures = \"x.npy\""))
    with pytest.raises(ValueError, match=r"unknown key features in \[inputs\].*dnn_features"):
        load_config(study_file)


def test_missing_input_file_names_key_and_config(study_file):
    (study_file.parent / "data" / "human_triplets.txt").unlink()
    with pytest.raises(FileNotFoundError) as error:
        plan_study(load_config(study_file), study_file.parent / "study")
    message = str(error.value)
    assert "human_triplets.txt" in message
    assert "inputs.human_triplets" in message
    assert str(study_file) in message


def test_missing_input_key_says_where_to_add_it(study_file):
    text = study_file.read_text().replace('human_triplets = "${data_dir}/human_triplets.txt"\n', "")
    study_file.write_text(text)
    with pytest.raises(ValueError, match=r"stage human_fit needs inputs.human_triplets .*under \[inputs\]"):
        plan_study(load_config(study_file), study_file.parent / "study")


def test_missing_upstream_stage(study_file):
    text = study_file.read_text()
    table = "[dnn_triplets]\nn_triplets = 800\nval_fraction = 0.2\n"
    assert table in text
    study_file.write_text(text.replace(table, ""))
    with pytest.raises(ValueError, match=r"stage dnn_fit reads the output of stage dnn_triplets.*\[dnn_triplets\]"):
        plan_study(load_config(study_file), study_file.parent / "study")


def test_set_of_unconfigured_stage_is_rejected(study_file):
    with pytest.raises(ValueError, match=r"has no stage 'report'"):
        load_config(study_file, ["report.top_k=3"])


def test_set_human_fit_names_embedding_input(tmp_path):
    study = tmp_path / "study.toml"
    study.write_text(
        '[study]\nname = "x"\n[inputs]\nobjects = "objects.txt"\nhuman_embedding = "emb.txt"\n'
        '[evaluate]\n'
    )
    with pytest.raises(ValueError) as error:
        load_config(study, ["human_fit.max_epochs=3"])
    assert str(error.value) == (
        f"--set 'human_fit.max_epochs=3': {study.resolve()} has no stage 'human_fit'; sections in this file: "
        "study, inputs, evaluate (the study takes its human embedding from inputs.human_embedding and fits "
        "none; to fit one, remove inputs.human_embedding and add a [human_fit] table)"
    )


def test_from_unknown_stage_is_rejected(study_file):
    with pytest.raises(ValueError, match=r"--from fitting: unknown stage"):
        plan_study(load_config(study_file), study_file.parent / "study", from_stage="fitting")


def test_dry_run_writes_nothing(study_file, capsys):
    study_dir = study_file.parent / "study"
    status = main(["run", str(study_file), "-o", str(study_dir), "--dry-run", "--set", "human_fit.max_epochs=1"])
    assert status == 0
    assert not study_dir.exists()
    output = capsys.readouterr().out
    assert "human_fit.max_epochs: 3 -> 1 (shortened)" in output
    assert "human_fit     run     new" in output
    assert "dry run: nothing was written" in output


def test_cli_error_is_one_line(study_file, capsys):
    status = main(["run", str(study_file), "-o", str(study_file.parent / "s"), "--dry-run", "--set", "map.folds=x"])
    assert status == 1
    assert capsys.readouterr().err.strip() == (
        "dimalign run: error: map.folds = 'x' is invalid: expected an integer, got str (set with --set)"
    )


def test_shortened_only_for_size_settings(study_file):
    config = load_config(study_file, [
        "human_fit.max_epochs=1", "human_fit.checkpoint_every=10", "human_fit.lr=0.0001", "compare.similarity_objects=10",
    ])
    plan = run_study(config, study_file.parent / "study", dry_run=True)
    kinds = {change.key: change.kind for change in plan.changes}
    assert kinds == {
        "human_fit.max_epochs": "shortened", "human_fit.checkpoint_every": "changed", "human_fit.lr": "changed",
        "compare.similarity_objects": "shortened",
    }
    by_key = {change.key: change for change in plan.changes}
    assert by_key["human_fit.checkpoint_every"].before == 50
    assert by_key["compare.similarity_objects"].before == "all"


def test_set_to_file_value_is_no_change(study_file):
    plan = run_study(load_config(study_file, ["human_fit.max_epochs=3"]), study_file.parent / "s", dry_run=True)
    assert plan.changes == []


def test_integer_for_float_setting_hashes_alike():
    spec = {"lr": Setting(0.001, "rate")}
    assert check_settings("fit", {"lr": 1}, spec) == {"lr": 1.0}
    assert stage_hash("fit", {"lr": 1.0}, {}, {}) == stage_hash("fit", check_settings("fit", {"lr": 1}, spec), {}, {})


def test_stage_hash_covers_settings_inputs_upstream():
    base = stage_hash("compare", {"n": 1}, {"images": "a"}, {"human_fit": "h"})
    assert stage_hash("compare", {"n": 2}, {"images": "a"}, {"human_fit": "h"}) != base
    assert stage_hash("compare", {"n": 1}, {"images": "b"}, {"human_fit": "h"}) != base
    assert stage_hash("compare", {"n": 1}, {"images": "a"}, {"human_fit": "g"}) != base
    assert stage_hash("compare", {"n": 1}, {"images": "a"}, {"human_fit": "h"}) == base


def test_dry_run_rejects_one_fold(study_file, capsys):
    status = main(["run", str(study_file), "-o", str(study_file.parent / "s"), "--dry-run", "--set", "map.folds=1"])

    assert status == 1
    error = capsys.readouterr().err
    assert "map.folds = 1 is invalid" in error
    assert "at least 2" in error


# Values that only a stage would reject used to pass planning and fail after
# the earlier stages had run. Each must fail in --dry-run, naming the key.
PLAN_TIME_ERRORS = [
    ("dnn_triplets.n_triplets=-5", "dnn_triplets.n_triplets = -5 is invalid: use a value at least 1"),
    ("dnn_triplets.n_triplets=10000000", "form only"),
    ("dnn_triplets.temperature=nan", "dnn_triplets.temperature = nan is invalid: use a finite number"),
    ("human_fit.n_dims=-10", "n_dims"),
    ("human_fit.batch_size=0", "batch_size"),
    ("human_fit.val_fraction=1.5", "human_fit.val_fraction = 1.5 is invalid: use a value below 1"),
    ("human_fit.odd_column=7", "human_fit.odd_column = 7 is invalid: use a value at most 2"),
    ("human_fit.lr=nan", "human_fit.lr = nan is invalid: use a finite number"),
    ("study.device=banana", "study.device"),
    ("compare.similarity_objects=-3", "similarity_objects"),
    ("compare.top_k=-1", "compare.top_k = -1 is invalid"),
    ("compare.n_bootstrap=-4", "compare.n_bootstrap = -4 is invalid"),
    ("map.alpha_max=inf", "map.alpha_max = inf is invalid: use a finite number"),
    ("map.alpha_max=0.001", "map.alpha_max = 0.001 is below map.alpha_min"),
    ("map.alpha_max=0.01", "map.alpha_min = map.alpha_max = 0.01 repeats one penalty 5 times"),
]


@pytest.mark.parametrize(("override", "message"), PLAN_TIME_ERRORS)
def test_dry_run_rejects_out_of_range_values(study_file, override, message):
    config = load_config(study_file, [override]) if not override.startswith("study.") else None
    if config is None:
        with pytest.raises(ValueError, match=message):
            load_config(study_file, [override])
        return
    with pytest.raises(ValueError, match=message) as caught:
        plan_study(config, study_file.parent / "s")
    assert "--set" in str(caught.value)
    assert not (study_file.parent / "s").exists()


def test_cuda_stage_without_gpu_fails_at_planning(study_file, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    config = load_config(study_file, ["compare.device=cuda"])
    with pytest.raises(ValueError, match=r"no CUDA GPU.*stage compare of .*study.toml, with --set compare.device"):
        plan_study(config, study_file.parent / "s")


def test_report_counts_below_one_are_rejected(tmp_path):
    study_file = write_study(tmp_path)
    for override in ("report.dpi=0", "report.top_k=0", "report.n_disagreements=-2"):
        with pytest.raises(ValueError, match=r"is invalid: use a value at least 1 \(set with --set\)"):
            plan_study(load_config(study_file, [override]), tmp_path / "s")


def test_study_with_only_a_report_is_rejected(tmp_path):
    path = tmp_path / "only_report.toml"
    path.write_text('[study]\nname = "r"\n[inputs]\n[report]\n', encoding="utf-8")
    with pytest.raises(ValueError, match="stage report needs a stage whose results it can show"):
        plan_study(load_config(path), tmp_path / "s")


def test_set_key_parts_are_stripped():
    override = parse_override(" human_fit . max_epochs = 2 ")
    assert (override.section, override.key, override.value) == ("human_fit", "max_epochs", 2)


def test_missing_input_names_set_data_dir(study_file, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = load_config(study_file, ["study.data_dir=elsewhere"])
    with pytest.raises(FileNotFoundError, match=r"with study.data_dir = 'elsewhere' set with --set \(relative to the current directory\)"):
        plan_study(config, tmp_path / "s")


@pytest.mark.parametrize(
    ("override", "message"),
    [("study.seed=-1", r"study.seed = -1 \(set with --set\) is invalid: use 0 or more"),
     ("compare.similarity_objects=2", "compare.similarity_objects = 2 is invalid: use 'all' or at least 3"),
     ("human_fit.val_fraction=0", "human_fit.val_fraction = 0 .* leaves no held-out triplets, but stage evaluate"),
     ("dnn_triplets.val_fraction=0", "dnn_triplets.val_fraction = 0 .* stage evaluate scores the held-out triplets of dnn_fit"),
     ("dnn_triplets.val_fraction=0.9999", r"dnn_triplets.val_fraction = 0.9999 is invalid: it holds out every "
      r"triplet, since round\(0.9999 x 800 triplets\) = 800, and leaves none for training"),
     ('inputs.categories="data"', r"inputs.categories = 'data' \(set with --set\) must be a file, but .* is a folder"),
     ('inputs.objects="/dev/null"', r"inputs.objects = '/dev/null' \(set with --set\) must be a file, but "
      r"/dev/null is neither a regular file nor a folder"),
     ('inputs.dnn_features="/dev/null"', r"inputs.dnn_features = '/dev/null' \(set with --set\) must be a file "
      r"or a folder, but /dev/null is neither a regular file nor a folder"),
     ('dnn_triplets.layer="conv5"', "single-layer features file, so layer 'conv5' cannot be chosen"),
     ("compare.top_k=25", "compare.top_k = 25 is invalid: inputs.objects lists 24 objects, so use at most 24"),
     ('study.data_dir="${data_dir}/x"', r"study.data_dir = '\$\{data_dir\}/x' \(set with --set\) is invalid: it "
      r"cannot contain \$\{data_dir\} itself")],
)
def test_cross_checks_fail_at_planning(tmp_path, monkeypatch, override, message):
    study_file = write_study(tmp_path)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match=message):
        plan_study(load_config(study_file, [override]), tmp_path / "s")


def test_bad_category_matrix_fails_at_planning(tmp_path):
    study_file = write_study(tmp_path)
    (tmp_path / "data" / "categories.tsv").write_text("a\tb\n" + "1\t0\n" * 23)
    with pytest.raises(ValueError, match=r"categories.tsv has 23 rows but the study has 24 objects"):
        plan_study(load_config(study_file), tmp_path / "s")


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("dimensions.csv", "embedding,dimension\nhuman_fit,x\n", r"dimensions.csv, line 2, column 'dimension': 'x' is invalid"),
        ("dimensions.csv", "embedding,kind\nhuman_fit,visual\n", r"dimensions.csv has no column dimension"),
        ("shares.csv", "embedding,kind,share\nhuman_fit,visual,lots\n", r"shares.csv, line 2, column 'share': 'lots'"),
        ("relevance_shares.csv", "", r"relevance_shares.csv cannot be read as a table"),
    ],
)
def test_bad_labels_summary_fails_at_planning(tmp_path, name, text, message):
    study_file = write_study(tmp_path)
    labels = tmp_path / "labels"
    labels.mkdir()
    (labels / name).write_text(text)
    with pytest.raises(ValueError, match=message):
        plan_study(load_config(study_file, [f"inputs.labels={str(labels)!r}"]), tmp_path / "s")


def test_labels_under_other_names_fail_at_planning(tmp_path):
    from report_helpers import write_labels

    study_file = write_study(tmp_path)
    labels = write_labels(tmp_path / "labels", {"people": 2})
    with pytest.raises(ValueError, match=r"labels no embedding named 'human_fit' or 'dnn_fit' \(its embeddings: people\)"):
        plan_study(load_config(study_file, [f"inputs.labels={str(labels)!r}"]), tmp_path / "s")
    config = load_config(study_file, [f"inputs.labels={str(labels)!r}", 'report.labels_human="people"'])
    assert plan_study(config, tmp_path / "s").stage("report").inputs["labels"] == labels


def test_triplets_as_dnn_features_fail_at_planning(tmp_path):
    """Human triplets given as the DNN features fail before the human fit runs, for text and .npy files."""
    import numpy as np

    study_file = write_study(tmp_path)
    human = tmp_path / "data" / "human_triplets.txt"
    np.save(tmp_path / "data" / "train.npy", np.loadtxt(human, dtype=np.int64))
    for path in (human, tmp_path / "data" / "train.npy"):
        with pytest.raises(ValueError, match=rf"{path.name} looks like a triplet file, not features"):
            plan_study(load_config(study_file, [f"inputs.dnn_features={str(path)!r}"]), tmp_path / "s")
    assert not (tmp_path / "s").exists()


def test_feature_rows_checked_at_planning_without_map(tmp_path):
    import numpy as np

    study_file = write_study(tmp_path)
    text = study_file.read_text()
    study_file.write_text(text.replace("[map]\nn_alphas = 5\n", ""))
    features = np.load(tmp_path / "data" / "features.npy")
    np.save(tmp_path / "data" / "short.npy", features[:23])
    with pytest.raises(ValueError, match=r"short.npy have 23 rows but inputs.objects lists 24 objects; .* "
                       r"\(stage dnn_triplets of .*study.toml\)"):
        plan_study(load_config(study_file, [f"inputs.dnn_features={str(tmp_path / 'data' / 'short.npy')!r}"]),
                   tmp_path / "s")

    layers = tmp_path / "data" / "layers"
    layers.mkdir()
    np.save(layers / "features_conv.npy", features)
    np.save(layers / "features_fc.npy", features)
    overrides = [f"inputs.dnn_features={str(layers)!r}"]
    with pytest.raises(FileNotFoundError, match=r"name the layer \(--layer\): conv, fc \(stage dnn_triplets of"):
        plan_study(load_config(study_file, overrides), tmp_path / "s")
    plan = plan_study(load_config(study_file, [*overrides, 'dnn_triplets.layer="fc"']), tmp_path / "s")
    assert plan.stage("dnn_triplets").settings["layer"] == "fc"


def test_planning_rejects_missing_rdm48(tmp_path):
    study_file = write_study(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"data lacks RDM48_triplet.mat\..* \(stage evaluate of .*study.toml\)"):
        plan_study(load_config(study_file, [f"inputs.things_dir={str(tmp_path / 'data')!r}"]), tmp_path / "s")


def test_report_dpi_has_a_maximum(tmp_path):
    study_file = write_study(tmp_path)
    with pytest.raises(ValueError, match=r"report.dpi = 11000 is invalid: use a value at most 600"):
        plan_study(load_config(study_file, ["report.dpi=11000"]), tmp_path / "s")


def test_whole_float_for_integer_suggests_integer(study_file):
    with pytest.raises(ValueError, match=r"dnn_triplets.n_triplets = 100000.0 is invalid: expected an integer, "
                       r"got float; write 100000 without a decimal point or exponent \(set with --set\)"):
        plan_study(load_config(study_file, ["dnn_triplets.n_triplets=1e5"]), study_file.parent / "s")


def test_study_file_with_byte_order_mark_loads(tmp_path):
    study_file = write_study(tmp_path)
    study_file.write_bytes(b"\xef\xbb\xbf" + study_file.read_bytes())
    assert load_config(study_file).study["name"] == "Tiny study"


def test_study_file_not_utf8_names_file(tmp_path):
    study_file = tmp_path / "latin1.toml"
    study_file.write_bytes(b'[study]\nname = "caf\xe9"\n')
    with pytest.raises(ValueError, match=r"latin1.toml is not UTF-8 text \(byte 0xe9 at offset 19\)"):
        load_config(study_file)


def test_study_file_that_is_a_folder(tmp_path):
    folder = tmp_path / "study.toml"
    folder.mkdir()
    with pytest.raises(IsADirectoryError, match=r"study file .*study.toml is a folder"):
        load_config(folder)


def test_more_folds_than_objects_fail_at_planning(tmp_path):
    study_file = write_study(tmp_path)
    with pytest.raises(ValueError, match=r"map.folds = 1000 is invalid: the features have 24 objects"):
        plan_study(load_config(study_file, ["map.folds=1000"]), tmp_path / "s")


def test_folds_of_one_object_fail_at_planning(tmp_path):
    study_file = write_study(tmp_path)
    with pytest.raises(ValueError, match=r"map.folds = 13 is invalid: .* use at most 12 folds"):
        plan_study(load_config(study_file, ["map.folds=13"]), tmp_path / "s")


def test_matrix_objects_above_object_count_says_all(caplog):
    from dimalign.report.stages import _subset

    with caplog.at_level(logging.INFO, logger="dimalign"):
        assert _subset(10, 50, 0) is None
    assert "compare.matrix_objects = 50 covers all 10 objects: using every object" in caplog.text


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (['report.title="Set title"'], "Set title"),
        ([], "Tiny study"),
        (['study.name=""'], "dimalign study"),
    ],
)
def test_report_title_rule(tmp_path, overrides, expected):
    # dimalign report applies the same rule to what the run recorded.
    from dimalign.report.html import report_title

    config = load_config(write_study(tmp_path), overrides)
    title = plan_study(config, tmp_path / "study").stage("report").settings["title"]
    assert title == expected
    assert report_title(config.stages["report"].get("title"), config.study["name"]) == expected


@pytest.mark.parametrize(
    ("before", "after", "expected"),
    [
        (False, True, "map.shuffle: false -> true (changed)"),
        ("cpu", "cuda", 'map.shuffle: "cpu" -> "cuda" (changed)'),
        (None, [1, 2.5], "map.shuffle: not set -> [1, 2.5] (changed)"),
    ],
)
def test_setting_change_described_as_toml(before, after, expected):
    from dimalign.report.pipeline import SettingChange

    assert SettingChange("map.shuffle", before, after, "changed").describe() == expected
