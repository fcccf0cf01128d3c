"""Waiting jobs grouped into task queues by everything matching looks at.

Jobs with the same matching requirements (sites, banned sites, platforms, CEs, tags,
processors, memory, CPU time, VO, whole node: :func:`server_stub.matching.requirements`)
and the same priority share a task queue. A match request then evaluates queues, not
jobs: whether a queue fits a resource description is computed once per description and
kept (a queue's requirements never change), so 10^5 waiting jobs in 1000 queues cost a
pilot about as much as 1000 fitting jobs do. The fits are remembered by the fields
matching reads (:data:`server_stub.matching.RESOURCE_FIELDS`), not by the whole
description, so pilots of one kind share an entry whatever their PilotReference, wall
clock or disk; the most recently used :data:`FIT_CACHE_SIZE` entries are kept. CPU time
is kept exact, not in classes, and checked apart from the rest, because a pilot's CPU
time left changes from one request to the next while the rest of its description rarely
does.

The winner is the fitting queue with the highest priority whose oldest waiting job is
the oldest; that job is what the former job-by-job scan returned (highest priority, then
lowest id), so grouping changes no decision.

This index lives in memory and is kept by :class:`server_stub.store.Store`, which
changes it only while it holds its write lock and rebuilds it from the database when it
opens; the claim itself stays a conditional ``UPDATE`` in the database.
"""

from __future__ import annotations

import heapq
import json
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from server_stub import matching

FIT_CACHE_SIZE = 1024  # resource descriptions whose queue fits are remembered (LRU)
# What the fit cache is keyed on: the fields matching reads, CPU time aside. The rest of
# a pilot's description (PilotReference, WallClockTimeLeft, DiskSpace...) differs from
# pilot to pilot and from request to request and would make every request a miss.
_FIT_FIELDS = tuple(k for k in matching.RESOURCE_FIELDS if k != "CPUTime")


@dataclass
class TaskQueue:
    tq_id: int
    priority: int
    requirements: dict[str, Any]
    cpu_time: int
    waiting: int = 0
    heap: list[int] = field(default_factory=list)  # job ids; entries may be stale


@dataclass
class _Fits:
    """The queues (by id) that fit one resource description, CPU time aside."""

    upto: int = 0  # queues [0, upto) have been evaluated
    ids: set[int] = field(default_factory=set)
    max_cpu: int = 0  # the most CPU time any of them needs


class TaskQueues:
    def __init__(self) -> None:
        self._by_key: dict[tuple[int, str], TaskQueue] = {}
        self._queues: list[TaskQueue] = []
        self._queue_of: dict[int, TaskQueue] = {}  # waiting job id -> its queue
        self._head: dict[int, int] = {}  # non-empty queue id -> its oldest waiting job
        self._levels: dict[int, set[int]] = {}  # priority -> ids of its non-empty queues
        self._fits: OrderedDict[str, _Fits] = OrderedDict()

    def __len__(self) -> int:
        return len(self._queue_of)

    def cached_fits(self) -> list[str]:
        """The keys of the match cache (one per kind of resources asked with), oldest first;
        at most FIT_CACHE_SIZE of them."""
        return list(self._fits)

    @property
    def queues(self) -> int:
        return len(self._queues)

    def queue_of(self, job_id: int) -> TaskQueue | None:
        return self._queue_of.get(job_id)

    # -- keeping the index ----------------------------------------------------------------

    def add(self, job_id: int, priority: int, requirements: str) -> None:
        """A job became Waiting; ``requirements`` is its stored requirements JSON."""
        if job_id in self._queue_of:
            return
        queue = self._queue_for(priority, requirements)
        self._queue_of[job_id] = queue
        queue.waiting += 1
        heapq.heappush(queue.heap, job_id)
        head = self._head.get(queue.tq_id)
        if head is None:
            self._levels.setdefault(priority, set()).add(queue.tq_id)
        if head is None or job_id < head:
            self._head[queue.tq_id] = job_id

    def remove(self, job_id: int) -> None:
        """A job left Waiting (claimed, killed, deleted...)."""
        queue = self._queue_of.pop(job_id, None)
        if queue is None:
            return
        queue.waiting -= 1
        if queue.waiting == 0:
            queue.heap.clear()
            del self._head[queue.tq_id]
            level = self._levels[queue.priority]
            level.discard(queue.tq_id)
            if not level:
                del self._levels[queue.priority]
        elif self._head[queue.tq_id] == job_id:
            heap = queue.heap
            while self._queue_of.get(heap[0]) is not queue:
                heapq.heappop(heap)
            self._head[queue.tq_id] = heap[0]

    def _queue_for(self, priority: int, requirements: str) -> TaskQueue:
        key = (priority, requirements)
        queue = self._by_key.get(key)
        if queue is None:
            req = json.loads(requirements)
            queue = TaskQueue(len(self._queues), priority, req, int(req["cpu_time"]))
            self._queues.append(queue)
            self._by_key[key] = queue
        return queue

    # -- matching -------------------------------------------------------------------------

    def best(self, resources: Mapping[str, Any]) -> int | None:
        """The job a pilot with ``resources`` gets: highest priority, then oldest."""
        fits = self._fitting(resources)
        cpu_left = matching.cpu_time_left(resources)
        every_cpu = cpu_left is None or cpu_left >= fits.max_cpu  # the usual case
        for priority in sorted(self._levels, reverse=True):
            candidates = self._levels[priority] & fits.ids
            if cpu_left is not None and not every_cpu:
                queues = self._queues
                candidates = {t for t in candidates if queues[t].cpu_time <= cpu_left}
            if candidates:
                return self._head[min(candidates, key=self._head.__getitem__)]
        return None

    def misses(self, resources: Mapping[str, Any], limit: int) -> list[tuple[TaskQueue, int]]:
        """The first ``limit`` non-empty queues that do not fit, in matching order, each
        with its oldest waiting job."""
        fits = self._fitting(resources)
        cpu_left = matching.cpu_time_left(resources)
        out: list[tuple[TaskQueue, int]] = []
        for priority in sorted(self._levels, reverse=True):
            level = sorted(self._levels[priority], key=self._head.__getitem__)
            for tq_id in level:
                queue = self._queues[tq_id]
                if tq_id in fits.ids and (cpu_left is None or queue.cpu_time <= cpu_left):
                    continue
                out.append((queue, self._head[tq_id]))
                if len(out) >= limit:
                    return out
        return out

    def _fitting(self, resources: Mapping[str, Any]) -> _Fits:
        """Ids of the queues whose requirements fit ``resources``, CPU time aside."""
        rest = {k: resources[k] for k in _FIT_FIELDS if k in resources}
        key = json.dumps([rest.get(k) for k in _FIT_FIELDS], default=str)
        fits = self._fits.get(key)
        if fits is None:
            fits = self._fits[key] = _Fits()
            if len(self._fits) > FIT_CACHE_SIZE:
                self._fits.popitem(last=False)
        else:
            self._fits.move_to_end(key)
        for queue in self._queues[fits.upto :]:
            if not matching.mismatches(queue.requirements, rest):
                fits.ids.add(queue.tq_id)
                fits.max_cpu = max(fits.max_cpu, queue.cpu_time)
        fits.upto = len(self._queues)
        return fits
