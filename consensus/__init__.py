"""PBFT as a pure state machine: events in, actions out, no I/O, no clock.

The node feeds decoded messages, ticks of logical time and proposals; the core
returns actions (send, broadcast, persist, deliver, set timer). A seeded
simulator in this package drives many replicas over a simulated network.
"""
