"""``bcfl start``'s log: libp2p's peer-failure tracebacks become one line, nothing else does."""

from __future__ import annotations

import io
import logging
import traceback
from collections.abc import Iterator

import pytest

from node.commands.start import PeerTracebackFilter

IDENTIFY_LOGGER = "libp2p.identity.identify.identify"


@pytest.fixture
def captured() -> Iterator[tuple[io.StringIO, logging.Handler]]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    yield stream, handler
    for name in (IDENTIFY_LOGGER, "libp2p", "libp2pextra", "bcfl.node"):
        logging.getLogger(name).removeHandler(handler)
        logging.getLogger(name).propagate = True


def _log_like_libp2p(logger: logging.Logger) -> None:
    """What libp2p's identify handler does when a peer resets the connection."""
    try:
        raise BrokenPipeError(32, "Broken pipe")
    except BrokenPipeError as exc:
        logger.error("Error sending identify response to %s: %s (type: %s)\n%s",
                     "12D3KooW", exc, type(exc), traceback.format_exc())


def _attach(name: str, handler: logging.Handler) -> logging.Logger:
    logger = logging.getLogger(name)
    logger.addHandler(handler)
    logger.propagate = False
    return logger


def test_a_libp2p_traceback_becomes_its_first_line(
        captured: tuple[io.StringIO, logging.Handler]) -> None:
    stream, handler = captured
    handler.addFilter(PeerTracebackFilter())
    _log_like_libp2p(_attach(IDENTIFY_LOGGER, handler))
    lines = stream.getvalue().splitlines()
    assert lines == [f"ERROR {IDENTIFY_LOGGER}: Error sending identify response to 12D3KooW: "
                     "[Errno 32] Broken pipe (type: <class 'BrokenPipeError'>) "
                     "(traceback omitted)"]


def test_exc_info_from_libp2p_is_dropped_too(
        captured: tuple[io.StringIO, logging.Handler]) -> None:
    stream, handler = captured
    handler.addFilter(PeerTracebackFilter())
    logger = _attach("libp2p", handler)
    try:
        raise ConnectionResetError("reset by peer")
    except ConnectionResetError:
        logger.exception("stream failed")
    assert stream.getvalue() == "ERROR libp2p: stream failed (traceback omitted)\n"


def test_other_loggers_and_debug_keep_their_tracebacks(
        captured: tuple[io.StringIO, logging.Handler]) -> None:
    stream, handler = captured
    handler.addFilter(PeerTracebackFilter())
    _log_like_libp2p(_attach("bcfl.node", handler))  # our own code's tracebacks are bugs
    _log_like_libp2p(_attach("libp2pextra", handler))  # a prefix, not libp2p's hierarchy
    assert stream.getvalue().count("Traceback (most recent call last)") == 2

    stream.seek(0)
    stream.truncate()
    debug_handler = logging.StreamHandler(stream)
    debug_handler.addFilter(PeerTracebackFilter(keep_tracebacks=True))
    logger = _attach(IDENTIFY_LOGGER, debug_handler)
    try:
        _log_like_libp2p(logger)
    finally:
        logger.removeHandler(debug_handler)
    assert "Traceback (most recent call last)" in stream.getvalue()


def test_a_plain_libp2p_line_is_untouched(
        captured: tuple[io.StringIO, logging.Handler]) -> None:
    stream, handler = captured
    handler.addFilter(PeerTracebackFilter())
    _attach(IDENTIFY_LOGGER, handler).warning("peer %s has no addresses", "12D3KooW")
    assert stream.getvalue() == f"WARNING {IDENTIFY_LOGGER}: peer 12D3KooW has no addresses\n"
