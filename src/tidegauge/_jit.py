"""Numba kernels that import numba on first call, not at import.

Importing numba (with llvmlite and the parts of scipy it loads) costs about 55 MB of resident memory and
0.2 s. Every detector, the window fast path and the watermark have a compiled kernel, so importing any of
them used to load numba, even in a process that never runs one: an idle edge agent (whose goal is under
100 MB), ``tidegauge --help``, the server's non-flow parts. :func:`lazy_njit` is ``numba.njit`` with the
import and the dispatcher's creation moved to the kernel's first call; the compiled machine code is
the same (and, with ``cache=True``, the same on-disk cache).

A kernel that calls another kernel of its module sees a numba dispatcher when it compiles: the first
call replaces every lazy kernel the function names in its globals by its dispatcher.

Examples
--------
>>> import numpy as np
>>> @lazy_njit(cache=False)
... def total(x):
...     s = 0.0
...     for v in x:
...         s += v
...     return s
>>> total(np.arange(4.0))
6.0
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any, Generic, ParamSpec, TypeVar

__all__ = ["LazyKernel", "lazy_njit"]

logger = logging.getLogger(__name__)

P = ParamSpec("P")
R = TypeVar("R")

_LOCK = threading.Lock()
"""Kernels may first run on several threads at once (``asyncio.to_thread``): one creates the dispatcher."""


class LazyKernel(Generic[P, R]):
    """A Python function compiled with ``numba.njit(**options)`` when first called."""

    def __init__(self, fn: Callable[P, R], options: dict[str, Any]) -> None:
        self.__wrapped__ = fn
        self.__name__ = fn.__name__
        self.__qualname__ = fn.__qualname__
        self.__doc__ = fn.__doc__
        self._options = options
        self._compiled: Callable[P, R] | None = None

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        compiled = self._compiled
        if compiled is None:
            compiled = self.dispatcher()
        return compiled(*args, **kwargs)

    def dispatcher(self) -> Callable[P, R]:
        """The numba dispatcher (numba is imported, nothing is compiled until it is called)."""
        with _LOCK:
            if self._compiled is None:
                self._compiled = self._make()
            return self._compiled

    def _make(self) -> Callable[P, R]:
        try:
            import numba
        except ImportError as exc:  # a core dependency: only a broken install gets here
            raise ImportError(f"{self.__qualname__} is a numba kernel, and numba cannot be imported ({exc}): "
                              "reinstall tidegauge (`pip install --force-reinstall tidegauge`)") from exc
        fn = self.__wrapped__
        names = fn.__globals__
        for name in fn.__code__.co_names:
            other = names.get(name)
            if isinstance(other, LazyKernel) and other is not self:
                # numba types a called global at compile time: it must be a dispatcher, not this wrapper
                names[name] = other._compiled or other._make_unlocked()
        logger.debug("numba kernel %s: dispatcher created", self.__qualname__)
        return numba.njit(**self._options)(fn)  # type: ignore[no-any-return]

    def _make_unlocked(self) -> Callable[P, R]:
        self._compiled = self._make()
        return self._compiled

    def __repr__(self) -> str:
        state = "compiled" if self._compiled is not None else "not loaded"
        return f"<lazy numba kernel {self.__qualname__} ({state})>"


def lazy_njit(**options: Any) -> Callable[[Callable[P, R]], LazyKernel[P, R]]:
    """``numba.njit(**options)``, applied at the kernel's first call (see the module docstring)."""

    def wrap(fn: Callable[P, R]) -> LazyKernel[P, R]:
        return LazyKernel(fn, options)

    return wrap
