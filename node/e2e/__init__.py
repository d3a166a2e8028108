"""Fault injection on real validator processes (``bcfl e2e``): manifests, hosts, runner."""
