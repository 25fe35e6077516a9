locals {
  labels = {
    "app.kubernetes.io/part-of"    = "driftloop"
    "app.kubernetes.io/managed-by" = "terraform"
  }

  tls = var.listener.protocol == "HTTPS" ? {
    tls = {
      mode = "Terminate"
      certificateRefs = [{
        kind = "Secret"
        name = var.listener.tls_secret_name
      }]
    }
  } : {}

  listener_hostname = var.listener.hostname == null ? {} : { hostname = var.listener.hostname }

  listener = merge(
    {
      name     = var.listener.name
      protocol = var.listener.protocol
      port     = var.listener.port
      # Only routes in the serving namespace may attach to this Gateway.
      allowedRoutes = {
        namespaces = { from = "Same" }
      }
    },
    local.tls,
    local.listener_hostname,
  )
}

resource "kubernetes_manifest" "gateway" {
  manifest = {
    apiVersion = "gateway.networking.k8s.io/v1"
    kind       = "Gateway"
    metadata = {
      name      = var.gateway_name
      namespace = var.namespace
      labels    = local.labels
    }
    spec = {
      gatewayClassName = var.gateway_class_name
      listeners        = [local.listener]
    }
  }
}

# The weighted HTTPRoute is not managed here: the deploy_model DAG's Kubernetes
# deploy target creates it on its first deploy (parentRef = this Gateway and
# listener, passed to Airflow by the environments) and owns it, weights included.
#
# Managing it here too made Terraform and the rollout fight over one object:
# - every list in an HTTPRoute spec (parentRefs, hostnames, rules, backendRefs)
#   is `+listType=atomic` in the Gateway API CRDs, so server-side apply gives
#   one manager the whole `rules` list - a weight cannot be owned apart from it;
# - kubernetes_manifest applies its whole manifest whenever it updates the
#   object (computed_fields only hides values from the plan; the configured
#   weights are still sent), and force_conflicts takes the list back;
# - the deploy target lists only the backends that take traffic, so after any
#   rollout step the live route differs from this manifest beyond the weights,
#   every plan shows an update, and every apply reset a running canary to the
#   baseline and named a canary Service that exists only during a rollout;
# - lifecycle.ignore_changes does not help: it freezes the manifest to its
#   prior value, which still holds the baseline rules, and is known not to
#   stop kubernetes_manifest updates (provider issues #1378, #2410, #2665).
#
# A state that still holds the route from an earlier version of this module
# forgets it here without deleting it (Terraform >= 1.7), so traffic keeps
# flowing and the deploy target adopts the object on its next apply.
removed {
  from = kubernetes_manifest.model_route

  lifecycle {
    destroy = false
  }
}
