"""RIDE: recurrent image density estimator (Theis & Bethge, NIPS 2015) in PyTorch."""
from .mcgsm import MCGSM
from .model import RIDE, mcgsm_baseline
from .neighborhood import Neighborhood
from .slstm import SLSTMStack, SpatialLSTM
from .whitening import ConditionalWhitening

__all__ = ["MCGSM", "RIDE", "mcgsm_baseline", "Neighborhood", "SLSTMStack", "SpatialLSTM", "ConditionalWhitening"]
__version__ = "0.1.0"
