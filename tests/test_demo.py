import json
from pathlib import Path

import pytest

from dimalign.cli import main
from dimalign.demo import DemoSettings, fit_seeds, format_summary, run_demo


@pytest.mark.slow
def test_demo_on_real_things_data(things_dir, tmp_path):
    settings = DemoSettings(max_epochs=3, n_dims=20, n_dnn_triplets=20_000)
    summary = run_demo(tmp_path, data_dir=things_dir, settings=settings)

    for side in ("human", "dnn"):
        assert (tmp_path / side / "embedding.npz").is_file()
        assert (tmp_path / side / "manifest.json").is_file()
        assert summary[side]["n_epochs"] == 3
        assert 0.33 < summary[side]["val_accuracy"] <= 1.0
        assert -1.0 <= summary[side]["things48_r"] <= 1.0
    assert summary["human"]["n_train"] + summary["human"]["n_val"] == 131_552
    assert summary["dnn"]["n_train"] + summary["dnn"]["n_val"] == 20_000
    assert -1.0 <= summary["human_dnn_rsa_pearson"] <= 1.0
    # Fits from one shared random start correlate at about 0.84 after 3
    # epochs. Distinct seeds leave the two matrices nearly unrelated.
    assert summary["fit_seeds"]["human"] != summary["fit_seeds"]["dnn"]
    assert abs(summary["human_dnn_rsa_pearson"]) < 0.5
    assert json.loads((tmp_path / "summary.json").read_text()) == summary
    text = format_summary(summary)
    assert "Shortened for the demo" in text
    assert "--max-epochs 1000" in text

    # A rerun into the same folder replaces the demo only when asked to.
    with pytest.raises(FileExistsError, match="contains an earlier or unfinished demo"):
        run_demo(tmp_path, data_dir=things_dir, settings=settings)
    settings = DemoSettings(max_epochs=1, n_dims=5, n_dnn_triplets=2_000)
    again = run_demo(tmp_path, data_dir=things_dir, settings=settings, overwrite=True)
    assert again["dnn"]["n_train"] + again["dnn"]["n_val"] == 2_000
    assert json.loads((tmp_path / "summary.json").read_text()) == again


def test_fit_seeds_distinct_and_stable():
    seeds = fit_seeds(0)
    assert seeds["human"] != seeds["dnn"]
    assert seeds == fit_seeds(0)
    assert fit_seeds(1) != seeds


def test_demo_cli_reports_missing_files_without_download(tmp_path, capsys):
    # An empty data directory with downloads impossible (no network in tests)
    # must fail with a message naming the file, not a traceback.
    empty = tmp_path / "empty"
    empty.mkdir()
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    status = main(["demo", "--data-dir", str(empty), "--mirror", str(mirror), "--no-download", "-o", str(tmp_path / "out")])
    assert status == 1
    assert "unique_id.txt" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_demo_without_download_lists_every_missing_file(things_dir, tmp_path):
    """Only the first missing file was named, so a user copied files one failed run at a time."""
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "unique_id.txt").symlink_to(things_dir / "unique_id.txt")

    with pytest.raises(FileNotFoundError, match="4 input files of the demo are missing") as caught:
        run_demo(tmp_path / "out", data_dir=data_dir, download=False)

    message = str(caught.value)
    for name in ("vgg16_srf_factors_rank200.npy", "RDM48_triplet.mat", "words48.csv", "human_triplets.txt"):
        assert str(data_dir / name) in message
    assert str(data_dir / "unique_id.txt") not in message
    assert not (tmp_path / "out").exists()


def test_demo_missing_data_folder_noted_once(tmp_path):
    data_dir = tmp_path / "no_such_folder"

    with pytest.raises(FileNotFoundError, match="5 input files of the demo are missing") as caught:
        run_demo(tmp_path / "out", data_dir=data_dir, download=False)

    message = str(caught.value)
    assert message.count(f"the data folder {data_dir} does not exist") == 1
    assert message.endswith(f"Note that the data folder {data_dir} does not exist.")


def test_demo_cuda_without_gpu_leaves_no_output_folder(tmp_path, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="no CUDA GPU"):
        run_demo(tmp_path / "out", data_dir=tmp_path, settings=DemoSettings(device="cuda"), download=False)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("option", "message"),
    [(["--dnn-triplets", "0"], "--dnn-triplets: n_dnn_triplets must be at least 100, got 0"),
     (["--seed", "-1"], "--seed: seed must be at least 0, got -1"),
     (["--device", "meta"], "--device: device 'meta' is not supported"),
     (["--max-epochs", str(10**20)], "--max-epochs: max_epochs must be at most 1000000000")],
)
def test_demo_options_checked_first(tmp_path, capsys, option, message):
    """These used to fail after a whole fit, or with numpy's and tqdm's messages."""
    status = main(["demo", "--data-dir", str(tmp_path), "--no-download", "-o", str(tmp_path / "out"), *option])
    assert status == 1
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_demo_rejects_more_triplets_than_exist(things_dir, tmp_path):
    with pytest.raises(ValueError, match="--dnn-triplets 2000000000 exceeds the 1060412604 unique triplets"):
        run_demo(tmp_path / "out", data_dir=things_dir, settings=DemoSettings(n_dnn_triplets=2 * 10**9))
    assert not (tmp_path / "out").exists()


def test_demo_rejects_data_folder_inside_output(tmp_path):
    with pytest.raises(ValueError, match="the data folder .*things lies inside the output folder"):
        run_demo(tmp_path / "out", data_dir=tmp_path / "out" / "things", download=False)


def test_demo_rerun_needs_overwrite_and_keeps_foreign_runs(tmp_path):
    out = tmp_path / "out"
    (out / "human").mkdir(parents=True)
    (out / "human" / "checkpoint.pt").write_bytes(b"unfinished")
    with pytest.raises(FileExistsError, match=r"contains an earlier or unfinished demo \(human\); pass --overwrite"):
        run_demo(out, data_dir=tmp_path / "data", download=False)

    # Overwriting waits for the inputs, so a missing file deletes nothing.
    with pytest.raises(FileNotFoundError, match="unique_id.txt not found"):
        run_demo(out, data_dir=tmp_path / "data", download=False, overwrite=True)
    assert (out / "human" / "checkpoint.pt").is_file()

    (out / "human" / "manifest.json").write_text(json.dumps({"step": "fit"}))
    with pytest.raises(FileExistsError, match="contains a finished run that no demo manifest .* lists"):
        run_demo(out, data_dir=tmp_path / "data", download=False, overwrite=True)


def test_demo_overwrite_replaces_killed_demo(tmp_path):
    """A demo killed (SIGKILL, SIGHUP) after its human fit left a run that --overwrite refused."""
    out = tmp_path / "out"
    (out / "human").mkdir(parents=True)
    (out / "human" / "manifest.json").write_text(json.dumps({"step": "fit", "command": "dimalign demo -o out"}))
    (out / "dnn").mkdir()
    (out / "dnn" / "checkpoint.pt").write_bytes(b"unfinished")

    # The check of the folder passes, and the missing inputs stop the demo before it deletes anything.
    with pytest.raises(FileNotFoundError, match="input files of the demo are missing"):
        run_demo(out, data_dir=tmp_path / "data", download=False, overwrite=True)
    assert (out / "human" / "manifest.json").is_file()


def test_demo_overwrite_keeps_files_no_demo_wrote(tmp_path):
    """--overwrite replaced any human/ folder or summary.json, with the user's files in it."""
    out = tmp_path / "out"
    (out / "human").mkdir(parents=True)
    (out / "human" / "checkpoint.pt").write_bytes(b"unfinished")
    (out / "human" / "ratings.csv").write_text("the user's own data")
    with pytest.raises(FileExistsError, match=r"human/ratings.csv was not written by dimalign demo, so --overwrite"):
        run_demo(out, data_dir=tmp_path / "data", download=False, overwrite=True)
    assert (out / "human" / "ratings.csv").read_text() == "the user's own data"

    other = tmp_path / "other"
    other.mkdir()
    (other / "summary.json").write_text('{"mine": 1}')
    with pytest.raises(FileExistsError, match=r"summary.json exists, but .*other contains no finished demo"):
        run_demo(other, data_dir=tmp_path / "data", download=False, overwrite=True)
    assert (other / "summary.json").read_text() == '{"mine": 1}'

    (other / "summary.json").unlink()
    (other / "dnn").write_text("a file of the user's")
    with pytest.raises(FileExistsError, match=r"dnn is a file, but dimalign demo writes a run folder there"):
        run_demo(other, data_dir=tmp_path / "data", download=False, overwrite=True)
    assert (other / "dnn").read_text() == "a file of the user's"


def fake_fit_side(fail_on: str, empty: str = "none"):
    """Stand in for ``_fit_side``: write a finished run, or raise Ctrl-C for the side ``fail_on``.

    The side ``empty`` gets a fit that kept no dimension.
    """
    import types

    import numpy as np

    def fit(train, val, run_dir, *args):
        if run_dir.name == fail_on:
            run_dir.mkdir()
            (run_dir / "checkpoint.pt").write_bytes(b"unfinished")
            raise KeyboardInterrupt
        run_dir.mkdir()
        (run_dir / "manifest.json").write_text(json.dumps({"step": "fit"}))
        n_dims = 0 if run_dir.name == empty else 3
        embedding = np.random.default_rng(0).random((1854, n_dims))
        return types.SimpleNamespace(embedding_=embedding, n_dims_=n_dims, n_epochs_=300, score=lambda triplets: 0.5)

    return fit


def test_demo_interrupt_in_existing_folder_cleans_up(things_dir, tmp_path, monkeypatch):
    """Ctrl-C during the DNN fit used to leave human/, which --overwrite then refused to replace."""
    import dimalign.demo

    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("the user's own file")
    settings = DemoSettings(n_dnn_triplets=200)
    monkeypatch.setattr(dimalign.demo, "_fit_side", fake_fit_side(fail_on="dnn"))

    with pytest.raises(KeyboardInterrupt):
        run_demo(out, data_dir=things_dir, settings=settings, download=False)

    assert sorted(path.name for path in out.iterdir()) == ["notes.txt"]
    assert (out / "notes.txt").read_text() == "the user's own file"

    monkeypatch.setattr(dimalign.demo, "_fit_side", fake_fit_side(fail_on="none"))
    summary = run_demo(out, data_dir=things_dir, settings=settings, download=False)
    assert summary["dnn"]["n_train"] + summary["dnn"]["n_val"] == 200


def test_demo_leaves_folder_of_running_demo(things_dir, tmp_path, monkeypatch):
    """A second demo into the same folder must not delete the outputs of the one that runs."""
    import dimalign.demo
    from dimalign.io.files import acquire_lock, release_lock

    out = tmp_path / "out"
    out.mkdir()
    lock = out / ".demo.lock"
    descriptor = acquire_lock(lock, "held by the test")
    # The running demo writes its human fit after the second demo checked the folder.
    monkeypatch.setattr(dimalign.demo, "_fetch_inputs", _writing_human_run(out, dimalign.demo._fetch_inputs))
    try:
        with pytest.raises(RuntimeError, match=r"out is in use by another dimalign demo, which holds .*\.demo\.lock"):
            run_demo(out, data_dir=things_dir, settings=DemoSettings(n_dnn_triplets=200), download=False)
        assert (out / "human" / "checkpoint.pt").read_bytes() == b"running"
    finally:
        release_lock(lock, descriptor)


def _writing_human_run(out, fetch_inputs):
    def fetch_and_write(*args):
        (out / "human").mkdir()
        (out / "human" / "checkpoint.pt").write_bytes(b"running")
        return fetch_inputs(*args)

    return fetch_and_write


def test_demo_unwritable_output_folder_fails_first(tmp_path, unwritable_folder):
    """An unwritable -o failed with a bare '[Errno 13] Permission denied' after the inputs were read."""
    locked = unwritable_folder
    for out in (locked, locked / "new" / "out"):
        with pytest.raises(PermissionError, match=rf"cannot write into {locked} \(no write permission, or a read-only file system\), so the output folder .* cannot be written; pass another output folder \(-o\)"):
            run_demo(out, data_dir=tmp_path / "data", download=False)


def test_demo_output_folder_that_is_a_file(tmp_path):
    (tmp_path / "out").write_text("x")
    with pytest.raises(FileExistsError, match="the output folder .*out is a file"):
        run_demo(tmp_path / "out", data_dir=tmp_path, download=False)


def test_shortened_note_gives_runnable_full_fit():
    """The note names the triplet file the demo read, not a placeholder."""
    from pathlib import Path

    from dimalign.demo import shortened_note

    note = shortened_note(DemoSettings(), Path("/data/my things/human_triplets.txt"), Path("/data/unique_id.txt"))

    assert note.endswith(
        "Full-length fit of the human triplets: dimalign fit '/data/my things/human_triplets.txt' "
        "--objects /data/unique_id.txt -o runs/human --max-epochs 1000 --stability-epochs 500"
    )


def test_shortened_note_names_user_shortenings():
    """Fewer dimensions and DNN triplets from the command line went unmentioned."""
    from pathlib import Path

    from dimalign.demo import shortened_note

    settings = DemoSettings(max_epochs=1, n_dims=5, n_dnn_triplets=200)
    note = shortened_note(settings, Path("human_triplets.txt"), Path("unique_id.txt"))

    assert "stops after 1 epoch," in note
    assert "Each fit starts from 5 dimensions." in note
    assert "uses 200 simulated DNN triplets instead of 131,552." in note
    assert "A full fit (150 initial dimensions, batch 256, learning rate 0.001) runs up to 1,000 epochs" in note

    default_note = shortened_note(DemoSettings(), Path("human_triplets.txt"), Path("unique_id.txt"))
    assert "stops after 300 epochs," in default_note
    assert "starts from" not in default_note
    assert "DNN triplets instead of" not in default_note


def test_demo_fits_with_one_torch_thread(monkeypatch, tmp_path):
    import numpy as np
    import torch

    import dimalign.embedding
    from dimalign.demo import _fit_side

    seen = []
    monkeypatch.setattr(dimalign.embedding, "fit_run", lambda *args, **kwargs: seen.append(torch.get_num_threads()))
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        _fit_side(np.zeros((0, 3)), None, tmp_path, 5, None, DemoSettings(), {"human_triplets": "t.txt"}, "human", 0)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)

    assert seen == [1]


def test_demo_fit_without_dimensions_explained(things_dir, tmp_path, monkeypatch):
    """Too few DNN triplets prune every dimension, and the RSA of a constant matrix is undefined."""
    import dimalign.demo

    out = tmp_path / "out"
    settings = DemoSettings(n_dnn_triplets=200)
    monkeypatch.setattr(dimalign.demo, "_fit_side", fake_fit_side(fail_on="none", empty="dnn"))

    with pytest.raises(ValueError) as raised:
        run_demo(out, data_dir=things_dir, settings=settings, download=False)

    assert str(raised.value) == (
        "the dnn fit kept no dimension after 300 epochs on 180 triplets, so its predicted similarities are "
        "constant and the comparison with the human fit is undefined: simulate more DNN triplets "
        "(--dnn-triplets, default 131552) or fit longer (--max-epochs)"
    )
    assert not out.exists()


def test_summary_table_matches_readme():
    """The table is printed as the README shows it, without trailing spaces."""
    side = {"n_dims": 10, "n_epochs": 300, "val_accuracy": 0.5682, "things48_r": 0.618, "n_train": 118397, "n_val": 13155}
    summary = {
        "human": side,
        "dnn": {**side, "n_dims": 36, "n_train": 18000, "n_val": 2000},
        "human_dnn_rsa_pearson": 0.35,
        "human_dnn_rsa_spearman": 0.327,
        "shortened": "Shortened for the demo.",
    }

    assert format_summary(summary).splitlines() == [
        "          dims epochs held-out acc 48-object r       train/val",
        "human       10    300       0.5682       0.618   118397/13155",
        "dnn         36    300       0.5682       0.618    18000/2000",
        "RSA between human and DNN similarity matrices: Pearson r = 0.350, Spearman rho = 0.327",
        "Shortened for the demo.",
    ]
