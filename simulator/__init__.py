"""Closed-loop cluster simulator: topology, workload, physics, scenarios, policies, metrics. Imports the controller core; holds none of its logic."""
