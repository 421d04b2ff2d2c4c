"""An embedded S3: moto's server on 127.0.0.1, started and always stopped by a context manager."""

from __future__ import annotations

import errno
import logging
import socket
from collections.abc import Iterator
from contextlib import contextmanager

from moto.moto_api._internal.models import moto_api_backend
from moto.server import ThreadedMotoServer

_logger = logging.getLogger(__name__)

HOST = "127.0.0.1"


class PortError(RuntimeError):
    """The requested port cannot be used for the embedded S3."""


def check_port(port: int) -> None:
    """Fail with a clear message when `port` on 127.0.0.1 cannot be bound (moto would hang on it)."""
    if not 0 <= port <= 65535:
        raise PortError(f"port must be between 0 and 65535, got {port}")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((HOST, port))
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                raise PortError(
                    f"port {port} on {HOST} is already in use: stop what holds it, pick another with "
                    "--port, or leave --port out to use a free one"
                ) from e
            raise PortError(f"cannot listen on {HOST}:{port}: {e.strerror or e}") from e


@contextmanager
def moto_s3(port: int = 0) -> Iterator[str]:
    """Run moto's server on 127.0.0.1 (port 0: a free one) and yield its endpoint URL.

    The server stops when the block ends, whether it ends normally, by an exception or by Ctrl-C.
    """
    check_port(port)
    # werkzeug logs every request at INFO; the demo shows a progress bar instead.
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address=HOST, port=port, verbose=False)
    server.start()
    try:
        host, bound = server.get_host_and_port()
        endpoint = f"http://{host}:{bound}"
        # moto keeps its data in this process: a second server started here would see the first one's
        # buckets. Every embedded S3 starts empty, as a fresh `make demo` does.
        moto_api_backend.reset()
        _logger.debug("moto server started", extra={"endpoint": endpoint})
        yield endpoint
    finally:
        server.stop()
        _logger.debug("moto server stopped")
