"""The FeatureJob workload: point-in-time features and labels with Spark, written to a
versioned offline store (Parquet) and materialized into an online store (Redis).

``python -m gyre.pipelines.features`` submits `job` to Spark (``spark-submit``); the job
serves its run's `FeatureRunStatus` on ``/status``. `online` is the online store's key layout
and its read library (`get_online_features`), importable without Spark.
"""
