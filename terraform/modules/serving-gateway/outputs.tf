output "gateway_name" {
  description = "Name of the Gateway in the serving namespace."
  value       = kubernetes_manifest.gateway.manifest.metadata.name
}

output "namespace" {
  description = "Namespace of the Gateway and its route (the serving namespace); Airflow's deploy target needs it with gateway_name."
  value       = kubernetes_manifest.gateway.manifest.metadata.namespace
}

output "listener_name" {
  description = "Listener (sectionName) that routes attach to."
  value       = var.listener.name
}

output "route_name" {
  description = "Name of the weighted HTTPRoute; the rollout's Kubernetes deploy target patches its backendRefs weights."
  value       = kubernetes_manifest.model_route.manifest.metadata.name
}

output "backend_services" {
  description = "Service names the route splits traffic between, by track."
  value = {
    stable = var.stable_service_name
    canary = var.canary_service_name
  }
}
