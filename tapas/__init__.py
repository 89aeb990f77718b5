"""The shell: the `tapas` command line, the demo, the generated docs, and the composition root.

Holds ``cli.py`` and ``commands/`` (one module per command group), ``demo.py`` (every
process on one host), ``docs.py`` (the README's generated tables) and ``bootstrap.py``,
the one module that builds Kafka clients, history stores and collector producers from
``Settings`` and passes them into the services' constructors.

The top of the house: it may import every package and no package imports it
(``.importlinter`` keeps it so). Holds no settings, topology or broker plumbing (those
are in ``foundation``), no decisions, physics, models or wire contracts.
"""
