"""Networks of one's own on the command line: ``--model module:function``."""

from __future__ import annotations

import hashlib
import importlib
import sys

import pytest
from feature_helpers import write_random_images

from dimalign.cli import main
from dimalign.features.models import LoadedModel, load_model
from dimalign.io.files import read_manifest

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
                       name="tiny", weights_id="tiny, seed 0", weights_sha256=None,
                       default_layer="6:input", device=torch.device("cpu"))


def not_a_model():
    return nn.Linear(2, 2)


def broken():
    raise RuntimeError("weights file /data/tiny.pth is missing")
'''


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    """Write ``NAME.py`` with ``source`` into a folder on the Python path and return its path."""
    folder = tmp_path / "user_code"
    folder.mkdir()
    written = []

    def write(name: str, source: str = NETWORK_SOURCE):
        path = folder / f"{name}.py"
        path.write_text(source, encoding="utf-8")
        written.append(name)
        importlib.invalidate_caches()
        return path

    monkeypatch.syspath_prepend(str(folder))
    yield write
    for name in written:
        sys.modules.pop(name, None)


def test_spec_loads_loaded_model(user_module):
    path = user_module("tiny_net_a")

    loaded = load_model("tiny_net_a:build")

    assert isinstance(loaded, LoadedModel)
    assert loaded.name == "tiny_net_a:build"
    assert loaded.weights_id == "tiny, seed 0"
    assert loaded.default_layer == "6:input"
    assert loaded.module_file == str(path)
    assert loaded.module_sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert not loaded.model.training


def test_extract_records_spec(user_module, tmp_path, capsys):
    path = user_module("tiny_net_b")
    write_random_images(tmp_path / "images", 3)

    status = main(["extract", str(tmp_path / "images"), "-o", str(tmp_path / "out"),
                   "--model", "tiny_net_b:build"])

    assert status == 0, capsys.readouterr().err
    settings = read_manifest(tmp_path / "out")["settings"]
    assert settings["model"] == "tiny_net_b:build"
    assert settings["model_module_file"] == str(path)
    assert settings["model_module_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert settings["layer"] == "6:input"
    assert settings["weights"] is None
    assert settings["weights_id"] == "tiny, seed 0"
    assert read_manifest(tmp_path / "out")["outputs"]["shapes"] == {"6:input": [3, 6]}


def test_extract_builtin_records_no_module(tmp_path):
    write_random_images(tmp_path / "images", 2)

    assert main(["extract", str(tmp_path / "images"), "-o", str(tmp_path / "out"),
                 "--model", "timm:test_efficientnet", "--random-init"]) == 0

    settings = read_manifest(tmp_path / "out")["settings"]
    assert "model_module_file" not in settings
    assert "model_module_sha256" not in settings


def test_list_layers_of_spec(user_module, capsys):
    user_module("tiny_net_c")

    assert main(["list-layers", "tiny_net_c:build"]) == 0

    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "# default layer: 6:input"
    assert "2\tConv2d" in lines


def test_missing_default_layer_names_spec(user_module, tmp_path, capsys):
    user_module("tiny_net_l", NETWORK_SOURCE.replace('default_layer="6:input"', 'default_layer="nope:input"'))
    write_random_images(tmp_path / "images", 2)

    status = main(["extract", str(tmp_path / "images"), "-o", str(tmp_path / "out"), "--model", "tiny_net_l:build"])

    assert status == 1
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "dimalign extract: error: model tiny_net_l:build names the default layer 'nope:input', which it "
        "does not have: set default_layer of its LoadedModel to one of the layers that dimalign "
        "list-layers tiny_net_l:build lists, or name the layers (CLI: --layer)"
    )
    assert not (tmp_path / "out").exists()


def test_missing_layer_names_spec(user_module, tmp_path, capsys):
    user_module("tiny_net_m")
    write_random_images(tmp_path / "images", 2)

    status = main(["extract", str(tmp_path / "images"), "-o", str(tmp_path / "out"), "--model", "tiny_net_m:build",
                   "--layer", "9"])

    assert status == 1
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "dimalign extract: error: model tiny_net_m:build has no layer '9'; list its layers with "
        "`dimalign list-layers tiny_net_m:build`"
    )


@pytest.mark.parametrize("spec, message", [
    ("tiny_net_d:build:x", "invalid model 'tiny_net_d:build:x': write a network of your own as "
                           "module:function with one colon, such as my_models:build"),
    (":build", "invalid model ':build': the module name before the colon is empty; write "
               "module:function, such as my_models:build"),
    ("tiny_net_d:", "invalid model 'tiny_net_d:': the function name after the colon is empty; write "
                    "module:function, such as my_models:build"),
])
def test_malformed_spec_rejected(spec, message, tmp_path, capsys):
    write_random_images(tmp_path / "images", 2)

    status = main(["extract", str(tmp_path / "images"), "-o", str(tmp_path / "out"), "--model", spec])

    assert status == 1
    assert capsys.readouterr().err.strip().splitlines()[-1] == f"dimalign extract: error: {message}"
    assert not (tmp_path / "out").exists()


def test_unknown_name_lists_forms(tmp_path, capsys):
    write_random_images(tmp_path / "images", 2)

    status = main(["extract", str(tmp_path / "images"), "-o", str(tmp_path / "out"), "--model", "foo"])

    assert status == 1
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "dimalign extract: error: unknown model 'foo': not a torchvision classification model, "
        "not efficientnet_lite0, not timm:NAME, and not module:function (a network of your own, "
        "see docs/features.md)"
    )


def test_unknown_name_hint_last(capsys):
    with pytest.raises(ValueError) as caught:
        load_model("vgg61")

    assert str(caught.value).endswith(
        "and not module:function (a network of your own, see docs/features.md); did you mean vgg19, "
        "vgg16, vgg13?"
    )


def test_missing_module_says_pythonpath(tmp_path, capsys):
    write_random_images(tmp_path / "images", 2)

    status = main(["extract", str(tmp_path / "images"), "-o", str(tmp_path / "out"),
                   "--model", "no_such_user_module:build"])

    assert status == 1
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "dimalign extract: error: invalid model 'no_such_user_module:build': module "
        "'no_such_user_module' not found. For a library model the prefix must be torchvision: or "
        "timm:. For a network of your own, add the folder that contains no_such_user_module.py to "
        "PYTHONPATH (PYTHONPATH=FOLDER dimalign ...)"
    )


def test_missing_function_named(user_module, capsys, tmp_path):
    path = user_module("tiny_net_e")

    with pytest.raises(ValueError) as caught:
        load_model("tiny_net_e:biuld")

    assert str(caught.value) == (
        f"model tiny_net_e:biuld: the module tiny_net_e ({path}) has no function 'biuld'; "
        "its functions are broken, build, not_a_model"
    )


def test_wrong_return_type_named(user_module):
    user_module("tiny_net_f")

    with pytest.raises(ValueError) as caught:
        load_model("tiny_net_f:not_a_model")

    assert str(caught.value) == (
        "model tiny_net_f:not_a_model returned an object of type Linear, not a LoadedModel; return "
        "dimalign.features.models.LoadedModel(model=..., transform=..., ...) as docs/features.md shows"
    )


def test_function_error_shown(user_module, tmp_path, capsys):
    user_module("tiny_net_g")
    write_random_images(tmp_path / "images", 2)

    status = main(["extract", str(tmp_path / "images"), "-o", str(tmp_path / "out"),
                   "--model", "tiny_net_g:broken"])

    err = capsys.readouterr().err
    assert status == 1
    assert err.strip().splitlines()[-1] == (
        "dimalign extract: error: model tiny_net_g:broken failed when called without arguments "
        "(RuntimeError: weights file /data/tiny.pth is missing); fix the function, which must "
        "return a LoadedModel"
    )
    assert "Traceback" not in err


def test_import_error_inside_module(user_module, tmp_path, capsys):
    path = user_module("tiny_net_h", "import torch\nimport no_such_dependency_xyz\n")
    write_random_images(tmp_path / "images", 2)

    status = main(["extract", str(tmp_path / "images"), "-o", str(tmp_path / "out"),
                   "--model", "tiny_net_h:build"])

    err = capsys.readouterr().err
    assert status == 1
    assert err.strip().splitlines()[-1] == (
        f"dimalign extract: error: model tiny_net_h:build: importing the module tiny_net_h ({path}) "
        "failed (ModuleNotFoundError: No module named 'no_such_dependency_xyz'); fix the module "
        "or install what it imports"
    )
    assert "Traceback" not in err


def test_syntax_error_inside_module(user_module):
    path = user_module("tiny_net_i", "def build(:\n    pass\n")

    with pytest.raises(ValueError) as caught:
        load_model("tiny_net_i:build")

    assert str(caught.value).startswith(
        f"model tiny_net_i:build: importing the module tiny_net_i ({path}) failed (SyntaxError: ")


def test_spec_rejects_weights_options(user_module):
    user_module("tiny_net_j")

    with pytest.raises(ValueError) as caught:
        load_model("tiny_net_j:build", weights="random")

    assert str(caught.value) == (
        "model tiny_net_j:build is a network of your own, whose function returns it with its "
        "weights, so the weights random do not apply; leave out --weights and --random-init"
    )


def test_resume_rejects_changed_module(user_module, tmp_path):
    from dimalign.features import extract_features

    path = user_module("tiny_net_k")
    write_random_images(tmp_path / "images", 3)
    first = extract_features(tmp_path / "images", tmp_path / "out", "tiny_net_k:build", batch_size=1, max_batches=1)
    before = hashlib.sha256(path.read_bytes()).hexdigest()
    path.write_text(NETWORK_SOURCE + "\n# retrained\n", encoding="utf-8")
    after = hashlib.sha256(path.read_bytes()).hexdigest()

    with pytest.raises(ValueError) as caught:
        extract_features(tmp_path / "images", tmp_path / "out", "tiny_net_k:build", batch_size=1, resume=True)

    assert not first.complete
    assert f"model_module_sha256: was '{before}', now '{after}'" in str(caught.value)
    assert "Rerun with the original settings, or pass --overwrite to start over" in str(caught.value)


@pytest.mark.parametrize("spec, recorded_file", [
    ("gone_user_pkg.nets:build", "/data/code/gone_user_pkg/nets.py"),
    ("gone_user_pkg:build", "/data/code/gone_user_pkg/__init__.py"),
    ("gone_user_net:build", "/data/code/gone_user_net.py"),
])
def test_moved_module_names_folder(spec, recorded_file):
    from dimalign.features.user_models import load_user_model

    with pytest.raises(ValueError) as caught:
        load_user_model(spec, recorded_sha256="ab" * 32, recorded_file=recorded_file)

    assert str(caught.value).endswith(
        f"the features were extracted with {recorded_file}, so add /data/code to PYTHONPATH "
        "(PYTHONPATH=/data/code dimalign ...)"
    )


def test_missing_package_named():
    with pytest.raises(ValueError) as caught:
        load_model("no_such_user_pkg.nets:build")

    assert "add the folder that contains the package no_such_user_pkg to PYTHONPATH" in str(caught.value)


def test_moved_module_folder_with_space_quoted():
    from dimalign.features.user_models import load_user_model

    with pytest.raises(ValueError) as caught:
        load_user_model("gone_user_net:build", recorded_sha256="ab" * 32,
                        recorded_file="/data/my code/gone_user_net.py")

    assert str(caught.value).endswith(
        "so add /data/my code to PYTHONPATH (PYTHONPATH='/data/my code' dimalign ...)"
    )


def test_module_exit_at_import_named(user_module, tmp_path, capsys):
    path = user_module("tiny_net_exit", "import sys\nsys.exit(3)\n")
    write_random_images(tmp_path / "images", 2)

    status = main(["extract", str(tmp_path / "images"), "-o", str(tmp_path / "out"),
                   "--model", "tiny_net_exit:build"])

    assert status == 1
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"dimalign extract: error: model tiny_net_exit:build: importing the module tiny_net_exit ({path}) "
        "failed (SystemExit: 3); fix the module or install what it imports"
    )
    assert not (tmp_path / "out").exists()


def test_function_exit_named(user_module):
    user_module("tiny_net_exit_call", "import sys\n\ndef build():\n    sys.exit(2)\n")

    with pytest.raises(ValueError) as caught:
        load_model("tiny_net_exit_call:build")

    assert str(caught.value) == (
        "model tiny_net_exit_call:build failed when called without arguments (SystemExit: 2); "
        "fix the function, which must return a LoadedModel"
    )


def test_function_global_torch_state_restored(user_module, caplog):
    import torch

    source = NETWORK_SOURCE.replace(
        "def build():\n", "def build():\n    torch.set_grad_enabled(False)\n    torch.set_default_dtype(torch.float64)\n"
    )
    user_module("tiny_net_state", source)

    try:
        with caplog.at_level("WARNING", logger="dimalign.features.user_models"):
            loaded = load_model("tiny_net_state:build")
        grad_enabled, dtype = torch.is_grad_enabled(), torch.get_default_dtype()
    finally:
        torch.set_grad_enabled(True)
        torch.set_default_dtype(torch.float32)

    assert grad_enabled
    assert dtype == torch.float32
    assert loaded.model[0].weight.dtype == torch.float64
    assert caplog.messages == [
        "model tiny_net_state:build switched gradient computation off and the default dtype to "
        "torch.float64 for the whole process. dimalign set it back, because later steps such as "
        "Grad-CAM need the defaults. Build the network inside torch.no_grad(), or pass dtype= and "
        "device= to its layers, instead"
    ]


@pytest.mark.parametrize("init_source, error", [
    ("raise RuntimeError('no GPU found')\n", "RuntimeError: no GPU found"),
    ("import sys\nsys.exit(4)\n", "SystemExit: 4"),
])
def test_module_file_of_broken_package(init_source, error, tmp_path, monkeypatch):
    from dimalign.features.user_models import find_module_file

    package = tmp_path / "broken_user_pkg"
    package.mkdir()
    (package / "__init__.py").write_text(init_source, encoding="utf-8")
    (package / "nets.py").write_text("def build():\n    pass\n", encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()

    with pytest.raises(ValueError) as caught:
        find_module_file("broken_user_pkg.nets:build")

    assert str(caught.value) == (
        f"model broken_user_pkg.nets:build: importing the module broken_user_pkg.nets failed ({error}); "
        "fix the module or install what it imports"
    )
    assert "broken_user_pkg" not in sys.modules
