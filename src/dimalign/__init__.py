"""dimalign: interpretable dimensions of object similarity in humans and DNNs.

The pipeline (see ``docs/`` and the README): extract DNN features, simulate
odd-one-out triplets from them, fit sparse non-negative embeddings (VICE,
SPoSE) to human and DNN triplets, then evaluate, compare and interpret the
dimensions.
"""

import logging

__version__ = "0.1.0"

logging.getLogger(__name__).addHandler(logging.NullHandler())
