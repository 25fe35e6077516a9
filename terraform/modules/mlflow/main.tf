locals {
  labels = {
    "app.kubernetes.io/name"       = "mlflow"
    "app.kubernetes.io/instance"   = var.name
    "app.kubernetes.io/component"  = "tracking-server"
    "app.kubernetes.io/part-of"    = "driftloop"
    "app.kubernetes.io/managed-by" = "terraform"
  }
  selector = {
    "app.kubernetes.io/name"     = "mlflow"
    "app.kubernetes.io/instance" = var.name
  }

  # MLflow's security middleware rejects unknown Host headers. Clients use the
  # Service name in one of its forms; probes send Host: localhost.
  service_hosts = [
    var.name,
    "${var.name}.${var.namespace}",
    "${var.name}.${var.namespace}.svc",
    "${var.name}.${var.namespace}.svc.cluster.local",
    "localhost",
  ]
  allowed_hosts = distinct(concat(
    local.service_hosts,
    [for h in local.service_hosts : "${h}:${var.port}"],
    var.allowed_hosts,
  ))

  artifact_args = var.serve_artifacts ? [
    "--serve-artifacts",
    "--artifacts-destination", var.artifacts_destination,
    ] : [
    "--no-serve-artifacts",
    "--default-artifact-root", var.artifacts_destination,
  ]

  server_args = concat([
    "server",
    "--host", "0.0.0.0",
    "--port", tostring(var.port),
    "--workers", tostring(var.workers),
    # Expanded by the kubelet from the env var below, which comes from a Secret.
    "--backend-store-uri", "$(MLFLOW_BACKEND_STORE_URI)",
    "--allowed-hosts", join(",", local.allowed_hosts),
  ], local.artifact_args)
}

resource "kubernetes_deployment_v1" "mlflow" {
  #checkov:skip=CKV_K8S_35:MLflow takes its backend store only as a URI (flag or env), not as a file; the URI comes from a Secret via secretKeyRef and never appears in the spec.
  #checkov:skip=CKV_K8S_43:The image is pinned by tag (validated: never latest) and image_tag accepts tag@sha256:digest where the release process records digests; a static scan cannot see the variable's value.
  metadata {
    name      = var.name
    namespace = var.namespace
    labels    = local.labels
  }

  spec {
    replicas = var.replicas

    selector {
      match_labels = local.selector
    }

    strategy {
      type = "RollingUpdate"
      rolling_update {
        max_surge       = "1"
        max_unavailable = "0"
      }
    }

    template {
      metadata {
        labels = local.labels
      }

      spec {
        service_account_name            = var.service_account_name
        automount_service_account_token = false

        security_context {
          run_as_non_root = true
          run_as_user     = 10001
          run_as_group    = 10001
          fs_group        = 10001
          seccomp_profile {
            type = "RuntimeDefault"
          }
        }

        container {
          name              = "mlflow"
          image             = "${var.image_repository}:${var.image_tag}"
          image_pull_policy = "Always"
          command           = ["mlflow"]
          args              = local.server_args

          port {
            name           = "http"
            container_port = var.port
            protocol       = "TCP"
          }

          env {
            name = "MLFLOW_BACKEND_STORE_URI"
            value_from {
              secret_key_ref {
                name = var.backend_store_secret_name
                key  = var.backend_store_uri_key
              }
            }
          }
          env {
            # Background job workers cost ~1.4 GiB per pod and driftloop uses none.
            name  = "MLFLOW_SERVER_ENABLE_JOB_EXECUTION"
            value = "false"
          }
          env {
            # The root filesystem is read-only; caches and temp files go to /tmp.
            name  = "HOME"
            value = "/tmp"
          }
          dynamic "env" {
            for_each = var.extra_env
            content {
              name  = env.key
              value = env.value
            }
          }

          resources {
            requests = var.resources.requests
            limits   = var.resources.limits
          }

          security_context {
            run_as_non_root            = true
            run_as_user                = 10001
            allow_privilege_escalation = false
            privileged                 = false
            read_only_root_filesystem  = true
            capabilities {
              drop = ["ALL"]
            }
          }

          startup_probe {
            http_get {
              path = "/health"
              port = "http"
              http_header {
                name  = "Host"
                value = "localhost"
              }
            }
            period_seconds    = 5
            failure_threshold = 36 # database migrations on first start
          }

          readiness_probe {
            http_get {
              path = "/health"
              port = "http"
              http_header {
                name  = "Host"
                value = "localhost"
              }
            }
            period_seconds    = 10
            timeout_seconds   = 3
            failure_threshold = 3
          }

          liveness_probe {
            http_get {
              path = "/health"
              port = "http"
              http_header {
                name  = "Host"
                value = "localhost"
              }
            }
            period_seconds    = 20
            timeout_seconds   = 5
            failure_threshold = 3
          }

          volume_mount {
            name       = "tmp"
            mount_path = "/tmp"
          }
        }

        volume {
          name = "tmp"
          empty_dir {
            size_limit = "1Gi"
          }
        }
      }
    }
  }
}

resource "kubernetes_service_v1" "mlflow" {
  metadata {
    name      = var.name
    namespace = var.namespace
    labels    = local.labels
  }
  spec {
    type     = "ClusterIP"
    selector = local.selector
    port {
      name        = "http"
      port        = var.port
      target_port = "http"
      protocol    = "TCP"
    }
  }
}

resource "kubernetes_pod_disruption_budget_v1" "mlflow" {
  count = var.replicas > 1 ? 1 : 0

  metadata {
    name      = var.name
    namespace = var.namespace
    labels    = local.labels
  }
  spec {
    min_available = "1"
    selector {
      match_labels = local.selector
    }
  }
}
