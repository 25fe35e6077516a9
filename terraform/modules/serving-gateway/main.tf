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

  route_hostnames = length(var.hostnames) == 0 ? {} : { hostnames = var.hostnames }
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

resource "kubernetes_manifest" "model_route" {
  manifest = {
    apiVersion = "gateway.networking.k8s.io/v1"
    kind       = "HTTPRoute"
    metadata = {
      name      = var.route_name
      namespace = var.namespace
      labels    = local.labels
    }
    spec = merge(
      {
        parentRefs = [{
          name        = kubernetes_manifest.gateway.manifest.metadata.name
          sectionName = var.listener.name
        }]
        rules = [{
          matches = [{
            path = { type = "PathPrefix", value = "/" }
          }]
          backendRefs = [
            {
              name   = var.stable_service_name
              port   = var.service_port
              weight = var.traffic_weights.stable
            },
            {
              name   = var.canary_service_name
              port   = var.service_port
              weight = var.traffic_weights.canary
            },
          ]
        }]
      },
      local.route_hostnames,
    )
  }

  # The deploy_model DAG moves the weights during a rollout. Declaring them
  # computed stops a plan from reporting that as drift; an apply still writes
  # the baseline back (force_conflicts), which sends traffic to stable - the
  # safe direction.
  computed_fields = [
    "metadata.annotations",
    "metadata.labels",
    "spec.rules[0].backendRefs[0].weight",
    "spec.rules[0].backendRefs[1].weight",
  ]

  field_manager {
    name            = "terraform-driftloop"
    force_conflicts = true
  }
}
