output "service_name" {
  description = "Name of the tracking server's Service."
  value       = kubernetes_service_v1.mlflow.metadata[0].name
}

output "tracking_uri" {
  description = "In-cluster MLFLOW_TRACKING_URI for Airflow tasks, Spark jobs and serving."
  value       = "http://${kubernetes_service_v1.mlflow.metadata[0].name}.${var.namespace}.svc.cluster.local:${var.port}"
}

output "allowed_hosts" {
  description = "Host header values the server accepts."
  value       = local.allowed_hosts
}
