"""Start-up hook for ``meterline instrument``: this folder goes first on ``PYTHONPATH``."""
