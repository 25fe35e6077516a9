"""The real servers the integration tests run against: S3 object store, PostgreSQL, MLflow.

Proves each one is the real thing and wired the production way: boto3 and delta-rs on the S3
server, password auth on PostgreSQL, and an MLflow server whose runs land in PostgreSQL and whose
artifacts land in the bucket.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from driftloop.lake.tables import query
from tests.services import MlflowServer, ObjectStore, Postgres

pytestmark = pytest.mark.slow


def test_object_store_round_trips_objects_through_boto3(s3: ObjectStore):
    client = s3.client()
    client.create_bucket(Bucket="roundtrip")
    client.put_object(Bucket="roundtrip", Key="a/b/one.txt", Body=b"one")
    client.put_object(Bucket="roundtrip", Key="a/two.txt", Body=b"two")

    assert client.get_object(Bucket="roundtrip", Key="a/b/one.txt")["Body"].read() == b"one"
    listed = client.list_objects_v2(Bucket="roundtrip", Prefix="a/")
    assert sorted(o["Key"] for o in listed["Contents"]) == ["a/b/one.txt", "a/two.txt"]
    by_folder = client.list_objects_v2(Bucket="roundtrip", Prefix="a/", Delimiter="/")
    assert [p["Prefix"] for p in by_folder["CommonPrefixes"]] == ["a/b/"]

    client.delete_object(Bucket="roundtrip", Key="a/b/one.txt")
    client.delete_object(Bucket="roundtrip", Key="a/two.txt")
    assert client.list_objects_v2(Bucket="roundtrip").get("KeyCount") == 0
    client.delete_bucket(Bucket="roundtrip")
    assert "roundtrip" not in {b["Name"] for b in client.list_buckets()["Buckets"]}


def test_object_store_rejects_wrong_credentials(s3: ObjectStore):
    from botocore.exceptions import ClientError

    impostor = ObjectStore(s3.endpoint_url, s3.bucket, s3.access_key_id, "not-the-secret")
    with pytest.raises(ClientError, match=r"SignatureDoesNotMatch|AccessDenied|InvalidAccessKeyId"):
        impostor.client().list_objects_v2(Bucket=s3.bucket)


def test_delta_rs_writes_and_reads_a_table_on_the_object_store(s3: ObjectStore):
    import pyarrow as pa
    from deltalake import DeltaTable, write_deltalake

    uri = f"s3://{s3.bucket}/lake/services_check"
    options = s3.delta_storage_options()
    first = pa.table({"event_id": ["e1", "e2"], "amount": [1.5, 2.5]})
    write_deltalake(uri, first, storage_options=options)
    write_deltalake(
        uri, pa.table({"event_id": ["e3"], "amount": [3.5]}), mode="append", storage_options=options
    )

    table = DeltaTable(uri, storage_options=options)
    assert table.version() == 1
    assert sorted(query(table, "SELECT * FROM t").column("event_id").to_pylist()) == ["e1", "e2", "e3"]
    at_version_0 = query(DeltaTable(uri, version=0, storage_options=options), "SELECT * FROM t")
    assert at_version_0.to_pylist() == first.to_pylist()
    keys = [o["Key"] for o in s3.client().list_objects_v2(Bucket=s3.bucket, Prefix="lake/")["Contents"]]
    assert "lake/services_check/_delta_log/00000000000000000001.json" in keys


def test_postgres_accepts_the_user_with_its_password_only(pg: Postgres):
    import sqlalchemy as sa

    engine = sa.create_engine(pg.sqlalchemy_url)
    try:
        with engine.connect() as connection:
            row = connection.execute(sa.text("SELECT current_user, current_database()")).one()
        assert tuple(row) == (pg.user, pg.database)
    finally:
        engine.dispose()

    wrong = sa.create_engine(pg.sqlalchemy_url.replace(pg.password, "not-the-password"))
    with pytest.raises(sa.exc.OperationalError, match="password authentication failed"):
        wrong.connect()
    wrong.dispose()


def test_mlflow_server_keeps_runs_in_postgres_and_artifacts_in_the_bucket(
    mlflow_tracking: MlflowServer, s3: ObjectStore, tmp_path: Path
):
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=mlflow_tracking.tracking_uri)
    experiment_id = client.create_experiment("services-check")
    run = client.create_run(experiment_id)
    client.log_metric(run.info.run_id, "pr_auc", 0.42)
    report = tmp_path / "report.txt"
    report.write_text("gate passed\n")
    client.log_artifact(run.info.run_id, str(report))
    client.set_terminated(run.info.run_id)

    fetched = client.get_run(run.info.run_id)
    assert fetched.data.metrics == {"pr_auc": 0.42}
    assert [a.path for a in client.list_artifacts(run.info.run_id)] == ["report.txt"]

    # the artifact went through the server into the bucket...
    objects = s3.client().list_objects_v2(Bucket=s3.bucket, Prefix="mlflow/")
    keys = [o["Key"] for o in objects.get("Contents", [])]
    artifact_key = next(k for k in keys if k.endswith(f"{run.info.run_id}/artifacts/report.txt"))
    body = s3.client().get_object(Bucket=s3.bucket, Key=artifact_key)["Body"].read()
    assert body == b"gate passed\n"

    # ...and the run and its metric are rows in PostgreSQL
    store = mlflow_tracking.store
    assert store.query(f"SELECT experiment_id, status FROM runs WHERE run_uuid = '{run.info.run_id}'") == [
        (experiment_id, "FINISHED")
    ]
    assert store.query(f"SELECT key, value FROM metrics WHERE run_uuid = '{run.info.run_id}'") == [
        ("pr_auc", "0.42")
    ]
