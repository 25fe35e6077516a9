output "gateway_name" {
  description = "Name of the Gateway in the serving namespace."
  value       = kubernetes_manifest.gateway.manifest.metadata.name
}

output "namespace" {
  description = "Namespace of the Gateway (the serving namespace, where the deploy target creates its route); Airflow's deploy target needs it with gateway_name."
  value       = kubernetes_manifest.gateway.manifest.metadata.namespace
}

output "listener_name" {
  description = "Listener that routes attach to (their parentRef sectionName); the environments pass it to Airflow as DRIFTLOOP_SERVING__GATEWAY_LISTENER."
  value       = var.listener.name
}
