"""Backends, the device probe and the policy that picks backend and precision."""
