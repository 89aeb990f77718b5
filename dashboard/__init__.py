"""The operators' Dash app, its pure figure builders and the background consumer that keeps a bounded view.

Imports only ``foundation`` and ``contracts``; its Kafka consumer comes from the
injected ``KafkaClients`` (``ViewConsumer(view, clients=...)``). No decisions, no store.
"""
