"""Names of driftloop's Airflow Assets: the stable contract other systems post events to.

Importable without Airflow, so library code can recognise which Asset triggered a run.
"""

LANDING = "driftloop.landing"
BRONZE_EVENTS = "driftloop.bronze_events"
FEATURES = "driftloop.features"
DRIFT = "driftloop.drift"
CHALLENGER = "driftloop.challenger"
CHAMPION = "driftloop.champion"
FEEDBACK = "driftloop.feedback"
PREDICTION_LOG = "driftloop.prediction_log"
