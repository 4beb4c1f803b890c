"""Typed, validated configuration. Each concern has its own model and file under ``config/``;
everything is loaded once at start-up through :func:`load_model` and passed down explicitly."""

from worker.config.loader import ConfigError, load_model, parse_model

__all__ = ["ConfigError", "load_model", "parse_model"]
