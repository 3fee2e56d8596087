"""What every protocol hands back: the released weighted sum and the trace of a driven round."""

from __future__ import annotations

import resource
import statistics
import sys
from collections import defaultdict
from dataclasses import dataclass, field, fields
import time
from typing import Any, Callable, Generic, Mapping, Protocol, TypeVar

import numpy as np

from .encoding import Schema
from .errors import ProtocolAbort, SecAggError

__all__ = ["WeightedSum", "Ledger", "Trace", "first_drops", "AggregationOutcome", "local_dropouts", "outcome_of",
           "peak_rss_bytes"]


class _ErrorBounded(Protocol):
    def average_error_bound(self, survivors: int, weight_sum: int) -> float: ...


class _HasLayout(Protocol):
    @property
    def schema(self) -> Schema: ...

    @property
    def encoding(self) -> _ErrorBounded: ...


class WeightedSum:
    """Mixin for a released aggregate with fields ``config``, ``weighted_sum``, ``weight_sum`` and
    ``survivors``: the average in the caller's shape and its error bound."""

    config: _HasLayout
    weighted_sum: np.ndarray
    weight_sum: int
    survivors: tuple[int, ...]

    def average_vector(self) -> np.ndarray:
        """Flat weighted average (float64)."""
        if self.weight_sum <= 0:
            raise ProtocolAbort("the aggregated weight sum is not positive")
        return self.weighted_sum / self.weight_sum

    def average(self) -> Any:
        """The weighted average in the caller's original shape (state dict, list or array)."""
        return self.config.schema.unflatten(self.average_vector())

    @property
    def error_bound(self) -> float:
        """Worst-case rounding error of :meth:`average` against the exact average of clipped inputs."""
        return self.config.encoding.average_error_bound(len(self.survivors), self.weight_sum)


def first_drops(by_stage: Mapping[str, tuple[int, ...]]) -> dict[int, str]:
    """Stage -> clients (in stage order) to client -> the first stage it was missing at."""
    out: dict[int, str] = {}
    for stage, clients in by_stage.items():
        for client in clients:
            out.setdefault(client, stage)
    return out


ResultT = TypeVar("ResultT")


@dataclass
class Ledger:
    """The bookkeeping of a round being driven: who dropped or aborted, time and bytes."""

    dropped: dict[int, str] = field(default_factory=dict)
    """Client id -> the dropout stage at which it vanished (scheduled, or because it aborted)."""
    aborted: dict[int, str] = field(default_factory=dict)
    client_seconds: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    server_seconds: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    upload_bytes: dict[int, int] = field(default_factory=lambda: defaultdict(int))
    download_bytes: dict[int, int] = field(default_factory=lambda: defaultdict(int))
    stage_upload_bytes: dict[str, dict[int, int]] = field(default_factory=lambda: defaultdict(dict))
    """Server stage -> client id -> the size of the message the client sent in that stage."""

    def attempt(self, cid: int, stage: str, dropouts: Mapping[int, str], make: Callable[[], bytes | None],
                timing: str) -> bytes | None:
        """Let client ``cid`` act at dropout stage ``stage`` unless it has dropped (now or earlier) or
        it aborts.

        Records the drop in ``dropped``, an abort in ``aborted`` and ``dropped``, the client's time
        and upload size under the server stage ``timing``. Returns the bytes to deliver.
        """
        if cid in self.dropped:
            return None
        if dropouts.get(cid) == stage:
            self.dropped[cid] = stage
            return None
        start = time.perf_counter()
        try:
            data = make()
        except SecAggError as exc:
            self.aborted[cid] = f"{stage}: {type(exc).__name__}: {exc}"
            self.dropped[cid] = stage
            return None
        finally:
            self.client_seconds[timing].append(time.perf_counter() - start)
        if data is not None:
            self.upload_bytes[cid] += len(data)
            self.stage_upload_bytes[timing][cid] = len(data)
        return data


@dataclass
class Trace(Ledger, Generic[ResultT]):
    """What happened in one driven round, for reports and tests: the ledger and the result."""

    result: ResultT = field(kw_only=True)

    @classmethod
    def of(cls, ledger: Ledger, result: ResultT) -> Trace[ResultT]:
        return cls(result=result, **{f.name: getattr(ledger, f.name) for f in fields(Ledger)})


@dataclass(frozen=True)
class AggregationOutcome:
    """The weighted average of the survivors' updates, in the callers' shape, and what it cost."""

    average: Any
    survivors: list[int]
    dropped: dict[int, str]
    bytes_up_per_client: float
    seconds: float
    error_bound: float
    weight_sum: int


def local_dropouts(ids: list[int], dropouts: Mapping[int, str] | None) -> dict[int, str]:
    """Caller client ids -> protocol ids ``0 .. n-1`` (the position in sorted order)."""
    position = {cid: i for i, cid in enumerate(ids)}
    return {position[c]: s for c, s in (dropouts or {}).items() if c in position}


def outcome_of(ids: list[int], trace: Trace[Any], seconds: float) -> AggregationOutcome:
    """Translate a protocol trace back to the caller's client ids."""
    result = trace.result
    return AggregationOutcome(
        average=result.average(),
        survivors=[ids[i] for i in result.survivors],
        dropped={ids[i]: s for i, s in trace.dropped.items()},
        bytes_up_per_client=statistics.fmean(trace.upload_bytes[i] for i in result.survivors),
        seconds=seconds,
        error_bound=result.error_bound,
        weight_sum=result.weight_sum,
    )


def peak_rss_bytes() -> int:
    """This process's peak resident set size so far, in bytes.

    A high-water mark of the whole process: a run reports the largest of itself and anything before it.
    On Linux it is ``VmHWM`` of ``/proc/self/status`` (this program's memory since it started: unlike
    ``getrusage``'s ``ru_maxrss``, it does not keep the peak of the parent that forked it before
    ``exec``); elsewhere ``getrusage``.
    """
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)
