"""A restored plan's stages, each made a Stage when the build first asks for it.

A compiled plan (state/plan.py) keeps every stage as a record; making a
`Stage` of one (each field set through its slot descriptor, its deps,
outputs and locations made too) was most of restoring a plan, and a build
that decides a few stages of many needs only those.  `BuildGraph.restore`
takes a `Restored` (what the graph needs of every stage without making it),
and its `stages` is then a `LazyStages`; a pipeline's `stages` is a
`StagesOf` view of it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, ItemsView, Iterable, Iterator, KeysView, Sequence, ValuesView

from pivotbuild.model import Stage, StageId

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import overload


class Restored:
    """What `BuildGraph.restore` needs of a compiled plan's stages without
    making them: each stage's id, its outputs' (path, is a directory) pairs,
    the ids of its `py:` and `always` stages, and `stages`, the LazyStages
    that make each (`make(i)`: the i-th stage as a Stage)."""

    __slots__ = ("always", "ids", "outs", "python", "stages")

    def __init__(
        self,
        ids: list[StageId],
        outs: Sequence[Iterable[tuple[str, bool]]],
        make: Callable[[int], Stage],
        python: set[StageId],
        always: set[StageId],
    ) -> None:
        self.ids = ids
        self.outs = outs
        self.python = python
        self.always = always
        self.stages = LazyStages(ids, {sid: i for i, sid in enumerate(ids)}, make)


class LazyStages(dict[StageId, Stage]):
    """A restored graph's stages by id, each made from its plan record the
    first time it is looked up: a build with a few stages to decide makes
    those (a 10,000-stage plan's Stage objects took about as long to make as
    the rest of such a build).  Whatever looks at them all (iteration, the
    views, equality) makes them all first, in declaration order, so it sees
    a whole dict; `len`, `in` and `get` need none made."""

    __slots__ = ("_ids", "_lock", "_make", "_whole", "index")

    def __init__(self, ids: list[StageId], index: dict[StageId, int], make: Callable[[int], Stage]) -> None:
        super().__init__()
        self._ids = ids
        self.index = index  # id -> its position in declaration order
        self._make = make
        self._whole = False
        self._lock = threading.Lock()  # (storer and executor threads look stages up too: one Stage per id)

    def __missing__(self, sid: StageId) -> Stage:
        i = self.index[sid]  # (KeyError for a stage it does not have, as a dict)
        with self._lock:
            stage = super().get(sid)
            if stage is None:
                stage = self._make(i)
                super().__setitem__(sid, stage)
            return stage

    def whole(self) -> None:
        """Make every stage not made yet (in declaration order)."""
        if not self._whole:
            with self._lock:
                if not self._whole:
                    get, make = super().get, self._make
                    made = [get(sid) or make(i) for i, sid in enumerate(self._ids)]
                    super().clear()
                    super().update(zip(self._ids, made, strict=True))
                    self._whole = True

    def __len__(self) -> int:
        return len(self._ids)

    def __contains__(self, sid: object) -> bool:
        return sid in self.index

    def get(self, sid: StageId, default: Stage | None = None) -> Stage | None:  # type: ignore[override]
        return self[sid] if sid in self.index else default

    def __iter__(self) -> Iterator[StageId]:
        self.whole()
        return super().__iter__()

    def __reversed__(self) -> Iterator[StageId]:
        self.whole()
        return super().__reversed__()

    def keys(self) -> KeysView[StageId]:  # type: ignore[override]
        self.whole()
        return super().keys()

    def values(self) -> ValuesView[Stage]:  # type: ignore[override]
        self.whole()
        return super().values()

    def items(self) -> ItemsView[StageId, Stage]:  # type: ignore[override]
        self.whole()
        return super().items()

    def __eq__(self, other: object) -> bool:
        self.whole()
        return super().__eq__(other)

    __hash__ = None

    def __repr__(self) -> str:
        self.whole()
        return super().__repr__()

    def copy(self) -> dict[StageId, Stage]:
        self.whole()
        return dict(super().items())

    def __reduce__(self) -> tuple[type[dict[StageId, Stage]], tuple[dict[StageId, Stage]]]:
        return (dict, (self.copy(),))


class StagesOf(Sequence[Stage]):
    """One pipeline's stages (`Pipeline.stages`) in a restored project: a view
    of the graph's LazyStages, each made when first asked for.  Equal to the
    tuple of the same stages."""

    __slots__ = ("_ids", "_stages")

    def __init__(self, stages: LazyStages, ids: list[StageId]) -> None:
        self._stages = stages
        self._ids = ids

    def __len__(self) -> int:
        return len(self._ids)

    if TYPE_CHECKING:  # (typing's overloads, for the type checker only: a build does not import typing)

        @overload
        def __getitem__(self, i: int) -> Stage: ...
        @overload
        def __getitem__(self, i: slice) -> tuple[Stage, ...]: ...

    def __getitem__(self, i: int | slice) -> Stage | tuple[Stage, ...]:
        if isinstance(i, slice):
            return tuple([self._stages[sid] for sid in self._ids[i]])
        return self._stages[self._ids[i]]

    def __iter__(self) -> Iterator[Stage]:
        stages = self._stages
        return (stages[sid] for sid in self._ids)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, StagesOf):
            other = tuple(other)
        return tuple(self) == other

    def __hash__(self) -> int:
        return hash(tuple(self))

    def __repr__(self) -> str:
        return repr(tuple(self))
