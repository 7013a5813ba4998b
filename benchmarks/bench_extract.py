"""Images per second of ``extract_features`` against a one-image-at-a-time loop.

Both sides compute the 1,280-d penultimate features of EfficientNet-Lite0
(packaged ImageNet weights) for the same images in the same process:

* reference: a plain loop, as in typical research scripts. It opens each
  image, preprocesses it and calls the model on a batch of one, in PyTorch's
  default memory layout, with a forward hook on ``avgpool``. At the end it
  saves the stacked features with ``np.save``.
* product: ``dimalign.features.extract_features`` with batches of
  ``--batch-size`` images, streaming to a memory-mapped ``features.npy``.

The images are the eight google-coral test photos (read from ../shared) plus seven from
``skimage.data``, linked or saved under a temporary folder until there are
``--n-images`` of them. Each side runs ``--repeats`` times, alternating, and the
median time counts. Usage::

    python benchmarks/bench_extract.py --n-images 32 --batch-size 32 --repeats 3
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from dimalign.features import extract_features, find_images, load_model
from dimalign.features.efficientnet_lite import efficientnet_lite0
from dimalign.features.models import efficientnet_lite0_weights_path

SHARED_IMAGES = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "images"
SKIMAGE_PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "camera", "coins",
                  "immunohistochemistry")


def prepare_images(folder: Path, n_images: int) -> None:
    """Fill ``folder`` with ``n_images`` image files, repeating the sources under new names."""
    import skimage.data

    sources_dir = folder.parent / "sources"
    sources_dir.mkdir()
    for name in SKIMAGE_PHOTOS:
        Image.fromarray(getattr(skimage.data, name)()).save(sources_dir / f"{name}.png")
    sources = sorted(SHARED_IMAGES.resolve().glob("*.png")) + sorted(
        SHARED_IMAGES.resolve().glob("*.jpg")) + sorted(sources_dir.glob("*.png"))
    folder.mkdir()
    for index in range(n_images):
        source = sources[index % len(sources)]
        (folder / f"{index:04d}_{source.name}").symlink_to(source)


def reference_loop(paths: list[str], model: torch.nn.Module, transform,
                   out_file: Path) -> np.ndarray:
    """Extract features one image per forward pass, the way a plain script does."""
    captured = []
    handle = model.avgpool.register_forward_hook(
        lambda module, args, output: captured.append(output.flatten(1).clone()))
    rows = []
    with torch.no_grad():
        for path in paths:
            image = Image.open(path).convert("RGB")
            model(transform(image).unsqueeze(0))
            rows.append(captured.pop().numpy()[0])
    handle.remove()
    features = np.stack(rows)
    np.save(out_file, features)
    return features


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-images", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--num-workers", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None,
                        help="torch intra-op threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    loaded = load_model("efficientnet_lite0")
    # The reference gets its own model in PyTorch's default memory layout, as
    # a plain script has; load_model converts its model to channels-last.
    reference_model = efficientnet_lite0(efficientnet_lite0_weights_path())
    with tempfile.TemporaryDirectory() as temporary:
        root = Path(temporary)
        prepare_images(root / "images", args.n_images)
        paths = list(find_images(root / "images").paths)

        product_times, reference_times = [], []
        for repeat in range(args.repeats):
            start = time.perf_counter()
            reference = reference_loop(paths, reference_model, loaded.transform,
                                       root / f"reference{repeat}.npy")
            reference_times.append(time.perf_counter() - start)

            start = time.perf_counter()
            extract_features(root / "images", root / f"out{repeat}", loaded,
                             batch_size=args.batch_size, num_workers=args.num_workers)
            product_times.append(time.perf_counter() - start)

        product = np.load(root / "out0" / "features.npy")
        max_difference = float(np.abs(product - reference).max())

    reference_rate = args.n_images / statistics.median(reference_times)
    product_rate = args.n_images / statistics.median(product_times)
    print(f"images: {args.n_images}, batch size {args.batch_size}, workers {args.num_workers}, "
          f"torch threads {torch.get_num_threads()}, repeats {args.repeats}")
    print(f"reference one-image loop: {reference_rate:7.2f} images/s "
          f"(times {', '.join(f'{t:.2f}' for t in reference_times)} s)")
    print(f"dimalign extract_features: {product_rate:7.2f} images/s "
          f"(times {', '.join(f'{t:.2f}' for t in product_times)} s)")
    print(f"speed ratio (product / reference): {product_rate / reference_rate:.2f}")
    print(f"max |difference| of the features: {max_difference:.2e}")


if __name__ == "__main__":
    main()
