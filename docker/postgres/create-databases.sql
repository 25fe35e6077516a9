-- Run once by the postgres image on an empty data volume (as POSTGRES_USER, owner of the
-- `airflow` database it creates itself): MLflow's store, and driftloop's own database (Optuna
-- studies, the registry decision lock).
CREATE DATABASE mlflow;
CREATE DATABASE driftloop;
