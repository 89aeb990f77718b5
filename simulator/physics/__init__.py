"""Pure physics models of the simulator (thermal, power, performance), vectorised over servers."""
