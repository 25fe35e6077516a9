output "namespaces" {
  description = "Created namespace names keyed by role: airflow, mlflow, serving, spark_jobs."
  value       = { for role, ns in kubernetes_namespace_v1.this : role => ns.metadata[0].name }
}

output "mlflow_service_account_name" {
  description = "Service account for the MLflow tracking server (in the mlflow namespace)."
  value       = kubernetes_service_account_v1.mlflow.metadata[0].name
}

output "spark_driver_service_account_name" {
  description = "Service account Spark drivers run as (in the spark-jobs namespace); give it to spark.kubernetes.authenticate.driver.serviceAccountName."
  value       = kubernetes_service_account_v1.spark_driver.metadata[0].name
}

output "serving_service_account_name" {
  description = "Service account for the BentoML serving pods (in the serving namespace)."
  value       = kubernetes_service_account_v1.serving.metadata[0].name
}
