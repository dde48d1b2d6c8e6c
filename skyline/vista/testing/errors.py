"""What the real test servers raise when they cannot run."""

INSTALL_HINT = "run `make install` (it apt-installs the real servers the tests need)"


class ServerError(RuntimeError):
    """A server could not be prepared, did not become ready, or died."""


class MissingBinaryError(ServerError):
    """A program or Debian Python package a server needs is not installed."""
