"""Models added by the plugin."""

__all__ = []
