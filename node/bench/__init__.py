"""Benchmark modes of ``bcfl bench``; each module exposes ``main(argv) -> int`` and writes JSON."""
