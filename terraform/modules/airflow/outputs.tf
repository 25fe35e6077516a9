output "release_name" {
  description = "Name of the Helm release."
  value       = helm_release.airflow.name
}

output "namespace" {
  description = "Namespace Airflow runs in."
  value       = helm_release.airflow.namespace
}

output "chart_version" {
  description = "Deployed chart version."
  value       = helm_release.airflow.version
}

output "worker_service_account_name" {
  description = "Service account of KubernetesExecutor task pods; bind it where tasks need Kubernetes rights (spark-jobs, serving)."
  value       = local.worker_service_account
}

output "api_server_url" {
  description = "In-cluster base URL of the Airflow API server (UI, REST API v2 and the Execution API)."
  value       = "http://${local.api_server_service}.${var.namespace}.svc.cluster.local:8080"
}
