"""Networks of the user's own, named ``module:function`` on the command line.

The function is imported with :func:`importlib.import_module`, so its module
must be installed or its folder on ``PYTHONPATH``. It is called without
arguments and returns a :class:`~dimalign.features.models.LoadedModel`: the
network, its preprocessing (``transform``) and the layer read by default.
dimalign moves the network to the requested device and puts it in eval mode.
The extraction records the spec with the path and SHA-256 of the module
file, so that later commands can load the same network again and detect a
changed module.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import inspect
import logging
import shlex
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

from dimalign.io.files import sha256_file

if TYPE_CHECKING:
    import torch

    from dimalign.features.models import LoadedModel

logger = logging.getLogger(__name__)

#: Prefixes of library models, which are never read as a module name.
LIBRARY_PREFIXES = ("torchvision", "timm")

_EXAMPLE = "such as my_models:build"


def is_model_spec(name: object) -> bool:
    """Return True if ``name`` has a colon and no library prefix, so it names ``module:function``."""
    if not isinstance(name, str) or ":" not in name:
        return False
    return name.partition(":")[0] not in LIBRARY_PREFIXES


def parse_model_spec(spec: str) -> tuple[str, str]:
    """Split ``"module:function"`` into the module and the function name.

    Raises:
        ValueError: If the spec has more than one colon or an empty part.
    """
    if spec.count(":") != 1:
        raise ValueError(
            f"invalid model {spec!r}: write a network of your own as module:function with one colon, "
            f"{_EXAMPLE}"
        )
    module_name, _, function_name = spec.partition(":")
    if not module_name:
        raise ValueError(
            f"invalid model {spec!r}: the module name before the colon is empty; write "
            f"module:function, {_EXAMPLE}"
        )
    if not function_name:
        raise ValueError(
            f"invalid model {spec!r}: the function name after the colon is empty; write "
            f"module:function, {_EXAMPLE}"
        )
    return module_name, function_name


def find_module_file(spec: str) -> Path | None:
    """Return the file of the module of ``module:function`` without running it, or None if it has none.

    A dotted module name imports its parent packages, as :func:`importlib.util.find_spec` does.

    Raises:
        ValueError: If the spec is malformed, the module is not found, or
            importing a parent package fails.
    """
    module_name, _ = parse_model_spec(spec)
    try:
        found = importlib.util.find_spec(module_name)
    except ModuleNotFoundError:
        found = None
    except (Exception, SystemExit) as error:
        # A parent package's __init__.py is user code too, and may raise anything or call sys.exit().
        raise ValueError(_import_failed_message(spec, module_name, error)) from error
    if found is None:
        raise ValueError(_not_found_message(spec, module_name, None))
    return Path(found.origin) if found.origin and Path(found.origin).is_file() else None


def load_user_model(spec: str, device: str | torch.device = "cpu", *,
                    recorded_sha256: str | None = None, recorded_file: str | None = None) -> LoadedModel:
    """Import ``module:function``, call the function and return its network, in eval mode on ``device``.

    Args:
        spec (str): ``module:function``. The module is imported from the
            current Python path (``PYTHONPATH``).
        device (str | torch.device): ``cpu``, ``cuda`` or ``auto``.
        recorded_sha256 (str | None): SHA-256 of the module file recorded by
            the extraction. When given, a module file with another checksum
            is rejected before the module is imported.
        recorded_file (str | None): Path of the module file at extraction,
            for messages.

    Returns:
        LoadedModel: The function's model with ``name`` set to ``spec``, and
        ``module_file`` and ``module_sha256`` set to the module file and its checksum.

    Raises:
        ValueError: If the spec is malformed, the module cannot be found or
            imported, the function is missing, raises (``SystemExit``
            included) or returns something other than a ``LoadedModel``, or
            the module file changed since the extraction that recorded
            ``recorded_sha256``. Grad mode, default dtype and default device
            changed by the module or the function are set back, with a
            warning.
    """
    # Imported here, so that planning a study with a network of your own does not load torch.
    from torch import nn

    from dimalign.device import resolve_device
    from dimalign.features.models import LoadedModel

    module_name, function_name = parse_model_spec(spec)
    if recorded_sha256 is not None:
        # Checked before the import too, because importing runs the edited module's code.
        _check_module_file_unchanged(spec, module_name, recorded_sha256, recorded_file)
    with _restored_torch_state(spec):
        module = _import_module(spec, module_name, recorded_file)
    module_file = getattr(module, "__file__", None)
    module_sha256 = sha256_file(module_file) if module_file and Path(module_file).is_file() else None
    if recorded_sha256 is not None and module_sha256 != recorded_sha256:
        raise ValueError(_changed_module_message(spec, module_file, module_sha256, recorded_file, recorded_sha256))

    function = getattr(module, function_name, None)
    if not callable(function):
        raise ValueError(
            f"model {spec}: the module {module_name} ({module_file}) has no function {function_name!r}; "
            f"its functions are {', '.join(_functions_of(module)) or 'none'}"
        )
    try:
        with _restored_torch_state(spec):
            loaded = function()
    except (Exception, SystemExit) as error:
        # User code may raise anything, and a traceback would hide which spec failed.
        # SystemExit comes from sys.exit() or argparse in the user's code, and
        # would otherwise end dimalign with its status and no message.
        raise ValueError(
            f"model {spec} failed when called without arguments ({type(error).__name__}: {error}); "
            "fix the function, which must return a LoadedModel"
        ) from error
    if not isinstance(loaded, LoadedModel):
        raise ValueError(
            f"model {spec} returned an object of type {type(loaded).__name__}, not a LoadedModel; return "
            "dimalign.features.models.LoadedModel(model=..., transform=..., ...) as docs/features.md shows"
        )
    if not isinstance(loaded.model, nn.Module) or not callable(loaded.transform):
        raise ValueError(
            f"model {spec} returned a LoadedModel whose model is of type {type(loaded.model).__name__} and "
            f"whose transform is of type {type(loaded.transform).__name__}; the model must be a torch.nn.Module "
            "and the transform a callable from a PIL image to a tensor (3, H, W)"
        )

    loaded.name = spec
    loaded.module_file = module_file
    loaded.module_sha256 = module_sha256
    loaded.device = resolve_device(device)
    loaded.model = loaded.model.to(loaded.device).eval()
    logger.info("loaded %s (module file %s) with weights %s on %s", spec, module_file, loaded.weights_id,
                loaded.device)
    return loaded


def _check_module_file_unchanged(spec: str, module_name: str, recorded_sha256: str,
                                 recorded_file: str | None) -> None:
    """Reject a module file whose SHA-256 differs from the recorded one, without importing the module.

    A module that cannot be located this way (a broken parent package) is
    left to the import, whose error names the problem.
    """
    try:
        found = importlib.util.find_spec(module_name)
    except (Exception, SystemExit):
        return
    if found is None or not found.origin or not Path(found.origin).is_file():
        return
    module_sha256 = sha256_file(found.origin)
    if module_sha256 != recorded_sha256:
        raise ValueError(_changed_module_message(spec, found.origin, module_sha256, recorded_file, recorded_sha256))


@contextlib.contextmanager
def _restored_torch_state(spec: str) -> Iterator[None]:
    """Restore torch's process-wide grad mode, default dtype and default device after user code.

    A module or function that calls ``torch.set_grad_enabled(False)`` would
    otherwise break Grad-CAM and activation maximisation later, with an
    error that does not name the module. Each restored setting is logged as
    a warning that names the spec.
    """
    import torch

    grad_enabled, dtype, device = torch.is_grad_enabled(), torch.get_default_dtype(), torch.get_default_device()
    try:
        yield
    finally:
        changed = []
        if torch.is_grad_enabled() != grad_enabled:
            changed.append(f"gradient computation {'on' if torch.is_grad_enabled() else 'off'}")
            torch.set_grad_enabled(grad_enabled)
        if torch.get_default_dtype() != dtype:
            changed.append(f"the default dtype to {torch.get_default_dtype()}")
            torch.set_default_dtype(dtype)
        if torch.get_default_device() != device:
            changed.append(f"the default device to {torch.get_default_device()}")
            torch.set_default_device(device)
        if changed:
            logger.warning(
                "model %s switched %s for the whole process. dimalign set it back, because later steps "
                "such as Grad-CAM need the defaults. Build the network inside torch.no_grad(), or pass "
                "dtype= and device= to its layers, instead", spec, " and ".join(changed),
            )


def _import_module(spec: str, module_name: str, recorded_file: str | None) -> ModuleType:
    """Import the module of ``spec``, turning every failure into a ValueError without a traceback."""
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        missing = error.name or ""
        if module_name == missing or module_name.startswith(missing + "."):
            raise ValueError(_not_found_message(spec, module_name, recorded_file)) from error
        raise ValueError(_import_failed_message(spec, module_name, error)) from error
    except (Exception, SystemExit) as error:
        # Importing runs the user's code, which may raise anything (SyntaxError
        # included), or call sys.exit() as a script does.
        raise ValueError(_import_failed_message(spec, module_name, error)) from error


def _not_found_message(spec: str, module_name: str, recorded_file: str | None) -> str:
    top_level = module_name.split(".")[0]
    where = f"the package {top_level}" if "." in module_name else f"{top_level}.py"
    if recorded_file is not None:
        # The folder on the path is above the module file by one level per
        # dot, and one more for a package's __init__.py.
        depth = module_name.count(".") + (Path(recorded_file).name == "__init__.py")
        folder = Path(recorded_file).parents[depth]
        return (
            f"model {spec}: module {module_name!r} not found on the Python path; the features were "
            f"extracted with {recorded_file}, so add {folder} to PYTHONPATH "
            f"(PYTHONPATH={shlex.quote(str(folder))} dimalign ...)"
        )
    return (
        f"invalid model {spec!r}: module {module_name!r} not found. For a library model the prefix must "
        f"be torchvision: or timm:. For a network of your own, add the folder that contains {where} "
        "to PYTHONPATH (PYTHONPATH=FOLDER dimalign ...)"
    )


def _import_failed_message(spec: str, module_name: str, error: BaseException) -> str:
    origin = None
    found = importlib.util.find_spec(module_name) if "." not in module_name else None
    if found is not None:
        origin = found.origin
    where = f" ({origin})" if origin else ""
    text = str(error).strip().splitlines()[0] if str(error).strip() else ""
    return (
        f"model {spec}: importing the module {module_name}{where} failed ({type(error).__name__}: {text}); "
        "fix the module or install what it imports"
    )


def _changed_module_message(spec: str, module_file: str | None, module_sha256: str | None,
                            recorded_file: str | None, recorded_sha256: str) -> str:
    now = module_file if module_file else "a module without a file"
    moved = "" if recorded_file in (None, module_file) else f" (it was {recorded_file} then)"
    return (
        f"model {spec}: the module file {now}{moved} changed since the features were extracted "
        f"(SHA-256 {recorded_sha256} then, {module_sha256} now), so it may build another network than "
        "the one whose features were mapped; restore that version of the module, or extract the "
        "features again with dimalign extract and fit the map again with dimalign map"
    )


def _functions_of(module: ModuleType) -> list[str]:
    """Return the sorted names of the public functions defined in ``module`` itself."""
    return sorted(
        name for name, value in vars(module).items()
        if not name.startswith("_") and inspect.isfunction(value) and value.__module__ == module.__name__
    )
