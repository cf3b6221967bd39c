"""LibMTL's architectures for any encoder: `HPS`, `CrossStitch`, `MMoE`, `MTAN`, `CGC`, `PLE`, `DSelectK`, `LTB`.

Each takes `(task_name, encoder_class, decoders, rep_grad=False, multi_input=False,
device=None, **kwargs)` and implements both LibMTL's interface (`forward`,
`get_share_params`, `zero_grad_share_params`) and mtlkit's `MultiTaskModel` protocol,
so it trains with `mtlkit.Trainer` and every balancer. LibMTL's spellings
`Cross_stitch` and `DSelect_k`, and `AbsArchitecture`, are aliases.
"""

from mtlkit.architectures.base import Architecture
from mtlkit.architectures.cgc import CGC
from mtlkit.architectures.cross_stitch import Cross_stitch, CrossStitch
from mtlkit.architectures.dselect_k import DSelectK
from mtlkit.architectures.hps import HPS
from mtlkit.architectures.ltb import LTB
from mtlkit.architectures.mmoe import MMoE
from mtlkit.architectures.mtan import MTAN
from mtlkit.architectures.ple import PLE

AbsArchitecture = Architecture
DSelect_k = DSelectK

__all__ = [
    "CGC",
    "HPS",
    "LTB",
    "MTAN",
    "PLE",
    "AbsArchitecture",
    "Architecture",
    "CrossStitch",
    "Cross_stitch",
    "DSelectK",
    "DSelect_k",
    "MMoE",
]
