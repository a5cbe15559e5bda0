"""corral's daemon side: the Docker-shaped API, container lifecycle and the CLI."""

__version__ = "0.1.0"
API_VERSION = "1.44"
MIN_API_VERSION = "1.24"
