"""Subcommands of ``bcfl``; each module exposes ``main(argv) -> int``."""
