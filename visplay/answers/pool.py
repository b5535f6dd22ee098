"""``Grader``: equivalence verdicts for many answer pairs, with a hard timeout per symbolic comparison,
and ``equivalent(a, b, grader=None)`` for one pair (part of `visplay.answers`; the verdict itself
is `visplay.answers.equivalence`).

>>> equivalent("0.5", "\\\\frac{1}{2}")
True

Test: ``pytest -q tests/test_answers.py``.
"""

from __future__ import annotations

import functools
import multiprocessing
import os
import signal
import threading
import time
import weakref
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from typing import Any

from visplay.answers.equivalence import fast_verdict, grade_pair, normalize_answer

Compare = Callable[[str, str], bool]


# ---------------------------------------------------------------- the grader with worker processes


@dataclass(frozen=True)
class Verdict:
    """Whether two answers are equivalent, and how that was decided.

    reason: "equal" (normalised strings equal), "numeric" / "fraction" / "letter" (the fast path,
    see ``fast_verdict``), "grader" (mathruler in a worker or in-process), "timeout" (killed after
    the hard timeout), "error" (the comparison raised or its worker died).
    """

    equal: bool
    reason: str


def pair_key(na: str, nb: str) -> tuple[str, str]:
    """Cache key: the unordered normalised pair (the verdict is symmetric by construction)."""
    return (na, nb) if na <= nb else (nb, na)


def prepare_mathruler() -> None:
    """Worker start-up for ``grade_pair``: import mathruler/sympy, memoise its string normalisers.

    ``grade_answer`` re-normalises both strings (LaTeX parsing included) on every call; its
    ``normalize_answer`` and ``_normalize`` are pure str -> str functions, so caching them per
    worker process changes no verdict. Only ever called inside worker processes.
    """
    from mathruler import grader

    for name in ("normalize_answer", "_normalize"):
        function = getattr(grader, name)
        if not hasattr(function, "cache_info"):
            setattr(grader, name, functools.lru_cache(maxsize=65536)(function))


def _exit_when_orphaned(parent_pid: int, period: float = 1.0) -> None:
    """Watchdog thread body: a worker whose parent died (e.g. SIGKILL) exits even mid-comparison."""
    while os.getppid() == parent_pid:
        time.sleep(period)
    os._exit(0)


def _worker_main(conn: Connection, compare: Compare, init: Callable[[], None] | None) -> None:
    """Worker loop: initialise, say ready, then answer (key, a, b) requests until None or EOF."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's business
    threading.Thread(target=_exit_when_orphaned, args=(os.getppid(),), daemon=True).start()
    if init is not None:
        init()
    conn.send(("ready", None))
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return
        if message is None:
            return
        key, a, b = message
        try:
            reply: tuple[Any, Any] = (key, bool(compare(a, b)))
        except BaseException as exc:  # report, keep serving
            reply = (key, f"{type(exc).__name__}: {exc}"[:300])
        conn.send(reply)


class _Worker:
    """One worker process and the request it is running."""

    def __init__(self, context: Any, compare: Compare, init: Callable[[], None] | None) -> None:
        parent, child = context.Pipe()
        self.process = context.Process(target=_worker_main, args=(child, compare, init), daemon=True)
        self.process.start()
        child.close()
        self.conn: Connection = parent
        self.ready = False
        self.task: tuple[str, str] | None = None
        self.deadline = 0.0

    def send(self, key: tuple[str, str], a: str, b: str, deadline: float) -> None:
        self.conn.send((key, a, b))
        self.task, self.deadline = key, deadline

    def stop(self, grace: float = 1.0) -> None:
        """Ask politely, then kill; always reaps the process and closes the pipe."""
        if self.process.is_alive() and self.task is None and self.ready:
            try:
                self.conn.send(None)
            except (OSError, ValueError):
                pass
            self.process.join(grace)
        if self.process.is_alive():
            self.process.kill()
        self.process.join(5.0)
        self.conn.close()


def _stop_all(workers: list[_Worker]) -> None:
    while workers:
        workers.pop().stop()


class Grader:
    """Equivalence verdicts for many answer pairs: fast path, shared cache, hard-timeout workers.

    Parameters
    ----------
    timeout: seconds one symbolic comparison may run before its worker is killed.
    workers: worker processes (started lazily, on the first pair that needs one); 0 compares
        in this process without a timeout.
    compare: the symbolic comparison, ``compare(na, nb) -> bool`` on normalised strings; must be
        picklable (a module-level function). Defaults to ``grade_pair``; tests inject slow ones.
    start_method: multiprocessing start method ("spawn" by default: safe next to threads and CUDA).
    startup_timeout: seconds a new worker may take to start and run ``worker_init``.
    worker_init: picklable function a worker runs before it reports ready, so imports don't eat
        the timeout (default ``prepare_mathruler``; pass None with a custom ``compare``).

    ``stats`` counts verdicts by reason plus "cache_hit". Not thread-safe: one Grader per thread.
    ``close()`` (or leaving the ``with`` block, or garbage collection) stops and reaps every
    worker; a worker whose parent is killed exits on its own within a second. (With "spawn",
    multiprocessing also keeps its own resource-tracker process, which exits with the parent.)

    >>> with Grader(workers=0) as grader:
    ...     grader.equivalent("1/2", "0.5"), grader.verdict("3", "4").reason
    (True, 'numeric')
    """

    def __init__(
        self,
        timeout: float = 10.0,
        workers: int = 1,
        compare: Compare | None = None,
        start_method: str = "spawn",
        startup_timeout: float = 120.0,
        worker_init: Callable[[], None] | None = prepare_mathruler,
    ) -> None:
        if not timeout > 0:
            raise ValueError(f"timeout must be > 0 seconds, got {timeout!r}")
        if workers < 0:
            raise ValueError(f"workers must be >= 0 (0 = compare in-process), got {workers!r}")
        self.timeout = float(timeout)
        self.n_workers = int(workers)
        self.compare: Compare = compare or grade_pair
        self.startup_timeout = float(startup_timeout)
        self.worker_init = worker_init
        self.stats: Counter[str] = Counter()
        self._context = multiprocessing.get_context(start_method)
        self._cache: dict[tuple[str, str], Verdict] = {}
        self._workers: list[_Worker] = []
        self._finalizer = weakref.finalize(self, _stop_all, self._workers)

    # -- lifecycle
    def __enter__(self) -> Grader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop every worker process (the cache is kept; new work starts new workers)."""
        _stop_all(self._workers)

    @property
    def worker_pids(self) -> list[int]:
        return [w.process.pid for w in self._workers if w.process.pid is not None]

    # -- verdicts
    def lookup(self, na: str, nb: str) -> Verdict | None:
        """Verdict for two normalised answers from the fast path or the cache; None if it needs a worker."""
        fast = fast_verdict(na, nb)
        if fast is not None:
            self.stats[fast[1]] += 1
            return Verdict(*fast)
        cached = self._cache.get(pair_key(na, nb))
        if cached is not None:
            self.stats["cache_hit"] += 1
        return cached

    def verdict(self, a: object, b: object) -> Verdict:
        """Verdict for two raw answers (normalised here)."""
        na, nb = normalize_answer(a), normalize_answer(b)
        found = self.lookup(na, nb)
        if found is not None:
            return found
        self.resolve([(na, nb)])
        return self._cache[pair_key(na, nb)]

    def equivalent(self, a: object, b: object) -> bool:
        return self.verdict(a, b).equal

    def resolve(self, pairs: Iterable[tuple[str, str]]) -> None:
        """Compute and cache verdicts for normalised pairs (fast path and cache first, then workers)."""
        todo: dict[tuple[str, str], None] = {}
        for na, nb in pairs:
            key = pair_key(na, nb)
            if key not in self._cache and key not in todo and fast_verdict(na, nb) is None:
                todo[key] = None
        if not todo:
            return
        if self.n_workers == 0:
            for key in todo:
                self._store(key, self._compare_inline(*key))
        else:
            self._run_workers(list(todo))

    def _store(self, key: tuple[str, str], verdict: Verdict) -> None:
        self._cache[key] = verdict
        self.stats[verdict.reason] += 1

    def _compare_inline(self, na: str, nb: str) -> Verdict:
        try:
            return Verdict(bool(self.compare(na, nb)), "grader")
        except Exception:
            return Verdict(False, "error")

    # -- the worker pool
    def _run_workers(self, keys: list[tuple[str, str]]) -> None:
        queue = list(reversed(keys))
        while queue or any(w.task is not None for w in self._workers):
            self._top_up(len(queue))
            for worker in self._workers:
                if worker.ready and worker.task is None and queue:
                    key = queue.pop()
                    worker.send(key, key[0], key[1], time.monotonic() + self.timeout)
            self._collect()
            self._expire()

    def _top_up(self, pending: int) -> None:
        """Start workers (up to ``n_workers``) while there is work for them."""
        idle = sum(1 for w in self._workers if w.task is None)
        while len(self._workers) < self.n_workers and pending > idle:
            worker = _Worker(self._context, self.compare, self.worker_init)
            worker.deadline = time.monotonic() + self.startup_timeout
            self._workers.append(worker)
            idle += 1

    def _collect(self) -> None:
        """Wait for the next message (or the nearest deadline) and record what arrived."""
        waiting = [w for w in self._workers if w.task is not None or not w.ready]
        if not waiting:
            return
        delay = max(0.0, min(w.deadline for w in waiting) - time.monotonic())
        ready = wait([w.conn for w in waiting], timeout=delay)
        for worker in [w for w in waiting if w.conn in ready]:
            try:
                key, value = worker.conn.recv()
            except (EOFError, OSError):
                if not worker.ready:
                    self._workers.remove(worker)
                    worker.stop(grace=0.0)
                    raise RuntimeError(
                        f"a grader worker exited while starting (exit code {worker.process.exitcode}); "
                        "check that compare and worker_init import in a fresh process"
                    ) from None
                self._retire(worker, "error")
                continue
            if key == "ready":
                worker.ready = True
                continue
            worker.task = None
            if isinstance(value, bool):
                self._store(key, Verdict(value, "grader"))
            else:
                self._store(key, Verdict(False, "error"))

    def _expire(self) -> None:
        """Kill workers past their deadline: the running pair times out, a startup failure raises."""
        now = time.monotonic()
        for worker in [w for w in self._workers if (w.task is not None or not w.ready) and w.deadline <= now]:
            if not worker.ready:
                self._workers.remove(worker)
                worker.stop()
                raise RuntimeError(
                    f"a grader worker did not start within {self.startup_timeout:.0f}s; "
                    "check that compare and worker_init import in a fresh process"
                )
            self._retire(worker, "timeout")

    def _retire(self, worker: _Worker, reason: str) -> None:
        """Drop a worker (killed or dead); its running pair gets ``reason``. A fresh one starts on demand."""
        if worker.task is not None:
            self._store(worker.task, Verdict(False, reason))
        worker.task = None
        self._workers.remove(worker)
        worker.stop(grace=0.0)


def equivalent(a: object, b: object, grader: Grader | None = None) -> bool:
    """Normalised equality, or ``grade_answer`` in either direction on the normalised strings.

    Without a ``grader`` the symbolic comparison runs in this process with no timeout; pass a
    ``Grader`` for untrusted input (hard timeout, shared cache).
    """
    if grader is not None:
        return grader.equivalent(a, b)
    na, nb = normalize_answer(a), normalize_answer(b)
    fast = fast_verdict(na, nb)
    if fast is not None:
        return fast[0]
    try:
        return grade_pair(na, nb)
    except Exception:  # mathruler/sympy failures mean "not shown equivalent"
        return False
