"""Counts real XLA compilations (backend compiles) through jax.monitoring."""

import contextlib

import jax

_EVENTS: list[str] = []
_REGISTERED = False


def _listener(name, duration, **kwargs):
    del duration, kwargs
    if name == "/jax/core/compile/backend_compile_duration":
        _EVENTS.append(name)


@contextlib.contextmanager
def count_compiles():
    """Yields a callable returning the number of compilations so far inside."""
    global _REGISTERED
    if not _REGISTERED:
        jax.monitoring.register_event_duration_secs_listener(_listener)
        _REGISTERED = True
    start = len(_EVENTS)
    yield lambda: len(_EVENTS) - start
