"""driftloop: an Airflow-orchestrated MLOps loop over Delta Lake, MLflow and BentoML.

The package owns the business logic; DAG files in ``dags/`` only wire it together.
"""

__version__ = "0.1.0"
