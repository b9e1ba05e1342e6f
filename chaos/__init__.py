"""Chaos scenarios: the gateway's real processes put through real faults, counted end to end.

``python -m chaos`` (``make chaos``) runs every scenario of ``chaos.registry`` against one
run's own ``redis-server`` and simulator process, each scenario with its own ``expie-gateway
serve`` replicas, faults injected through the simulator's ``/_sim/faults`` and ``kill -9``,
and prints one JSON object per scenario. Not shipped: the wheel holds ``gateway`` and
``simulator`` only.
"""
