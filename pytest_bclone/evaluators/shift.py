"""``distribution_shift``: flag eval states that lie outside the train split's state distribution.

Behavior cloning degrades outside the demonstrated states, so reports split every metric into
in-distribution and out-of-distribution states. This detector scores *states*, not agents (the
clone and the expert see the same states), so it is not a parity metric in the registry: fit it
on the train split, then ask it about the eval split's decision points::

    detector = DistributionShift().fit(train_trajectories)
    flags = detector.flag(eval_points)          # one ShiftFlag(distance, is_ood) per point

**Representation.** A state is a hashed bag of tokens (feature hashing into ``dim`` buckets with
CRC-32, so it is the same in every process): the words of the last user message (lower-cased,
digit runs folded to ``0`` so order and account ids do not make every state unique), the names
of the tools called so far, and the last tool called. Rows are binary and L2-normalised.

**Distance** is the cosine distance ``1 - cos`` to the nearest train state, computed with numpy
in blocks (memory stays at ``block x train`` floats).

**Threshold** is the ``quantile`` (default 0.95) of the train states' leave-one-out nearest-
neighbour distances (a state repeated in the train split has distance 0), estimated on at most
``max_reference`` seeded train samples: an eval state further from the train split than 95% of
train states are from their nearest other train state is out of distribution.

numpy is imported when ``fit`` runs, never when the package is imported.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import EvaluatorError
from ..records import DecisionPoint, Message, State, Trajectory

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

__all__ = ["DistributionShift", "ShiftFlag", "state_tokens"]

_WORD = re.compile(r"[^\W_]+", re.UNICODE)
_DIGITS = re.compile(r"\d+")


@dataclass(frozen=True, slots=True)
class ShiftFlag:
    """One eval state's cosine distance to the nearest train state, and whether it is beyond the
    threshold (out of distribution)."""

    distance: float
    is_ood: bool

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (crosses the xdist channel unchanged)."""
        return {"distance": self.distance, "is_ood": self.is_ood}


def _text(message: Mapping[str, Any]) -> str:
    content = message.get("content")
    if isinstance(content, list):
        return " ".join(str(p.get("text", "")) for p in content if isinstance(p, Mapping))
    return "" if content is None else str(content)


def state_tokens(messages: Sequence[Message], end: int | None = None) -> list[str]:
    """The tokens of the state ``messages[:end]``: last user message words, tools called so far,
    last tool (see the module docstring)."""
    end = len(messages) if end is None else end
    tokens: list[str] = []
    last_tool = None
    user_seen = False
    for i in range(end - 1, -1, -1):  # newest first: the last user message and the last tool come early
        m = messages[i]
        role = m.get("role")
        if role == "user" and not user_seen:
            user_seen = True
            tokens.extend(_DIGITS.sub("0", w) for w in _WORD.findall(_text(m).lower()))
        elif role == "assistant":
            for tc in m.get("tool_calls") or ():
                name = str((tc.get("function") or {}).get("name", ""))
                tokens.append("\x01" + name)
                if last_tool is None:
                    last_tool = name
    if last_tool is not None:
        tokens.append("\x02" + last_tool)
    return tokens


class DistributionShift:
    """The distribution-shift detector (see the module docstring). Not thread-safe while fitting."""

    name = "distribution_shift"

    def __init__(self, *, quantile: float = 0.95, dim: int = 512, max_reference: int = 5000,
                 block: int = 1024, seed: int = 0) -> None:
        if not 0.0 < quantile <= 1.0:
            raise EvaluatorError(f"DistributionShift: quantile {quantile!r} must be in (0, 1], e.g. 0.95")
        if dim < 8:
            raise EvaluatorError(f"DistributionShift: dim {dim!r} is too small; use at least 64 (default 512)")
        self.quantile = quantile
        self.dim = dim
        self.max_reference = max_reference
        self.block = block
        self.seed = seed
        self.threshold: float | None = None
        """Distance above which a state is out of distribution (set by :meth:`fit`)."""
        self.train_states = 0
        self._train: npt.NDArray[np.float32] | None = None
        self._buckets: dict[str, int] = {}

    def _bucket(self, token: str) -> int:
        b = self._buckets.get(token)
        if b is None:
            b = self._buckets[token] = zlib.crc32(token.encode()) % self.dim
        return b

    def _rows(self, token_lists: Iterable[list[str]]) -> list[tuple[int, ...]]:
        return [tuple(sorted({self._bucket(t) for t in tokens})) for tokens in token_lists]

    def _matrix(self, rows: Sequence[tuple[int, ...]]) -> npt.NDArray[np.float32]:
        import numpy as np

        x = np.zeros((len(rows), self.dim), dtype=np.float32)
        r = np.fromiter((i for i, row in enumerate(rows) for _ in row), dtype=np.int64)
        c = np.fromiter((b for row in rows for b in row), dtype=np.int64)
        x[r, c] = 1.0
        norms = np.linalg.norm(x, axis=1, keepdims=True)
        norms[norms == 0] = 1.0  # an empty state stays the zero vector: distance 1 to everything
        x /= norms
        return x

    def _nearest(self, queries: npt.NDArray[np.float32], exclude_self: npt.NDArray[np.int64] | None = None
                 ) -> npt.NDArray[np.float64]:
        """Cosine distance of each query row to its nearest train row, blockwise. ``exclude_self``
        gives, per query, the train row to ignore (leave-one-out), or -1."""
        import numpy as np

        assert self._train is not None
        out = np.empty(len(queries), dtype=np.float64)
        for start in range(0, len(queries), self.block):
            sims = queries[start:start + self.block] @ self._train.T
            if exclude_self is not None:
                own = exclude_self[start:start + self.block]
                rows = np.nonzero(own >= 0)[0]
                sims[rows, own[rows]] = -np.inf
            best = sims.max(axis=1) if sims.shape[1] else np.full(len(sims), -np.inf)
            out[start:start + len(sims)] = 1.0 - np.clip(best, -1.0, 1.0)
        return np.clip(out, 0.0, 2.0)

    def fit(self, trajectories: Iterable[Trajectory]) -> DistributionShift:
        """Learn the train states (every decision point of ``trajectories``) and the threshold."""
        import numpy as np

        token_lists = [
            state_tokens(t.messages, i) for t in trajectories for i in t.assistant_indexes()
        ]
        if not token_lists:
            raise EvaluatorError(
                "DistributionShift.fit got no train states: the train split has no decision points; "
                "fit it on the dataset's train split (--bclone-split only selects what is evaluated)"
            )
        rows = self._rows(token_lists)
        unique: dict[tuple[int, ...], int] = {}
        counts: list[int] = []
        index = []
        for row in rows:  # deduplicate: identical states cost one row
            u = unique.setdefault(row, len(unique))
            if u == len(counts):
                counts.append(0)
            counts[u] += 1
            index.append(u)
        self._train = self._matrix(list(unique))
        self.train_states = len(rows)
        rng = np.random.default_rng(self.seed)
        sample = np.arange(len(rows)) if len(rows) <= self.max_reference else \
            rng.choice(len(rows), size=self.max_reference, replace=False)
        own = np.asarray(index, dtype=np.int64)[sample]
        counts_arr = np.asarray(counts)
        # a state seen twice has an identical other train state: distance 0, no search needed
        repeated = counts_arr[own] > 1
        dists = np.zeros(len(sample), dtype=np.float64)
        single = np.nonzero(~repeated)[0]
        if len(single) and len(unique) > 1:
            dists[single] = self._nearest(self._train[own[single]], own[single])
        elif len(single):
            dists[single] = 1.0  # one distinct train state: nothing else to be near
        self.threshold = float(np.quantile(dists, self.quantile))
        return self

    def distances(self, states: Sequence[DecisionPoint | State]) -> list[float]:
        """Cosine distance of each state to its nearest train state."""
        if self._train is None:
            raise EvaluatorError("DistributionShift: call fit(train_trajectories) before flag() or distances()")
        token_lists = (
            state_tokens(s.trajectory.messages, s.message_index) if isinstance(s, DecisionPoint)
            else state_tokens(s.messages)
            for s in states
        )
        rows = self._rows(token_lists)
        # One block of eval states at a time: a dense matrix of every state is 2 GB at a million.
        out: list[float] = []
        for start in range(0, len(rows), self.block):
            out.extend(float(d) for d in self._nearest(self._matrix(rows[start:start + self.block])))
        return out

    def flag(self, states: Sequence[DecisionPoint | State]) -> list[ShiftFlag]:
        """One :class:`ShiftFlag` per state: distance to the train split and out-of-distribution flag."""
        dists = self.distances(states)
        threshold = self.threshold if self.threshold is not None else 0.0
        # the epsilon absorbs float32 rounding: an exact copy of a train state must never be flagged
        return [ShiftFlag(d, d > threshold + 1e-6) for d in dists]
