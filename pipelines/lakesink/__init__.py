"""The lake sink: consumes a Stream's topic and writes Parquet files, exactly once.

``python -m gyre.pipelines.lakesink`` writes ``<lake>/date=YYYY-MM-DD/part-...parquet`` with
an explicit Arrow schema derived from the Stream's schema; which Kafka offsets are in the lake
is recorded in the lake itself (`gyre.pipelines.lakesink.committer`), so a sink killed at any
instant and restarted writes every record exactly once.
"""
