"""The package's version, in one place: ``whygpu.__version__`` and the machine
description every saved result embeds (``whygpu.bench.machine``) read it."""

__version__ = "0.1.0"
