"""sublens: mechanistic study of subliminal learning in language models."""

__version__ = "0.1.0"
