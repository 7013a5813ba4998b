"""Running a tiny study: stage folders, manifests, skipping, reruns, --from, interruptions and the lock."""

from __future__ import annotations

import dataclasses
import fcntl
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from report_helpers import write_study

from dimalign.report import stages
from dimalign.report.pipeline import run_study
from dimalign.report.stage_records import read_stage_record

pytestmark = pytest.mark.filterwarnings("ignore:the chosen ridge penalty")

STAGES = ["human_fit", "dnn_triplets", "dnn_fit", "evaluate", "compare", "map"]


def finished_times(study_dir: Path) -> dict[str, str]:
    return {name: read_stage_record(study_dir / name)["finished"] for name in STAGES}


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> tuple[Path, Path]:
    """The tiny study (without report), run once; tests below run it again in order."""
    root = tmp_path_factory.mktemp("pipeline")
    config = write_study(root, report=False)
    study_dir = root / "study"
    plan = run_study(config, study_dir)
    assert plan.to_run == STAGES
    return config, study_dir


@pytest.fixture
def study_copy(study, tmp_path) -> tuple[Path, Path]:
    """A copy of the tiny study, run again so that every stage is done before the test changes it."""
    config, study_dir = study
    copy = tmp_path / "study"
    shutil.copytree(study_dir, copy)
    run_study(config, copy)  # earlier tests may leave stages to rerun
    return config, copy


def test_first_run_writes_every_stage(study):
    config, study_dir = study
    for name in STAGES:
        record = read_stage_record(study_dir / name)
        assert record is not None, name
        assert record["stage"] == name
        assert len(record["hash"]) == 64
    assert (study_dir / "human_fit" / "embedding.npz").is_file()
    assert (study_dir / "human_fit" / "val.npy").is_file()
    assert (study_dir / "dnn_triplets" / "train.npy").is_file()
    assert (study_dir / "evaluate" / "summary.json").is_file()
    assert (study_dir / "compare" / "rsa.json").is_file()
    assert (study_dir / "compare" / "human_similarity.npy").is_file()
    assert (study_dir / "compare" / "most_relevant_human.csv").is_file()
    assert (study_dir / "map" / "ridge_map.npz").is_file()
    leftovers = [entry.name for entry in study_dir.iterdir() if ".partial-" in entry.name or ".old-" in entry.name]
    assert leftovers == []


def test_stage_records_link_upstream_hashes(study):
    _, study_dir = study
    fit = read_stage_record(study_dir / "dnn_fit")
    triplets = read_stage_record(study_dir / "dnn_triplets")
    assert fit["upstream"] == {"dnn_triplets": triplets["hash"]}
    human = read_stage_record(study_dir / "human_fit")
    assert set(human["inputs"]) == {"human_triplets", "objects"}
    assert human["settings"]["max_epochs"] == 3
    # The library's own manifest stays next to the pipeline record.
    manifest = json.loads((study_dir / "human_fit" / "manifest.json").read_text())
    assert manifest["step"] == "fit"


def test_evaluation_matches_saved_noise_ceiling(study):
    _, study_dir = study
    summary = json.loads((study_dir / "evaluate" / "summary.json").read_text())
    # The helper repeats 10 object sets with the same choice: every response matches the other.
    assert summary["human_noise_ceiling"] == {"value": 1.0, "n_sets": 10, "n_responses": 20}
    assert summary["human"]["n_triplets"] == len(np.load(study_dir / "human_fit" / "val.npy"))


def test_second_run_skips_every_stage(study):
    config, study_dir = study
    before = finished_times(study_dir)
    plan = run_study(config, study_dir)
    assert plan.to_run == []
    assert all(stage.reasons == ["unchanged"] for stage in plan.stages)
    assert finished_times(study_dir) == before


def test_changed_fit_setting_reruns_it_and_downstream(study):
    config, study_dir = study
    before = finished_times(study_dir)
    plan = run_study(config, study_dir, overrides=["dnn_fit.max_epochs=2"])
    assert plan.to_run == ["dnn_fit", "evaluate", "compare", "map"]
    assert plan.stage("dnn_fit").reasons == ["settings changed: max_epochs 3 -> 2"]
    assert plan.stage("compare").reasons == ["upstream changed: dnn_fit"]
    assert plan.stage("human_fit").reasons == ["unchanged"]
    after = finished_times(study_dir)
    assert after["human_fit"] == before["human_fit"]
    assert after["dnn_triplets"] == before["dnn_triplets"]
    assert read_stage_record(study_dir / "dnn_fit")["settings"]["max_epochs"] == 2
    assert [change.describe() for change in plan.changes] == ["dnn_fit.max_epochs: 3 -> 2 (shortened)"]

    # Back to the file's value: the same stages run again, now against the file.
    plan = run_study(config, study_dir)
    assert plan.to_run == ["dnn_fit", "evaluate", "compare", "map"]


def test_rerun_without_set_warns(study_copy, caplog):
    """A run without the earlier --set values names the settings it changes back and the earlier time."""
    config, copy = study_copy
    # The values given with --set are not warned about, because this run requests them.
    with caplog.at_level("WARNING", logger="dimalign.report.pipeline"):
        run_study(config, copy, overrides=["human_fit.max_epochs=2", "human_fit.n_dims=4"])
    assert [record.getMessage() for record in caplog.records if "earlier run" in record.getMessage()] == []
    caplog.clear()
    record = read_stage_record(copy / "human_fit")
    seconds = record["seconds"]
    assert record["outputs"]["n_epochs"] == 2
    estimate = seconds / 2 * 3
    stage_text = (
        f"human_fit (n_dims 4 -> 6, max_epochs 2 -> 3; it took {seconds:.1f} s for 2 epochs, "
        f"so up to about {estimate:.1f} s for 3)"
    )
    earlier = "--set human_fit.max_epochs=2 --set human_fit.n_dims=4"

    with caplog.at_level("WARNING", logger="dimalign.report.pipeline"):
        plan = run_study(config, copy, dry_run=True)

    assert plan.to_run == ["human_fit", "evaluate", "compare"]
    warnings = [record.getMessage() for record in caplog.records if record.levelname == "WARNING"]
    assert warnings == [
        f"a run would redo 1 stage that an earlier run finished with other settings: {stage_text}. "
        f"The earlier values were set with --set: to keep that stage, give them again ({earlier})"
    ]

    caplog.clear()
    with caplog.at_level("WARNING", logger="dimalign.report.pipeline"):
        run_study(config, copy)

    warnings = [record.getMessage() for record in caplog.records if record.levelname == "WARNING"]
    assert warnings[0] == (
        f"this run redoes 1 stage that an earlier run finished with other settings: {stage_text}. "
        f"The earlier values were set with --set: to keep that stage, stop this run and give them "
        f"again ({earlier})"
    )


def test_edited_file_rerun_warns_without_set(study_copy, caplog):
    """A stage finished with other values of the study file is named, with no advice about --set."""
    config, copy = study_copy
    # Editing the file in place keeps the warning about another study file away.
    original = config.read_text()
    config.write_text(original.replace("n_bootstrap = 20", "n_bootstrap = 10"))
    try:
        with caplog.at_level("WARNING", logger="dimalign.report.pipeline"):
            run_study(config, copy, dry_run=True)
    finally:
        config.write_text(original)

    seconds = read_stage_record(copy / "compare")["seconds"]
    warnings = [record.getMessage() for record in caplog.records if record.levelname == "WARNING"]
    assert warnings == [
        "a run would redo 1 stage that an earlier run finished with other settings: "
        f"compare (n_bootstrap 20 -> 10; it took {seconds:.1f} s)"
    ]


def test_unchanged_rerun_does_not_warn(study_copy, caplog):
    config, copy = study_copy
    with caplog.at_level("WARNING", logger="dimalign.report.pipeline"):
        plan = run_study(config, copy, from_stage="compare", dry_run=True)

    assert plan.to_run == ["compare"]
    assert [record for record in caplog.records if record.levelname == "WARNING"] == []


def test_from_forces_stage_and_dependants(study):
    config, study_dir = study
    plan = run_study(config, study_dir, from_stage="compare", dry_run=True)
    assert plan.to_run == ["compare"]
    assert plan.stage("compare").reasons == ["forced by --from compare"]
    plan = run_study(config, study_dir, from_stage="dnn_triplets", dry_run=True)
    assert plan.to_run == ["dnn_triplets", "dnn_fit", "evaluate", "compare", "map"]
    assert plan.stage("map").reasons == ["reads a stage forced by --from dnn_triplets"]


def test_changed_input_file_reruns_its_readers(study, tmp_path):
    config, study_dir = study
    features = np.load(config.parent / "data" / "features.npy")
    changed = tmp_path / "features.npy"
    np.save(changed, features * 2.0)
    plan = run_study(config, study_dir, overrides=[f"inputs.dnn_features={changed}"], dry_run=True)
    assert plan.to_run == ["dnn_triplets", "dnn_fit", "evaluate", "compare", "map"]
    assert plan.stage("dnn_triplets").reasons == ["input changed: dnn_features"]
    assert plan.stage("map").reasons[0] == "input changed: dnn_features"


def test_failed_stage_keeps_previous_result(study, monkeypatch):
    config, study_dir = study
    before = read_stage_record(study_dir / "compare")

    def broken(context):
        (context.out_dir / "rsa.json").write_text("{}")
        raise RuntimeError("compare failed on purpose")

    monkeypatch.setitem(stages.STAGES, "compare", dataclasses.replace(stages.STAGES["compare"], run=broken))
    with pytest.raises(RuntimeError, match="on purpose"):
        run_study(config, study_dir, overrides=["compare.n_bootstrap=5"])
    assert read_stage_record(study_dir / "compare") == before
    assert not [entry for entry in study_dir.iterdir() if entry.name.startswith(".compare.")]
    monkeypatch.undo()

    plan = run_study(config, study_dir, overrides=["compare.n_bootstrap=5"], dry_run=True)
    assert plan.to_run == ["compare"]
    assert plan.stage("compare").reasons == ["settings changed: n_bootstrap 20 -> 5"]


def test_interrupted_fit_keeps_partial_folder(study, monkeypatch):
    config, study_dir = study

    def interrupted(context):
        (context.out_dir / "checkpoint.pt").write_bytes(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setitem(stages.STAGES, "human_fit", dataclasses.replace(stages.STAGES["human_fit"], run=interrupted))
    with pytest.raises(KeyboardInterrupt):
        run_study(config, study_dir, overrides=["human_fit.max_epochs=4"])
    partial = [entry for entry in study_dir.iterdir() if entry.name.startswith(".human_fit.partial-")]
    assert len(partial) == 1
    assert (partial[0] / "checkpoint.pt").read_bytes() == b"partial"
    assert read_stage_record(study_dir / "human_fit")["settings"]["max_epochs"] == 3

    # A run with other settings removes the stale partial folder.
    monkeypatch.undo()
    run_study(config, study_dir, overrides=["compare.n_bootstrap=20"])
    assert not partial[0].exists()


def test_cleanup_keeps_user_folders_with_similar_names(study, tmp_path):
    config, study_dir = study
    copy = tmp_path / "study"
    shutil.copytree(study_dir, copy)
    stale = [copy / ".compare.partial-0123456789abcdef", copy / f".map.old-{12345}"]
    mine = [copy / ".notes.old-2024", copy / ".backup.partial-copy", copy / ".compare.partial-mine"]
    for folder in stale + mine:
        folder.mkdir()
        (folder / "file.txt").write_text("x")
    # An old folder without a record is deleted only when the stage record lists its files.
    (stale[1] / "file.txt").rename(stale[1] / "ridge_map.csv")

    run_study(config, copy)

    for folder in stale:
        assert not folder.exists()
    for folder in mine:
        assert (folder / "file.txt").read_text() == "x"


def test_removed_upstream_stage_is_named(study, tmp_path):
    config, study_dir = study
    # The study file without the DNN side: evaluate then reads human_fit alone.
    text = config.read_text()
    for table in ("dnn_triplets", "dnn_fit", "compare", "map"):
        start = text.index(f"[{table}]")
        end = text.find("\n[", start + 1)
        text = text[:start] + (text[end + 1:] if end >= 0 else "")
    human_only = config.with_name("human_only.toml")
    human_only.write_text(text)
    plan = run_study(human_only, study_dir, dry_run=True)
    assert plan.to_run == ["evaluate"]
    assert plan.stage("evaluate").reasons == ["upstream removed: dnn_fit"]


def test_record_keeps_hash_of_study_file_as_read(study):
    import hashlib

    from dimalign.report.config import load_config

    config_path, study_dir = study
    original = config_path.read_bytes()
    config = load_config(config_path)
    # The user edits the study file for the next run while this one runs.
    config_path.write_bytes(original + b"\n# next: more epochs\n")
    try:
        run_study(config, study_dir)
    finally:
        config_path.write_bytes(original)
    record = json.loads((study_dir / "pipeline.json").read_text())
    assert record["config_sha256"] == hashlib.sha256(original).hexdigest()


def test_run_with_other_study_file_warns_before_replacing(study, caplog):
    config_path, study_dir = study
    other = config_path.with_name("other_study.toml")
    other.write_text(config_path.read_text().replace("n_bootstrap = 20", "n_bootstrap = 10"))
    try:
        with caplog.at_level("WARNING", logger="dimalign.report.pipeline"):
            run_study(other, study_dir, dry_run=True)
        warnings = [record.getMessage() for record in caplog.records if record.levelname == "WARNING"]
        assert warnings == [
            f"{study_dir} was last run with the study file {config_path}, and a run with {other} "
            "would replace its stages compare; to keep them, pass another -o"
        ]
        caplog.clear()
        with caplog.at_level("INFO", logger="dimalign.report.pipeline"):
            run_study(other, study_dir)
        warnings = [record.getMessage() for record in caplog.records if record.levelname == "WARNING"]
        assert warnings == [
            f"{study_dir} was last run with the study file {config_path}, and this run with {other} "
            "replaces its stages compare as each finishes; to keep them, stop this run and pass another -o"
        ]
        finished = [record.getMessage() for record in caplog.records if "finished in" in record.getMessage()]
        assert len(finished) == 1
        assert finished[0].startswith("stage compare: finished in ")
        assert finished[0].endswith(f" s, output in {study_dir / 'compare'}")
    finally:
        # Put the module's study back as the tests after this one expect it.
        run_study(config_path, study_dir)


def test_fit_failing_before_checkpoint_leaves_nothing(study, monkeypatch):
    config, study_dir = study

    def failed(context):
        (context.out_dir / "train.npy").write_bytes(b"")
        raise ValueError("bad triplets")

    monkeypatch.setitem(stages.STAGES, "human_fit", dataclasses.replace(stages.STAGES["human_fit"], run=failed))
    with pytest.raises(ValueError, match="bad triplets"):
        run_study(config, study_dir, overrides=["human_fit.max_epochs=4"])
    assert [entry.name for entry in study_dir.iterdir() if ".partial-" in entry.name] == []


def test_tiny_val_fraction_holding_out_nothing_is_rejected(tmp_path):
    config = write_study(tmp_path, report=False)
    with pytest.raises(ValueError, match=r"dnn_triplets.val_fraction = 0.001 is invalid: it holds out no triplet, since "
                       r"round\(0.001 x 300 triplets\) = 0; use at least 0.0033"):
        run_study(config, tmp_path / "study", overrides=["dnn_triplets.n_triplets=300",
                                                         "dnn_triplets.val_fraction=0.001"], dry_run=True)
    # The human triplets are counted when the fit stage reads them, before it fits.
    with pytest.raises(ValueError, match=r"human_fit.val_fraction = 0.0001 is invalid: it holds out no triplet, since "
                       r"round\(0.0001 x 1,510 triplets\) = 0"):
        run_study(config, tmp_path / "study", overrides=["human_fit.val_fraction=0.0001"])
    # The run created the study folder and no stage finished, so nothing is left.
    assert not (tmp_path / "study").exists()


def test_failed_run_keeps_existing_folder(tmp_path):
    config = write_study(tmp_path, report=False)
    (tmp_path / "study").mkdir()
    (tmp_path / "study" / "notes.txt").write_text("mine\n")
    with pytest.raises(ValueError, match="holds out no triplet"):
        run_study(config, tmp_path / "study", overrides=["human_fit.val_fraction=0.0001"])
    assert sorted(entry.name for entry in (tmp_path / "study").iterdir()) == ["notes.txt", "pipeline.json"]


def test_lock_rejects_second_run(study):
    config, study_dir = study
    with open(study_dir / ".pipeline.lock", "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(RuntimeError, match="another dimalign run is using"):
            run_study(config, study_dir)


def test_deleted_stage_folder_reruns_with_readers(study):
    config, study_dir = study
    shutil.rmtree(study_dir / "evaluate")
    plan = run_study(config, study_dir, dry_run=True)
    assert plan.to_run == ["evaluate"]
    assert plan.stage("evaluate").reasons == ["new"]


def test_device_change_alone_reruns_nothing(study):
    config, study_dir = study
    unchanged = run_study(config, study_dir, dry_run=True).to_run
    plan = run_study(config, study_dir, overrides=["study.device=auto", "human_fit.checkpoint_every=7"], dry_run=True)
    assert plan.to_run == unchanged


def test_foreign_folder_with_stage_name_is_not_replaced(tmp_path):
    config = write_study(tmp_path, report=False)
    notes = tmp_path / "study" / "human_fit" / "NOTES.txt"
    notes.parent.mkdir(parents=True)
    notes.write_text("my notes")
    with pytest.raises(FileExistsError, match=r"human_fit has no readable pipeline record"):
        run_study(config, tmp_path / "study", dry_run=True)
    assert notes.read_text() == "my notes"


def test_stage_record_not_utf8_is_not_replaced(study, tmp_path, caplog):
    config, study_dir = study
    copy = tmp_path / "study"
    shutil.copytree(study_dir, copy)
    manifest = copy / "human_fit" / "manifest.json"
    manifest.write_bytes(b'{"step": "caf\xe9"}')

    assert read_stage_record(copy / "human_fit") is None
    assert f"{manifest} is not UTF-8" in caplog.text
    with pytest.raises(FileExistsError, match=r"human_fit has no readable pipeline record"):
        run_study(config, copy, dry_run=True)


@pytest.mark.parametrize("name", ["train.npy", "val.npy"])
def test_truncated_fit_output_is_named(study, tmp_path, name):
    config, study_dir = study
    copy = tmp_path / "study"
    shutil.copytree(study_dir, copy)
    path = copy / "human_fit" / name
    path.write_bytes(path.read_bytes()[:200])
    # A record with file digests would rerun human_fit, so this one is from an older dimalign.
    manifest = json.loads((copy / "human_fit" / "manifest.json").read_text(encoding="utf-8"))
    del manifest["pipeline"]["file_digests"]
    (copy / "human_fit" / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    before = read_stage_record(copy / "evaluate")

    with pytest.raises(ValueError, match=f"{path} cannot be read as a triplet array"):
        run_study(config, copy, from_stage="evaluate")
    assert read_stage_record(copy / "evaluate") == before


def test_foreign_study_dir_rejected(tmp_path):
    config = write_study(tmp_path, report=False)
    fit_dir = tmp_path / "fit"
    fit_dir.mkdir()
    (fit_dir / "manifest.json").write_text(json.dumps({"step": "fit"}))
    with pytest.raises(FileExistsError, match="already contains the output of dimalign fit"):
        run_study(config, fit_dir)
    (tmp_path / "afile").write_text("x")
    with pytest.raises(FileExistsError, match="afile is a file, not a folder"):
        run_study(config, tmp_path / "afile" / "sub")
    folder_input = tmp_path / "data" / "images"
    folder_input.mkdir()
    with pytest.raises(ValueError, match="lies inside inputs.images"):
        run_study(config, folder_input / "study", overrides=[f"inputs.images={str(folder_input)!r}"])
    assert not (folder_input / "study").exists()


def test_pipeline_json_of_another_tool_is_no_study(tmp_path):
    config = write_study(tmp_path, report=False)
    (tmp_path / "project").mkdir()
    (tmp_path / "project" / "pipeline.json").write_text('{"name": "my CI pipeline"}')
    plan = run_study(config, tmp_path / "project" / "study", dry_run=True)
    assert plan.to_run == STAGES


@pytest.mark.parametrize("text", ['{"name": "my CI pipeline"}\n', "{broken"])
def test_foreign_pipeline_json_is_not_replaced(tmp_path, text):
    config = write_study(tmp_path, report=False)
    record = tmp_path / "study" / "pipeline.json"
    record.parent.mkdir()
    record.write_text(text)

    for dry_run in (True, False):
        with pytest.raises(FileExistsError, match=f"{record} is not the record of a dimalign run"):
            run_study(config, tmp_path / "study", dry_run=dry_run)
    assert record.read_text() == text
    assert sorted(entry.name for entry in record.parent.iterdir()) == ["pipeline.json"]


def test_nested_study_and_stage_file_rejected(study, tmp_path):
    config, study_dir = study
    with pytest.raises(ValueError, match=f"lies inside the study {study_dir}"):
        run_study(config, study_dir / "evaluate" / "inner", dry_run=True)
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "compare").write_text("my file")
    with pytest.raises(FileExistsError, match=r"compare is a file, but stage compare writes a folder"):
        run_study(config, tmp_path / "s")
    assert (tmp_path / "s" / "compare").read_text() == "my file"


def test_fit_stage_uses_one_torch_thread(monkeypatch, tmp_path):
    """Fit stages run like dimalign fit and sweep workers, with one torch thread."""
    import types

    import torch

    import dimalign.embedding
    from dimalign.io.files import write_manifest
    from dimalign.io.objects import ObjectTable
    from dimalign.report import stages

    seen = []

    def fake_fit_run(estimator, *args, **kwargs):
        seen.append(torch.get_num_threads())
        estimator.n_dims_, estimator.n_epochs_ = 0, 0
        write_manifest(tmp_path, step="fit")

    monkeypatch.setattr(dimalign.embedding, "fit_run", fake_fit_run)
    monkeypatch.setattr(stages, "build_estimator", lambda settings, out_dir: types.SimpleNamespace())
    context = types.SimpleNamespace(settings={}, out_dir=tmp_path)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        stages._fit(context, np.array([[0, 1, 2], [1, 2, 0]]), np.zeros((0, 3), dtype=np.int64),
                    ObjectTable.from_ids(["a", "b", "c"]), {})
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)

    assert seen == [1]


def test_user_stage_file_kept(study_copy):
    config, copy = study_copy
    notes = copy / "compare" / "notes" / "NOTES.txt"
    notes.parent.mkdir()
    notes.write_text("my notes")

    with pytest.raises(FileExistsError) as error:
        run_study(config, copy, from_stage="compare")

    assert str(error.value) == (
        f"{copy / 'compare'} contains 1 file that stage compare did not write (notes/NOTES.txt), "
        "and the stage replaces its folder as a whole when it runs again: move the file out of "
        "the folder, then run the study again"
    )
    assert notes.read_text() == "my notes"
    # Stages that do not run keep such files without an error.
    assert run_study(config, copy).to_run == []


def test_file_added_during_stage_is_kept(study_copy, monkeypatch):
    config, copy = study_copy
    notes = copy / "compare" / "NOTES.txt"
    real_run = stages.STAGES["compare"].run

    def run_while_user_writes(context):
        notes.write_text("written during the run")
        return real_run(context)

    monkeypatch.setitem(
        stages.STAGES, "compare", dataclasses.replace(stages.STAGES["compare"], run=run_while_user_writes)
    )
    with pytest.raises(FileExistsError, match=r"compare contains 1 file that stage compare did not write \(NOTES.txt\)"):
        run_study(config, copy, from_stage="compare")

    assert notes.read_text() == "written during the run"
    assert read_stage_record(copy / "compare") is not None
    partial = [entry for entry in copy.iterdir() if entry.name.startswith(".compare.partial-")]
    assert len(partial) == 1
    assert read_stage_record(partial[0]) is not None


def test_symlink_in_stage_folder_is_kept(study_copy, tmp_path):
    config, copy = study_copy
    target = tmp_path / "plots"
    target.mkdir()
    (copy / "compare" / "plots").symlink_to(target, target_is_directory=True)
    (copy / "compare" / "drafts").mkdir()

    with pytest.raises(FileExistsError) as error:
        run_study(config, copy, from_stage="compare")

    assert str(error.value) == (
        f"{copy / 'compare'} contains 2 files that stage compare did not write (drafts/, plots), "
        "and the stage replaces its folder as a whole when it runs again: move these files out of "
        "the folder, then run the study again"
    )
    assert (copy / "compare" / "plots").is_symlink()
    assert (copy / "compare" / "drafts").is_dir()


def test_finder_files_do_not_block_rerun(study_copy):
    config, copy = study_copy
    for name in (".DS_Store", "Thumbs.db", "desktop.ini", "._summary.json"):
        (copy / "compare" / name).write_bytes(b"\0\1")

    plan = run_study(config, copy, from_stage="compare")

    assert plan.to_run == ["compare"]
    assert not (copy / "compare" / ".DS_Store").exists()
    assert read_stage_record(copy / "compare") is not None


def drop_file_list(stage_dir: Path) -> None:
    """Make a stage record look like one written before records listed their files."""
    manifest = json.loads((stage_dir / "manifest.json").read_text(encoding="utf-8"))
    del manifest["pipeline"]["files"]
    (stage_dir / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")


def test_old_record_keeps_user_file(study_copy):
    config, copy = study_copy
    drop_file_list(copy / "compare")
    notes = copy / "compare" / "NOTES.txt"
    notes.write_text("my notes")

    with pytest.raises(FileExistsError) as error:
        run_study(config, copy, from_stage="compare")

    partial = [entry for entry in copy.iterdir() if entry.name.startswith(".compare.partial-")]
    assert len(partial) == 1
    assert str(error.value) == (
        f"{copy / 'compare'} contains 1 file that the new run of stage compare did not write "
        "(NOTES.txt), and its record, from an older dimalign, lists no files, and the stage "
        "replaces its folder as a whole when it runs again: move the file out of the folder, "
        f"then run the study again. The finished output of this run is kept in {partial[0]}, "
        "and the next run moves it into place without running stage compare again"
    )
    assert notes.read_text() == "my notes"


def test_old_record_without_user_files_reruns(study_copy):
    config, copy = study_copy
    drop_file_list(copy / "compare")

    plan = run_study(config, copy, from_stage="compare")

    assert "compare" in plan.to_run
    assert isinstance(read_stage_record(copy / "compare")["files"], list)


def test_damaged_file_list_rejected(study_copy, caplog):
    """A stage record whose file list contains a non-string counts as damaged, not as a crash."""
    config, copy = study_copy
    manifest_path = copy / "compare" / "manifest.json"
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    manifest["pipeline"]["files"] = [["matching.csv"]]
    manifest_path.write_text(json.dumps(manifest), encoding="utf-8")

    with caplog.at_level("WARNING", logger="dimalign.report.pipeline"), pytest.raises(FileExistsError) as error:
        run_study(config, copy, from_stage="compare")

    assert str(error.value) == (
        f"{copy / 'compare'} has no readable pipeline record in its manifest.json, so dimalign run did "
        "not write it (or its record is damaged), and stage compare would replace it; "
        "move the folder away or choose another study directory"
    )
    assert (
        f"{manifest_path} has an invalid pipeline record: 'files' must be a JSON array of strings, "
        "so its stage counts as unfinished"
    ) in caplog.text


def test_file_added_before_move_is_kept(study_copy, tmp_path, monkeypatch):
    from dimalign.report import pipeline

    config, copy = study_copy
    notes = copy / "compare" / "NOTES.txt"
    real_replace = pipeline.replace_folder

    def replace_while_user_writes(*args, **kwargs):
        # The user writes after the stage's own check and before the move.
        notes.write_text("written before the move")
        return real_replace(*args, **kwargs)

    monkeypatch.setattr(pipeline, "replace_folder", replace_while_user_writes)
    with pytest.raises(FileExistsError) as error:
        run_study(config, copy, overrides=["compare.n_bootstrap=5"])
    monkeypatch.undo()

    partial = [entry for entry in copy.iterdir() if entry.name.startswith(".compare.partial-")]
    assert len(partial) == 1
    assert str(error.value) == (
        f"{copy / 'compare'} contains 1 file that stage compare did not write (NOTES.txt), "
        "and the stage replaces its folder as a whole when it runs again: move the file out of "
        f"the folder, then run the study again. The finished output of this run is kept in {partial[0]}, "
        "and the next run moves it into place without running stage compare again"
    )
    assert notes.read_text() == "written before the move"
    assert read_stage_record(copy / "compare")["settings"]["n_bootstrap"] == 20
    finished = read_stage_record(partial[0])
    assert finished["settings"]["n_bootstrap"] == 5

    # Once the file is moved out, the next run moves the kept output into place.
    notes.rename(tmp_path / "NOTES.txt")
    calls = []

    def counted(context):
        calls.append(context.name)
        raise RuntimeError("compare ran again")

    monkeypatch.setitem(stages.STAGES, "compare", dataclasses.replace(stages.STAGES["compare"], run=counted))
    plan = run_study(config, copy, overrides=["compare.n_bootstrap=5"])

    assert plan.to_run == ["compare"]
    assert calls == []
    assert read_stage_record(copy / "compare") == finished
    assert not partial[0].exists()
    assert (tmp_path / "NOTES.txt").read_text() == "written before the move"


def test_folder_created_during_move_is_kept(study_copy, tmp_path, monkeypatch):
    from dimalign.report import stage_folders

    config, copy = study_copy
    notes = copy / "compare" / "NOTES.txt"
    real_check = stage_folders.unwritten_files

    def check_while_user_writes(folder, *args, **kwargs):
        found = real_check(folder, *args, **kwargs)
        if ".compare.old-" in folder.name:
            # The old folder has its hidden name now, and the user creates a new one.
            notes.parent.mkdir()
            notes.write_text("written during the move")
        return found

    monkeypatch.setattr(stage_folders, "unwritten_files", check_while_user_writes)
    with pytest.raises(FileExistsError) as error:
        run_study(config, copy, overrides=["compare.n_bootstrap=5"])
    monkeypatch.undo()

    partial = [entry for entry in copy.iterdir() if entry.name.startswith(".compare.partial-")]
    assert len(partial) == 1
    message = str(error.value)
    assert message.startswith(
        f"cannot move the finished output of stage compare from {partial[0]} to {copy / 'compare'} ("
    )
    assert message.endswith(
        f"if you created {copy / 'compare'} during the run, move it out of the study, then run the study "
        "again. The next run moves the finished output into place without running stage compare again"
    )
    assert notes.read_text() == "written during the move"

    shutil.move(copy / "compare", tmp_path / "mine")
    plan = run_study(config, copy, overrides=["compare.n_bootstrap=5"])

    assert plan.stage("compare").reasons == ["new"]
    assert read_stage_record(copy / "compare")["settings"]["n_bootstrap"] == 5
    assert (tmp_path / "mine" / "NOTES.txt").read_text() == "written during the move"
    assert [entry.name for entry in copy.iterdir() if ".old-" in entry.name or ".partial-" in entry.name] == []


#: Capabilities that let root read and enter folders without read permission.
READ_OVERRIDES = "-dac_override,-dac_read_search"


def run_without_read_override(arguments: list[str]) -> subprocess.CompletedProcess:
    """Run ``dimalign`` in a child process that, even as root, cannot read a folder without read permission."""
    command = [sys.executable, "-m", "dimalign", *arguments]
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("root reads every folder, and setpriv (util-linux), which drops that right, is missing")
        command = [setpriv, "--bounding-set", READ_OVERRIDES, "--inh-caps", READ_OVERRIDES, *command]
    source = Path(__file__).resolve().parents[2] / "src"
    env = {**os.environ, "PYTHONPATH": str(source), "OMP_NUM_THREADS": "1"}
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)


@pytest.mark.parametrize("place", ["stage", "leftover", "input"])
def test_unreadable_folder_is_named(study, tmp_path, place):
    config, study_dir = study
    copy = tmp_path / "study"
    shutil.copytree(study_dir, copy)
    run_study(config, copy)  # earlier tests may leave stages to rerun
    arguments = ["run", str(config), "-o", str(copy)]
    if place == "stage":
        locked = copy / "compare" / "notes"
        arguments += ["--from", "compare"]
    elif place == "leftover":
        locked = copy / ".compare.partial-0123456789abcdef" / "notes"
    else:
        locked = tmp_path / "images" / "notes"
        arguments += ["--set", f"inputs.images={str(tmp_path / 'images')!r}", "--dry-run"]
    locked.mkdir(parents=True)
    (locked / "NOTES.txt").write_text("my notes")
    locked.chmod(0)
    try:
        result = run_without_read_override(arguments)
    finally:
        locked.chmod(0o755)

    assert result.returncode == 1, result.stderr
    error = result.stderr.strip().splitlines()[-1]
    expected = {
        "stage": (
            f"dimalign run: error: cannot read {locked}, a folder inside {copy / 'compare'} "
            f"(Permission denied): make it readable (chmod -R u+rwX {locked}) or move it out of the "
            "study, then run the study again"
        ),
        "leftover": (
            f"dimalign run: error: could not remove {locked.parent}, left by an interrupted run "
            f"(Permission denied: {locked}): make it writable (chmod -R u+rwX {locked.parent}) "
            "or delete it, then run the study again"
        ),
        "input": (
            f"dimalign run: error: cannot read {locked}, a folder inside {tmp_path / 'images'} "
            f"(Permission denied): make it readable (chmod -R u+rwX {locked}) or move it out of the "
            "input folder, then run the study again"
        ),
    }[place]
    assert error == expected
    assert (locked / "NOTES.txt").read_text() == "my notes"
    assert read_stage_record(copy / "compare")["finished"] == read_stage_record(study_dir / "compare")["finished"]


def test_unreadable_study_record_is_named(study, tmp_path):
    config, study_dir = study
    copy = tmp_path / "study"
    shutil.copytree(study_dir, copy)
    record = copy / "pipeline.json"
    before = record.read_bytes()
    record.chmod(0)
    try:
        result = run_without_read_override(["run", str(config), "-o", str(copy), "--dry-run"])
    finally:
        record.chmod(0o644)

    assert result.returncode == 1, result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        f"dimalign run: error: cannot read {record} (Permission denied), so it is unknown whether "
        f"{copy} is a study of dimalign run: make the file readable (chmod u+r {record}), then "
        "run the command again"
    )
    assert record.read_bytes() == before


def keep_finished_output(config: Path, study_dir: Path, name: str) -> Path:
    """Copy a finished stage folder to the partial folder that a run whose move failed leaves."""
    from dimalign.report.config import load_config
    from dimalign.report.pipeline import plan_study

    stage_hash = plan_study(load_config(config), study_dir).stage(name).hash
    finished_partial = study_dir / f".{name}.partial-{stage_hash[:16]}"
    shutil.copytree(study_dir / name, finished_partial)
    return finished_partial


def count_runs(monkeypatch, name: str) -> list[str]:
    """Record each run of stage ``name``, which still writes its output."""
    calls: list[str] = []
    real_run = stages.STAGES[name].run

    def counted(context):
        calls.append(context.name)
        return real_run(context)

    monkeypatch.setitem(stages.STAGES, name, dataclasses.replace(stages.STAGES[name], run=counted))
    return calls


def test_from_stage_ignores_kept_output(study_copy, monkeypatch):
    config, copy = study_copy
    finished_partial = keep_finished_output(config, copy, "compare")
    calls = count_runs(monkeypatch, "compare")

    plan = run_study(config, copy, from_stage="compare")

    assert plan.to_run == ["compare"]
    assert calls == ["compare"]
    assert not finished_partial.exists()


def test_rerun_upstream_ignores_kept_output(study_copy, monkeypatch):
    config, copy = study_copy
    finished_partial = keep_finished_output(config, copy, "compare")
    shutil.rmtree(copy / "human_fit")
    calls = count_runs(monkeypatch, "compare")

    plan = run_study(config, copy)

    assert "human_fit" in plan.to_run
    assert calls == ["compare"]
    assert not finished_partial.exists()


def leave_old_folder_with_notes(copy: Path) -> Path:
    """Leave the old compare folder of a run killed after the rename, with a record that lists no files and a user file."""
    drop_file_list(copy / "compare")
    (copy / "compare" / "NOTES.txt").write_text("my notes")
    old = copy / ".compare.old-99999"
    (copy / "compare").rename(old)
    return old


def notes_in_old_folder_error(old: Path) -> str:
    """Return the error about ``NOTES.txt`` in an old compare folder whose record lists no files."""
    return (
        f"{old} contains 1 file that the new run of stage compare did not write (NOTES.txt), "
        "and its record, from an older dimalign, lists no files, and the stage replaces its folder "
        "as a whole when it runs again: move the file out of the folder, then run the study again"
    )


def test_old_record_folder_keeps_file(study_copy, tmp_path):
    config, copy = study_copy
    finished_partial = keep_finished_output(config, copy, "compare")
    old = leave_old_folder_with_notes(copy)

    with pytest.raises(FileExistsError) as error:
        run_study(config, copy)

    assert str(error.value) == notes_in_old_folder_error(old)
    assert (old / "NOTES.txt").read_text() == "my notes"
    assert finished_partial.is_dir()

    (old / "NOTES.txt").rename(tmp_path / "NOTES.txt")
    plan = run_study(config, copy)

    assert plan.to_run == ["compare"]
    assert not old.exists()
    assert not finished_partial.exists()
    assert read_stage_record(copy / "compare") is not None


def test_old_folder_without_basis_is_kept(study_copy):
    config, copy = study_copy
    old = leave_old_folder_with_notes(copy)

    with pytest.raises(FileExistsError) as error:
        run_study(config, copy)

    assert str(error.value) == (
        f"{old} contains the previous output of stage compare, left by an interrupted run, and its "
        "record, from an older dimalign, lists no files, so files of yours in it cannot be distinguished from "
        "the stage's: move any files of yours out of it, delete it, then run the study again"
    )
    assert (old / "NOTES.txt").read_text() == "my notes"


@pytest.mark.parametrize("old_lock", [False, True])
def test_read_only_study_is_named(study_copy, old_lock):
    config, copy = study_copy
    before = read_stage_record(copy / "compare")["finished"]
    if old_lock:
        # A killed run leaves its lock file, which opens in a read-only study directory too.
        (copy / ".pipeline.lock").touch()
    copy.chmod(0o555)
    try:
        result = run_without_read_override(["run", str(config), "-o", str(copy), "--from", "compare"])
    finally:
        copy.chmod(0o755)

    assert result.returncode == 1, result.stderr
    if old_lock:
        expected = (
            f"dimalign run: error: cannot write the study directory {copy} (Permission denied): make it "
            f"writable (chmod u+rwx {copy}) or choose another one with -o, then run the study again"
        )
    else:
        expected = (
            f"dimalign run: error: cannot create the lock file {copy / '.pipeline.lock'} (Permission denied): "
            f"make the study directory writable (chmod u+rwx {copy}) or choose another one with -o, then run "
            "the study again"
        )
    assert result.stderr.strip().splitlines()[-1] == expected
    assert read_stage_record(copy / "compare")["finished"] == before
    entries = [*STAGES, "pipeline.json", *([".pipeline.lock"] if old_lock else [])]
    assert sorted(entry.name for entry in copy.iterdir()) == sorted(entries)


def test_folder_renamed_by_running_study(study_copy, monkeypatch):
    """A stage folder that the run holding the lock renames during the check is no unreadable folder."""
    from dimalign.report import stage_records

    config, copy = study_copy
    old = copy / ".compare.old-99999"
    real_stage_files = stage_records.stage_files

    def stage_files_while_other_run_moves(folder):
        if folder == copy / "compare" and not old.exists():
            # The run that holds the lock replaces the folder now.
            (copy / "compare").rename(old)
        return real_stage_files(folder)

    monkeypatch.setattr(stage_records, "stage_files", stage_files_while_other_run_moves)
    with open(copy / ".pipeline.lock", "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(RuntimeError) as error:
            run_study(config, copy, from_stage="compare")

    assert str(error.value) == f"another dimalign run is using {copy}; wait for it to finish"
    assert read_stage_record(old) is not None


def test_stage_folder_symlink_rejected(study_copy, tmp_path):
    config, copy = study_copy
    elsewhere = tmp_path / "other_disk" / "compare"
    elsewhere.parent.mkdir()
    (copy / "compare").rename(elsewhere)
    (copy / "compare").symlink_to(elsewhere, target_is_directory=True)

    with pytest.raises(FileExistsError) as error:
        run_study(config, copy, from_stage="compare")

    assert str(error.value) == (
        f"{copy / 'compare'} is a symbolic link to {elsewhere}, and stage compare replaces its folder as a "
        "whole when it runs again, so the new output would not go there: move the folder to "
        f"{copy / 'compare'} in place of the link, then run the study again"
    )
    assert (copy / "compare").is_symlink()
    assert read_stage_record(elsewhere) is not None
    # A stage that does not run keeps the link.
    assert run_study(config, copy).to_run == []


def test_leftover_symlink_removed_not_target(study_copy, tmp_path):
    config, copy = study_copy
    elsewhere = tmp_path / "other_disk" / "compare"
    shutil.copytree(copy / "compare", elsewhere)
    old = copy / ".compare.old-99999"
    old.symlink_to(elsewhere, target_is_directory=True)

    assert run_study(config, copy).to_run == []

    assert not old.is_symlink()
    assert read_stage_record(elsewhere) is not None


def test_old_folder_checked_before_partial_removed(study_copy):
    config, copy = study_copy
    finished_partial = keep_finished_output(config, copy, "compare")
    drop_file_list(copy / "compare")
    old = copy / ".compare.old-99999"
    (copy / "compare").rename(old)

    # --from makes the kept output stale, so the run removes it after it compared the old folder with it.
    plan = run_study(config, copy, from_stage="compare")

    assert plan.to_run == ["compare"]
    assert not old.exists()
    assert not finished_partial.exists()
    assert read_stage_record(copy / "compare") is not None


def test_read_only_stage_folder_named(study_copy):
    config, copy = study_copy
    (copy / "compare").chmod(0o555)
    try:
        result = run_without_read_override(["run", str(config), "-o", str(copy), "--from", "compare"])
    finally:
        for folder in [copy / "compare", *copy.glob(".compare.old-*")]:
            folder.chmod(0o755)

    assert result.returncode == 0, result.stderr
    old = [entry for entry in copy.iterdir() if entry.name.startswith(".compare.old-")]
    assert len(old) == 1
    warnings = [line for line in result.stderr.splitlines() if "could not remove" in line]
    assert len(warnings) == 1
    assert f"could not remove {old[0]}, the previous output of stage compare ([Errno 13] Permission denied: " in warnings[0]
    assert warnings[0].endswith(
        f"make it writable (chmod -R u+rwX {old[0]}) or delete it, because the next run stops until it is removed"
    )


def test_from_fit_ignores_kept_checkpoint(study_copy, monkeypatch):
    config, copy = study_copy
    finished_partial = keep_finished_output(config, copy, "dnn_fit")
    assert (finished_partial / "checkpoint.pt").is_file()
    real_run = stages.STAGES["dnn_fit"].run
    started_with_checkpoint = []

    def checked(context):
        started_with_checkpoint.append((context.out_dir / "checkpoint.pt").exists())
        return real_run(context)

    monkeypatch.setitem(stages.STAGES, "dnn_fit", dataclasses.replace(stages.STAGES["dnn_fit"], run=checked))
    plan = run_study(config, copy, from_stage="dnn_fit")

    assert plan.to_run == ["dnn_fit", "evaluate", "compare", "map"]
    # A forced fit starts anew instead of resuming from the kept output's final checkpoint.
    assert started_with_checkpoint == [False]
    assert not finished_partial.exists()


def test_old_folder_after_move_removed(study_copy, monkeypatch, tmp_path):
    config, copy = study_copy
    drop_file_list(copy / "compare")
    real_rmtree = shutil.rmtree

    def killed_before_old_removed(path, *args, **kwargs):
        if ".compare.old-" in Path(path).name:
            raise KeyboardInterrupt
        return real_rmtree(path, *args, **kwargs)

    # The run is killed after the new folder is in place, before the old one is deleted.
    monkeypatch.setattr(shutil, "rmtree", killed_before_old_removed)
    with pytest.raises(KeyboardInterrupt):
        run_study(config, copy, from_stage="compare")
    monkeypatch.undo()
    old = [entry for entry in copy.iterdir() if entry.name.startswith(".compare.old-")]
    assert len(old) == 1
    finished = read_stage_record(copy / "compare")
    assert isinstance(finished["files"], list)

    # The old record lists no files, so the run compares the old folder with the new one in place.
    shutil.copytree(old[0], tmp_path / "old")
    assert run_study(config, copy).to_run == []
    assert not old[0].exists()
    assert read_stage_record(copy / "compare") == finished

    # A file of the user's in it stops the run and stays.
    shutil.copytree(tmp_path / "old", old[0])
    (old[0] / "NOTES.txt").write_text("my notes")
    with pytest.raises(FileExistsError) as error:
        run_study(config, copy)
    assert str(error.value) == notes_in_old_folder_error(old[0])
    assert (old[0] / "NOTES.txt").read_text() == "my notes"


def test_partial_symlink_not_reused(study_copy, tmp_path):
    config, copy = study_copy
    finished_partial = keep_finished_output(config, copy, "compare")
    elsewhere = tmp_path / "other_disk" / "compare"
    elsewhere.parent.mkdir()
    finished_partial.rename(elsewhere)
    finished_partial.symlink_to(elsewhere, target_is_directory=True)
    shutil.rmtree(copy / "compare")

    plan = run_study(config, copy)

    assert plan.to_run == ["compare"]
    assert not (copy / "compare").is_symlink()
    assert read_stage_record(copy / "compare") is not None
    assert not finished_partial.is_symlink()
    assert read_stage_record(elsewhere) is not None


def test_own_pid_old_folder_checked(study_copy, monkeypatch):
    config, copy = study_copy
    old = copy / f".compare.old-{os.getpid()}"
    real_run = stages.STAGES["compare"].run

    # The cleanup at the start of the run removes leftovers, so the folder
    # must appear while the stage runs to reach the rename of the old output.
    def run_while_user_writes(context):
        old.mkdir()
        (old / "NOTES.txt").write_text("my notes")
        return real_run(context)

    monkeypatch.setitem(
        stages.STAGES, "compare", dataclasses.replace(stages.STAGES["compare"], run=run_while_user_writes)
    )
    with pytest.raises(FileExistsError) as error:
        run_study(config, copy, from_stage="compare")

    partial = [entry for entry in copy.iterdir() if entry.name.startswith(".compare.partial-")]
    assert len(partial) == 1
    assert str(error.value) == (
        f"{old} contains 1 file that stage compare did not write (NOTES.txt), "
        "and the stage replaces its folder as a whole when it runs again: move the file out of "
        f"the folder, then run the study again. The finished output of this run is kept in {partial[0]}, "
        "and the next run moves it into place without running stage compare again"
    )
    assert (old / "NOTES.txt").read_text() == "my notes"
    assert read_stage_record(copy / "compare") is not None

    monkeypatch.undo()
    (old / "NOTES.txt").unlink()
    plan = run_study(config, copy, from_stage="compare")

    assert plan.to_run == ["compare"]
    assert not old.exists()
    assert not partial[0].exists()


def flip_byte_keep_time(path: Path) -> bytes:
    """Change one byte of a file, keeping its size and modification time; return the new content."""
    info = path.stat()
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 1
    path.write_bytes(bytes(data))
    os.utime(path, ns=(info.st_atime_ns, info.st_mtime_ns))
    return bytes(data)


def test_edited_kept_output_runs_again(study_copy, monkeypatch, caplog):
    config, copy = study_copy
    finished_partial = keep_finished_output(config, copy, "compare")
    shutil.rmtree(copy / "compare")
    edited = flip_byte_keep_time(finished_partial / "matching.csv")
    calls = count_runs(monkeypatch, "compare")

    with caplog.at_level("WARNING", logger="dimalign.report.pipeline"):
        plan = run_study(config, copy)

    assert plan.to_run == ["compare"]
    assert calls == ["compare"]
    kept = copy / "compare.edited-1"
    assert (kept / "matching.csv").read_bytes() == edited
    assert not finished_partial.exists()
    assert read_stage_record(copy / "compare") is not None
    warnings = [record.getMessage() for record in caplog.records if record.levelname == "WARNING"]
    assert warnings == [
        f"{finished_partial} contains output of stage compare in which 1 file changed after the stage "
        "wrote it (matching.csv: its size or SHA-256 differs from the stage record), so the run does "
        f"not reuse or delete it: the folder is kept as {kept}, and stage compare runs again"
    ]


def test_edited_stage_folder_kept_on_rerun(study_copy, caplog):
    config, copy = study_copy
    edited = flip_byte_keep_time(copy / "compare" / "matching.csv")

    with caplog.at_level("WARNING", logger="dimalign.report.pipeline"):
        plan = run_study(config, copy, from_stage="compare")

    assert plan.to_run == ["compare"]
    kept = copy / "compare.edited-1"
    assert (kept / "matching.csv").read_bytes() == edited
    assert (copy / "compare" / "matching.csv").read_bytes() != edited
    assert [entry.name for entry in copy.iterdir() if ".old-" in entry.name] == []
    warnings = [record.getMessage() for record in caplog.records if record.levelname == "WARNING"]
    assert len(warnings) == 1
    assert warnings[0].startswith(f"{copy / '.compare.old-'}")
    assert warnings[0].endswith(
        "contains output of stage compare in which 1 file changed after the stage wrote it (matching.csv: "
        "its size or SHA-256 differs from the stage record), so the run does not delete it: "
        f"the folder is kept as {kept}, and the new output of stage compare is in {copy / 'compare'}"
    )


def test_kept_output_without_digests_reused(study_copy, monkeypatch):
    config, copy = study_copy
    finished_partial = keep_finished_output(config, copy, "compare")
    shutil.rmtree(copy / "compare")
    manifest = json.loads((finished_partial / "manifest.json").read_text(encoding="utf-8"))
    del manifest["pipeline"]["file_digests"]
    (finished_partial / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    edited = flip_byte_keep_time(finished_partial / "matching.csv")
    calls = count_runs(monkeypatch, "compare")

    plan = run_study(config, copy)

    # A record written before the digests existed lists only file names, as before.
    assert plan.to_run == ["compare"]
    assert calls == []
    assert (copy / "compare" / "matching.csv").read_bytes() == edited


def test_old_folder_without_record_kept(study_copy):
    config, copy = study_copy
    old = copy / ".compare.old-99999"
    old.mkdir()
    shutil.copy(copy / "compare" / "matching.csv", old / "matching.csv")
    (old / "NOTES.txt").write_text("my notes")

    with pytest.raises(FileExistsError) as error:
        run_study(config, copy)

    assert str(error.value) == (
        f"{old} has no stage record, so dimalign run cannot tell whether it left this folder, and it "
        f"contains 1 file that the stage record in {copy / 'compare'} does not list (NOTES.txt): move "
        "your files out of it, delete it, then run the study again"
    )
    assert (old / "NOTES.txt").read_text() == "my notes"
    assert (old / "matching.csv").is_file()


def test_old_folder_without_basis_kept(study_copy, tmp_path):
    config, copy = study_copy
    old = copy / ".compare.old-99999"
    old.mkdir()
    shutil.copy(copy / "compare" / "matching.csv", old / "matching.csv")
    shutil.move(copy / "compare", tmp_path / "compare")

    with pytest.raises(FileExistsError) as error:
        run_study(config, copy)

    assert str(error.value) == (
        f"{old} has no stage record, and no stage record of stage compare lists its files, so dimalign "
        "run cannot tell whether it left this folder: move your files out of it, delete it, then run "
        "the study again"
    )
    assert (old / "matching.csv").is_file()


def test_old_folder_of_stage_files_removed(study_copy):
    config, copy = study_copy
    old = copy / ".compare.old-99999"
    old.mkdir()
    # What a run killed while it deleted its old folder leaves: some of the stage's files, no record.
    for name in ("matching.csv", "rsa.json"):
        shutil.copy(copy / "compare" / name, old / name)
    empty = copy / ".dnn_fit.old-99999" / "empty"
    empty.mkdir(parents=True)

    assert run_study(config, copy).to_run == []

    assert not old.exists()
    assert not empty.parent.exists()


def test_folder_fingerprint_reads_content(tmp_path):
    from dimalign.report.fingerprints import fingerprint

    folder = tmp_path / "images"
    (folder / "cat").mkdir(parents=True)
    (folder / "cat" / "1.png").write_bytes(b"first image")
    (folder / "dog.png").write_bytes(b"second image")
    before = fingerprint(folder)

    copy = tmp_path / "copy"
    shutil.copytree(folder, copy, copy_function=shutil.copy)
    assert fingerprint(copy) == before
    flip_byte_keep_time(folder / "cat" / "1.png")
    assert fingerprint(folder) != before


def copy_tiny_study(tiny_study: Path, tmp_path: Path) -> tuple[Path, Path]:
    """Copy the tiny study with images, its data and its study file; return the study file and the copy."""
    root = tmp_path / "root"
    shutil.copytree(tiny_study.parent, root, ignore=shutil.ignore_patterns("labels"))
    return root / "study.toml", root / "study"


def test_image_edit_keeping_time_reruns(tiny_study, tmp_path):
    from dimalign.report.config import load_config
    from dimalign.report.pipeline import plan_study

    config, copy = copy_tiny_study(tiny_study, tmp_path)
    assert plan_study(load_config(config), copy).stage("compare").reasons == ["unchanged"]

    flip_byte_keep_time(config.parent / "data" / "images" / "object03.png")
    plan = plan_study(load_config(config), copy)

    assert plan.stage("compare").reasons == ["input changed: images"]
    assert "input changed: images" in plan.stage("report").reasons
    assert plan.stage("human_fit").reasons == ["unchanged"]


def test_listing_fingerprint_record_still_skips(tiny_study, tmp_path):
    from dimalign.report import pipeline
    from dimalign.report.config import load_config
    from dimalign.report.fingerprints import folder_listing

    config, copy = copy_tiny_study(tiny_study, tmp_path)
    stage = pipeline.plan_study(load_config(config), copy).stage("compare")
    listing = folder_listing(stage.inputs["images"])
    assert listing.startswith("listing:")
    # A record of a dimalign that fingerprinted folders by their listing.
    manifest_path = copy / "compare" / "manifest.json"
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    manifest["pipeline"]["inputs"]["images"]["fingerprint"] = listing
    manifest["pipeline"]["hash"] = pipeline.stage_hash(
        "compare", stage.settings, {**stage.fingerprints, "images": listing}, stage.upstream_hashes
    )
    manifest_path.write_text(json.dumps(manifest), encoding="utf-8")

    stage = pipeline.plan_study(load_config(config), copy).stage("compare")

    assert stage.reasons == ["unchanged"]
    assert stage.fingerprints["images"] == listing


@pytest.mark.parametrize("name", ["compare", "human_fit"])
def test_interrupted_stage_is_reported(study_copy, monkeypatch, caplog, name):
    config, copy = study_copy

    def interrupted(context):
        (context.out_dir / "checkpoint.pt").write_bytes(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setitem(stages.STAGES, name, dataclasses.replace(stages.STAGES[name], run=interrupted))
    with caplog.at_level("WARNING", logger="dimalign.report.pipeline"), pytest.raises(KeyboardInterrupt):
        run_study(config, copy, from_stage=name)

    partial = [entry for entry in copy.iterdir() if entry.name.startswith(f".{name}.partial-")]
    warnings = [record.getMessage() for record in caplog.records if record.levelname == "WARNING"]
    expected = (
        f"stage {name} was stopped before it finished: {copy / name} still contains its previous output, "
        "and the stages before it are finished. "
    )
    if name == "human_fit":
        assert len(partial) == 1
        expected += (
            f"The unfinished fit is kept in {partial[0]}, and the next run with the same settings of stage "
            f"{name} continues it from its last checkpoint"
        )
    else:
        assert partial == []
        expected += f"Its partial output is deleted, and the next run with the same options runs stage {name} again"
    assert warnings == [expected]


def test_unreadable_stage_file_is_named(study_copy):
    config, copy = study_copy
    locked = copy / "compare" / "matching.csv"
    locked.chmod(0)
    try:
        result = run_without_read_override(["run", str(config), "-o", str(copy), "--from", "compare"])
    finally:
        locked.chmod(0o644)

    assert result.returncode == 1, result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        f"dimalign run: error: cannot read {locked} (Permission denied), so it is unknown whether it "
        f"changed after the stage wrote it: make it readable (chmod u+r {locked}) or move it out of "
        f"{copy / 'compare'}, then run the study again"
    )
    assert read_stage_record(copy / "compare") is not None
    assert [entry.name for entry in copy.iterdir() if ".old-" in entry.name] == []


def test_study_moved_during_stage_is_named(study_copy, monkeypatch, tmp_path, caplog):
    config, copy = study_copy
    moved = tmp_path / "moved"
    real_run = stages.STAGES["compare"].run

    def run_while_user_moves(context):
        copy.rename(moved)
        return real_run(context)

    monkeypatch.setitem(
        stages.STAGES, "compare", dataclasses.replace(stages.STAGES["compare"], run=run_while_user_moves)
    )
    with caplog.at_level("WARNING", logger="dimalign.report.pipeline"), pytest.raises(FileNotFoundError) as error:
        run_study(config, copy, from_stage="compare")

    assert str(error.value) == (
        f"the study directory {copy} was moved or deleted while stage compare ran: run the study again "
        "with -o set to its new path, where the stages that finished before are kept"
    )
    assert [record.getMessage() for record in caplog.records if "could not remove" in record.getMessage()] == []
    monkeypatch.undo()
    plan = run_study(config, moved)
    assert plan.to_run == []
    assert [entry.name for entry in moved.iterdir() if ".partial-" in entry.name] == []


def test_edited_folder_name_skips_taken(study_copy, tmp_path):
    config, copy = study_copy
    (copy / "compare.edited-1").symlink_to(tmp_path / "missing", target_is_directory=True)
    (copy / "compare.edited-2").write_text("a file of mine")
    edited = flip_byte_keep_time(copy / "compare" / "matching.csv")

    assert run_study(config, copy, from_stage="compare").to_run == ["compare"]

    assert (copy / "compare.edited-3" / "matching.csv").read_bytes() == edited
    assert (copy / "compare.edited-1").is_symlink()
    assert (copy / "compare.edited-2").read_text() == "a file of mine"


def test_folder_fingerprint_names_broken_link(tmp_path):
    from dimalign.report.fingerprints import fingerprint

    folder = tmp_path / "images"
    folder.mkdir()
    (folder / "cat.png").symlink_to(tmp_path / "moved.png")

    with pytest.raises(FileNotFoundError) as error:
        fingerprint(folder)

    assert str(error.value) == (
        f"{folder / 'cat.png'}, a file inside the input folder {folder}, is a symbolic link to the missing "
        f"{tmp_path / 'moved.png'}: restore the target or remove the link, then run the study again"
    )


def test_edited_skipped_stage_reruns(study_copy, caplog):
    config, copy = study_copy
    edited = flip_byte_keep_time(copy / "dnn_triplets" / "train.npy")

    with caplog.at_level("WARNING", logger="dimalign.report.pipeline"):
        plan = run_study(config, copy)

    assert plan.stage("dnn_triplets").reasons == ["output edited: train.npy"]
    assert plan.to_run == ["dnn_triplets", "dnn_fit", "evaluate", "compare", "map"]
    assert plan.stage("dnn_fit").reasons == ["upstream reran: dnn_triplets"]
    kept = copy / "dnn_triplets.edited-1"
    assert (kept / "train.npy").read_bytes() == edited
    assert (copy / "dnn_triplets" / "train.npy").read_bytes() != edited
    warnings = [record.getMessage() for record in caplog.records if record.levelname == "WARNING"]
    assert len(warnings) == 1
    assert f"the folder is kept as {kept}" in warnings[0]
    assert run_study(config, copy).to_run == []


def test_deleted_stage_file_reruns(study_copy):
    config, copy = study_copy
    (copy / "compare" / "rsa.json").unlink()

    plan = run_study(config, copy)

    assert plan.stage("compare").reasons == ["output missing: rsa.json"]
    assert plan.to_run == ["compare"]
    assert (copy / "compare" / "rsa.json").is_file()
    assert [entry.name for entry in copy.iterdir() if ".edited-" in entry.name] == []


def test_deleted_checkpoint_keeps_fit(study_copy):
    config, copy = study_copy
    checkpoint = copy / "human_fit" / "checkpoint.pt"
    assert checkpoint.is_file()
    checkpoint.unlink()

    plan = run_study(config, copy)

    assert plan.to_run == []
    assert plan.stage("human_fit").reasons == ["unchanged"]


def test_touched_stage_file_skips(study_copy):
    config, copy = study_copy
    os.utime(copy / "compare" / "matching.csv", ns=(10**18, 10**18))

    plan = run_study(config, copy)

    assert plan.to_run == []
    assert plan.stage("compare").reasons == ["unchanged"]


def test_dry_run_names_edited_output(study_copy):
    config, copy = study_copy
    edited = flip_byte_keep_time(copy / "compare" / "matching.csv")

    plan = run_study(config, copy, dry_run=True)

    assert plan.stage("compare").reasons == ["output edited: matching.csv"]
    assert plan.to_run == ["compare"]
    assert (copy / "compare" / "matching.csv").read_bytes() == edited
    assert not (copy / "compare.edited-1").exists()


def fingerprint_in_child(folder: Path) -> subprocess.CompletedProcess:
    """Fingerprint a folder in a child process that a blocking read cannot hang for more than 20 s."""
    code = (
        "import sys\nfrom pathlib import Path\nfrom dimalign.report.fingerprints import fingerprint\n"
        "try:\n    print(fingerprint(Path(sys.argv[1])))\n"
        "except (OSError, ValueError) as error:\n    print(error)\n    sys.exit(1)\n"
    )
    source = Path(__file__).resolve().parents[2] / "src"
    env = {**os.environ, "PYTHONPATH": str(source)}
    return subprocess.run([sys.executable, "-c", code, str(folder)], capture_output=True, text=True,
                          env=env, timeout=20)


def test_fifo_in_input_folder_named(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    (folder / "cat.png").write_bytes(b"an image")
    os.mkfifo(folder / "dog.png")

    result = fingerprint_in_child(folder)

    assert result.returncode == 1, result.stderr
    assert result.stdout.strip() == (
        f"{folder / 'dog.png'}, a file inside the input folder {folder}, is not a regular file (a named "
        "pipe, socket or device), so the run cannot hash it: move it out of the folder, then run the "
        "study again"
    )


def test_removed_input_file_named(tmp_path):
    from dimalign.report.fingerprints import _hash_input_file

    folder = tmp_path / "images"
    folder.mkdir()

    with pytest.raises(FileNotFoundError) as error:
        _hash_input_file(folder, folder / "cat.png")

    assert str(error.value) == (
        f"{folder / 'cat.png'}, a file inside the input folder {folder}, was removed or renamed while the "
        "run hashed the folder: run the study again once the folder no longer changes"
    )


def test_stage_files_hashed_once(study_copy, monkeypatch):
    from dimalign.report import fingerprints, pipeline, stage_records

    config, copy = study_copy
    flip_byte_keep_time(copy / "compare" / "matching.csv")
    hashed: list[Path] = []
    real_sha256 = pipeline.sha256_file

    def counted(path, *args, **kwargs):
        hashed.append(Path(path))
        return real_sha256(path, *args, **kwargs)

    for module in (pipeline, fingerprints, stage_records):
        monkeypatch.setattr(module, "sha256_file", counted)
    plan = run_study(config, copy)

    assert plan.to_run == ["compare"]
    assert sorted({path for path in hashed if hashed.count(path) > 1}) == []


def test_dry_run_names_edited_leftover(study_copy, caplog):
    config, copy = study_copy
    finished_partial = keep_finished_output(config, copy, "compare")
    shutil.rmtree(copy / "compare")
    edited = flip_byte_keep_time(finished_partial / "matching.csv")

    with caplog.at_level("WARNING", logger="dimalign.report.pipeline"):
        plan = run_study(config, copy, dry_run=True)

    assert plan.to_run == ["compare"]
    assert (finished_partial / "matching.csv").read_bytes() == edited
    assert not (copy / "compare.edited-1").exists()
    warnings = [record.getMessage() for record in caplog.records if record.levelname == "WARNING"]
    assert warnings == [
        f"{finished_partial} contains output of stage compare in which 1 file changed after the stage "
        "wrote it (matching.csv: its size or SHA-256 differs from the stage record), so a run would "
        f"keep the folder as {copy / 'compare.edited-1'}"
    ]


def test_stage_file_replaced_by_link_reruns(study_copy, tmp_path):
    config, copy = study_copy
    mine = tmp_path / "matching.csv"
    shutil.move(copy / "compare" / "matching.csv", mine)
    (copy / "compare" / "matching.csv").symlink_to(mine)

    plan = run_study(config, copy)

    assert plan.stage("compare").reasons == ["output edited: matching.csv"]
    assert (copy / "compare.edited-1" / "matching.csv").is_symlink()
    assert mine.is_file()
    assert not (copy / "compare" / "matching.csv").is_symlink()


def test_listing_record_names_broken_link(tiny_study, tmp_path):
    from dimalign.report import pipeline
    from dimalign.report.config import load_config
    from dimalign.report.fingerprints import folder_listing

    config, copy = copy_tiny_study(tiny_study, tmp_path)
    stage = pipeline.plan_study(load_config(config), copy).stage("compare")
    manifest_path = copy / "compare" / "manifest.json"
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    manifest["pipeline"]["inputs"]["images"]["fingerprint"] = folder_listing(stage.inputs["images"])
    manifest_path.write_text(json.dumps(manifest), encoding="utf-8")
    link = stage.inputs["images"] / "extra.png"
    link.symlink_to(tmp_path / "moved.png")

    with pytest.raises(FileNotFoundError) as error:
        pipeline.plan_study(load_config(config), copy)

    assert str(error.value) == (
        f"{link}, a file inside the input folder {stage.inputs['images']}, is a symbolic link to the missing "
        f"{tmp_path / 'moved.png'}: restore the target or remove the link, then run the study again"
    )
