"""Memory-based temporal GNNs (TGN, JODIE, APAN) composed of a memory updater, a node embedding and an
edge predictor, computed with DGL message passing over the sampler's blocks."""
import common  # noqa: F401  (selects DGL's backend before dgl loads)

from models import dyrep  # noqa: E402, F401  (registers the "dyrep" memory updater)
from models import common_neighbours  # noqa: E402, F401  (registers the "common_neighbours" predictor)
from models import pair_history  # noqa: E402, F401  (registers the "pair_history" predictor)
from models.interface import ModelInputs  # noqa: E402
from models.tgnn import TemporalModel, build_model  # noqa: E402

__all__ = ["ModelInputs", "TemporalModel", "build_model"]
