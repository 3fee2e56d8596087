"""SecAgg (Bonawitz et al. CCS'17) and SecAgg+ (Bell et al. CCS'20) parties."""

from .client import SecAggClient
from .common import Stage
from .server import AggregateResult, SecAggServer, ServerView

__all__ = ["SecAggClient", "SecAggServer", "ServerView", "AggregateResult", "Stage"]
