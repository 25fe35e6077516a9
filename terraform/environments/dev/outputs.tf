output "bucket_names" {
  description = "Bucket names by role (lake, artifacts, reports)."
  value       = module.object_store.bucket_names
}

output "lake_root" {
  description = "Value for DRIFTLOOP_LAKE_ROOT (s3a:// form, as Spark addresses it)."
  value       = replace(module.object_store.lake_uri, "s3://", "s3a://")
}

output "workload_s3_policy_json" {
  description = "IAM policy to attach to the workloads' IRSA roles."
  value       = module.object_store.readwrite_policy_json
}

output "namespaces" {
  description = "driftloop namespaces by role."
  value       = module.k8s_namespaces.namespaces
}

output "mlflow_tracking_uri" {
  description = "In-cluster MLflow tracking URI."
  value       = module.mlflow.tracking_uri
}

output "airflow_api_server_url" {
  description = "In-cluster URL of the Airflow API server (UI and REST API)."
  value       = module.airflow.api_server_url
}

output "airflow_chart_version" {
  description = "Deployed Airflow chart version."
  value       = module.airflow.chart_version
}

output "serving_gateway" {
  description = "Gateway and listener of the serving namespace (the deploy_model DAG creates the weighted route driftloop-model on them)."
  value = {
    gateway  = module.serving_gateway.gateway_name
    listener = module.serving_gateway.listener_name
  }
}
