"""The TrainingJob workload: distributed torch training with Horovod (or torch DDP).

Two roles run the same entrypoint, ``python -m gyre.pipelines.trainer <role>``:

* ``launcher`` (one replica): Horovod's rendezvous server and the gang (see `launcher`);
* ``worker`` (``workers`` replicas): trains data-parallel on its shard (see `worker`).

Both read the `TrainerConfig` JSON named by ``$GYRE_CONFIG``. The model artifact they produce
is read back with `gyre.pipelines.trainer.artifact.load`.

Wiring, identical for the local runtime (processes) and Kubernetes (launcher Job, headless
Service, worker pods):

=================  ====================================================================
launcher           BATCH, 1 replica; ports ``rendezvous`` (``GYRE_PORT_RENDEZVOUS``,
                   default 29400) and, for ``backend: ddp``, ``store``
                   (``GYRE_PORT_STORE``; unset: a free port, published to the workers);
                   exits 0 when every worker finished, 1 when the gang failed
worker             BATCH, ``workers`` replicas; ``GYRE_REPLICA_INDEX``/``GYRE_REPLICAS``;
                   ``GYRE_LAUNCHER_ADDR`` = host:port of the launcher's ``rendezvous``
                   port; optional port ``metrics`` (``GYRE_PORT_METRICS``)
placement          ``workers_per_host`` unset: all workers on one host locally, one per
                   host when ``KUBERNETES_SERVICE_HOST`` is set (inside a pod)
status             rank 0 writes `TrainerConfig.status_path` (fields in `progress`); the
                   launcher sets ``phase: failed`` there when the gang fails
restart            a failed gang exits non-zero everywhere; restarting launcher and workers
                   resumes from the newest checkpoint in ``checkpoint.dir``
=================  ====================================================================
"""
