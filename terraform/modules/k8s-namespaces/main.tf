locals {
  roles = {
    airflow    = var.namespaces.airflow
    mlflow     = var.namespaces.mlflow
    serving    = var.namespaces.serving
    spark_jobs = var.namespaces.spark_jobs
  }

  common_labels = merge(var.labels, {
    "app.kubernetes.io/part-of"    = "driftloop"
    "app.kubernetes.io/managed-by" = "terraform"
  })

  # kubernetes.io/metadata.name is set by the API server on every namespace
  # (Kubernetes >= 1.21), so selecting by it needs no labels of our own.
  ns_label = "kubernetes.io/metadata.name"

  # Egress to addresses outside the cluster, by namespace role.
  cidr_egress = {
    airflow = [
      { name = "kube-api", cidrs = var.kube_api_cidrs, ports = [443, 6443] },
      { name = "postgres", cidrs = var.postgres_cidrs, ports = [var.postgres_port] },
      { name = "https", cidrs = var.https_egress_cidrs, ports = [443] },
    ]
    mlflow = [
      { name = "postgres", cidrs = var.postgres_cidrs, ports = [var.postgres_port] },
      { name = "https", cidrs = var.https_egress_cidrs, ports = [443] },
    ]
    serving = [
      { name = "https", cidrs = var.https_egress_cidrs, ports = [443] },
    ]
    spark_jobs = [
      { name = "kube-api", cidrs = var.kube_api_cidrs, ports = [443, 6443] },
      { name = "https", cidrs = var.https_egress_cidrs, ports = [443] },
    ]
  }

  # The cluster's Prometheus (not ours): Airflow's pods query its HTTP API for the
  # canary analysis, and it scrapes the serving pods' /metrics on the serving port.
  # pod_labels narrows the peer to Prometheus's own pods within its namespace.
  prometheus_api = var.prometheus == null ? [] : [
    { namespaces = [var.prometheus.namespace], pod_labels = var.prometheus.pod_labels, port = var.prometheus.port },
  ]
  prometheus_scrape = var.prometheus == null ? [] : [
    { namespaces = [var.prometheus.namespace], pod_labels = var.prometheus.pod_labels, port = var.ports.serving },
  ]

  # Traffic between driftloop namespaces: who calls whom, on which port.
  namespace_egress = {
    airflow = concat([
      { namespaces = [var.namespaces.mlflow], pod_labels = {}, port = var.ports.mlflow },
      { namespaces = [var.namespaces.serving], pod_labels = {}, port = var.ports.serving },
    ], local.prometheus_api)
    mlflow  = []
    serving = [{ namespaces = [var.namespaces.mlflow], pod_labels = {}, port = var.ports.mlflow }]
    spark_jobs = [
      { namespaces = [var.namespaces.mlflow], pod_labels = {}, port = var.ports.mlflow },
    ]
  }

  namespace_ingress = {
    airflow = [
      { namespaces = var.airflow_ui_ingress_namespaces, pod_labels = {}, port = var.ports.airflow_api_server },
    ]
    mlflow = [
      { namespaces = [var.namespaces.airflow, var.namespaces.spark_jobs, var.namespaces.serving], pod_labels = {}, port = var.ports.mlflow },
    ]
    serving = concat([
      { namespaces = concat([var.namespaces.airflow], var.gateway_dataplane_namespaces), pod_labels = {}, port = var.ports.serving },
    ], local.prometheus_scrape)
    spark_jobs = []
  }
}

resource "kubernetes_namespace_v1" "this" {
  for_each = local.roles

  metadata {
    name = each.value
    labels = merge(local.common_labels, {
      "driftloop/role"                             = each.key
      "pod-security.kubernetes.io/enforce"         = var.pod_security_enforce
      "pod-security.kubernetes.io/enforce-version" = "latest"
      "pod-security.kubernetes.io/warn"            = "restricted"
      "pod-security.kubernetes.io/audit"           = "restricted"
    })
  }
}

# ---------------------------------------------------------------- quotas ----

resource "kubernetes_resource_quota_v1" "this" {
  for_each = var.resource_quotas

  metadata {
    name      = "driftloop-compute"
    namespace = kubernetes_namespace_v1.this[each.key].metadata[0].name
    labels    = local.common_labels
  }
  spec {
    hard = {
      "requests.cpu"    = each.value.requests_cpu
      "requests.memory" = each.value.requests_memory
      "limits.cpu"      = each.value.limits_cpu
      "limits.memory"   = each.value.limits_memory
      "pods"            = tostring(each.value.pods)
    }
  }
}

resource "kubernetes_limit_range_v1" "this" {
  for_each = kubernetes_namespace_v1.this

  metadata {
    name      = "driftloop-container-defaults"
    namespace = each.value.metadata[0].name
    labels    = local.common_labels
  }
  spec {
    limit {
      type = "Container"
      default_request = {
        cpu    = var.container_defaults.default_request_cpu
        memory = var.container_defaults.default_request_memory
      }
      default = {
        cpu    = var.container_defaults.default_limit_cpu
        memory = var.container_defaults.default_limit_memory
      }
      max = {
        cpu    = var.container_defaults.max_cpu
        memory = var.container_defaults.max_memory
      }
    }
  }
}

# ------------------------------------------------------- service accounts ----
# The Airflow chart creates Airflow's own service accounts; these are the
# workloads this repository deploys outside the chart.

resource "kubernetes_service_account_v1" "mlflow" {
  metadata {
    name        = "mlflow"
    namespace   = kubernetes_namespace_v1.this["mlflow"].metadata[0].name
    labels      = local.common_labels
    annotations = var.service_account_annotations.mlflow
  }
  # The tracking server never talks to the Kubernetes API.
  automount_service_account_token = false
}

resource "kubernetes_service_account_v1" "spark_driver" {
  metadata {
    name        = "spark-driver"
    namespace   = kubernetes_namespace_v1.this["spark_jobs"].metadata[0].name
    labels      = local.common_labels
    annotations = var.service_account_annotations.spark_driver
  }
  # Spark drivers create and watch their executor pods through the API.
  automount_service_account_token = true
}

resource "kubernetes_service_account_v1" "serving" {
  metadata {
    name        = "bento"
    namespace   = kubernetes_namespace_v1.this["serving"].metadata[0].name
    labels      = local.common_labels
    annotations = var.service_account_annotations.serving
  }
  automount_service_account_token = false
}

# ------------------------------------------------------------------- RBAC ----

resource "kubernetes_role_v1" "spark_driver" {
  metadata {
    name      = "spark-driver"
    namespace = kubernetes_namespace_v1.this["spark_jobs"].metadata[0].name
    labels    = local.common_labels
  }
  rule {
    api_groups = [""]
    resources  = ["pods", "services", "configmaps", "persistentvolumeclaims"]
    verbs      = ["create", "get", "list", "watch", "patch", "delete", "deletecollection"]
  }
}

resource "kubernetes_role_binding_v1" "spark_driver" {
  metadata {
    name      = "spark-driver"
    namespace = kubernetes_namespace_v1.this["spark_jobs"].metadata[0].name
    labels    = local.common_labels
  }
  role_ref {
    api_group = "rbac.authorization.k8s.io"
    kind      = "Role"
    name      = kubernetes_role_v1.spark_driver.metadata[0].name
  }
  subject {
    kind      = "ServiceAccount"
    name      = kubernetes_service_account_v1.spark_driver.metadata[0].name
    namespace = kubernetes_namespace_v1.this["spark_jobs"].metadata[0].name
  }
}

# Airflow task pods run the feature job as a Spark driver pod in spark-jobs (the
# driver, not Airflow, creates the executors). Verbs follow
# include/driftloop/feature_jobs/kubernetes.py: server-side apply (PATCH, plus
# `create` when it creates the object) of the driver pod and its ConfigMap,
# reading the pod and its log, deleting both. Nothing lists or watches.
resource "kubernetes_role_v1" "airflow_spark_submitter" {
  metadata {
    name      = "airflow-spark-submitter"
    namespace = kubernetes_namespace_v1.this["spark_jobs"].metadata[0].name
    labels    = local.common_labels
  }
  rule {
    api_groups = [""]
    resources  = ["pods"]
    verbs      = ["create", "get", "patch", "delete"]
  }
  rule {
    api_groups = [""]
    resources  = ["pods/log"]
    verbs      = ["get"]
  }
  rule {
    api_groups = [""]
    resources  = ["configmaps"]
    verbs      = ["create", "patch", "delete"]
  }
}

resource "kubernetes_role_binding_v1" "airflow_spark_submitter" {
  metadata {
    name      = "airflow-spark-submitter"
    namespace = kubernetes_namespace_v1.this["spark_jobs"].metadata[0].name
    labels    = local.common_labels
  }
  role_ref {
    api_group = "rbac.authorization.k8s.io"
    kind      = "Role"
    name      = kubernetes_role_v1.airflow_spark_submitter.metadata[0].name
  }
  subject {
    kind      = "ServiceAccount"
    name      = var.airflow_worker_service_account
    namespace = kubernetes_namespace_v1.this["airflow"].metadata[0].name
  }
}

# The deploy_model DAG rolls out bentos through the Kubernetes deploy target
# (include/driftloop/deploy/kubernetes.py): per variant it server-side applies
# a Deployment, Service, HPA and PDB (PATCH, plus `create` when the apply
# creates the object), reads the Deployment while it rolls out and for status,
# deletes the four when a variant stops; it reads, creates (apply) and
# re-weights (merge patch) the HTTPRoute, which it owns (serving-gateway does
# not create it). It never lists, watches, updates or deletes anything else,
# and reads no Pods, events, ReplicaSets or Gateways: tests/infra/test_rbac.py
# drives every rollout path and requires exactly these rules.
resource "kubernetes_role_v1" "airflow_rollout" {
  metadata {
    name      = "airflow-rollout"
    namespace = kubernetes_namespace_v1.this["serving"].metadata[0].name
    labels    = local.common_labels
  }
  rule {
    api_groups = ["apps"]
    resources  = ["deployments"]
    verbs      = ["create", "get", "patch", "delete"]
  }
  rule {
    api_groups = [""]
    resources  = ["services"]
    verbs      = ["create", "patch", "delete"]
  }
  rule {
    api_groups = ["autoscaling"]
    resources  = ["horizontalpodautoscalers"]
    verbs      = ["create", "patch", "delete"]
  }
  rule {
    api_groups = ["policy"]
    resources  = ["poddisruptionbudgets"]
    verbs      = ["create", "patch", "delete"]
  }
  rule {
    api_groups = ["gateway.networking.k8s.io"]
    resources  = ["httproutes"]
    verbs      = ["create", "get", "patch"]
  }
}

resource "kubernetes_role_binding_v1" "airflow_rollout" {
  metadata {
    name      = "airflow-rollout"
    namespace = kubernetes_namespace_v1.this["serving"].metadata[0].name
    labels    = local.common_labels
  }
  role_ref {
    api_group = "rbac.authorization.k8s.io"
    kind      = "Role"
    name      = kubernetes_role_v1.airflow_rollout.metadata[0].name
  }
  subject {
    kind      = "ServiceAccount"
    name      = var.airflow_worker_service_account
    namespace = kubernetes_namespace_v1.this["airflow"].metadata[0].name
  }
}

# -------------------------------------------------------- network policies ----
# Default deny in every namespace, then only the flows driftloop needs.

resource "kubernetes_network_policy_v1" "default_deny" {
  for_each = kubernetes_namespace_v1.this

  metadata {
    name      = "default-deny-all"
    namespace = each.value.metadata[0].name
    labels    = local.common_labels
  }
  spec {
    pod_selector {}
    policy_types = ["Ingress", "Egress"]
  }
}

resource "kubernetes_network_policy_v1" "allow_dns" {
  for_each = kubernetes_namespace_v1.this

  metadata {
    name      = "allow-dns-egress"
    namespace = each.value.metadata[0].name
    labels    = local.common_labels
  }
  spec {
    pod_selector {}
    policy_types = ["Egress"]
    egress {
      to {
        namespace_selector {
          match_labels = { (local.ns_label) = "kube-system" }
        }
        pod_selector {
          match_labels = { "k8s-app" = "kube-dns" }
        }
      }
      ports {
        port     = "53"
        protocol = "UDP"
      }
      ports {
        port     = "53"
        protocol = "TCP"
      }
    }
  }
}

# Pods of one namespace talk freely to each other: Airflow components and
# task pods, a Spark driver and its executors, stable and canary bentos.
resource "kubernetes_network_policy_v1" "allow_same_namespace" {
  for_each = kubernetes_namespace_v1.this

  metadata {
    name      = "allow-same-namespace"
    namespace = each.value.metadata[0].name
    labels    = local.common_labels
  }
  spec {
    pod_selector {}
    policy_types = ["Ingress", "Egress"]
    ingress {
      from {
        pod_selector {}
      }
    }
    egress {
      to {
        pod_selector {}
      }
    }
  }
}

resource "kubernetes_network_policy_v1" "allow_driftloop_flows" {
  for_each = kubernetes_namespace_v1.this

  metadata {
    name      = "allow-driftloop-flows"
    namespace = each.value.metadata[0].name
    labels    = local.common_labels
  }
  spec {
    pod_selector {}
    policy_types = ["Ingress", "Egress"]

    dynamic "ingress" {
      for_each = [for r in local.namespace_ingress[each.key] : r if length(r.namespaces) > 0]
      content {
        dynamic "from" {
          for_each = ingress.value.namespaces
          content {
            namespace_selector {
              match_labels = { (local.ns_label) = from.value }
            }
            # in the same peer: pods with these labels in that namespace
            dynamic "pod_selector" {
              for_each = length(ingress.value.pod_labels) > 0 ? [ingress.value.pod_labels] : []
              content {
                match_labels = pod_selector.value
              }
            }
          }
        }
        ports {
          port     = tostring(ingress.value.port)
          protocol = "TCP"
        }
      }
    }

    dynamic "egress" {
      for_each = local.namespace_egress[each.key]
      content {
        dynamic "to" {
          for_each = egress.value.namespaces
          content {
            namespace_selector {
              match_labels = { (local.ns_label) = to.value }
            }
            dynamic "pod_selector" {
              for_each = length(egress.value.pod_labels) > 0 ? [egress.value.pod_labels] : []
              content {
                match_labels = pod_selector.value
              }
            }
          }
        }
        ports {
          port     = tostring(egress.value.port)
          protocol = "TCP"
        }
      }
    }

    dynamic "egress" {
      for_each = local.cidr_egress[each.key]
      content {
        dynamic "to" {
          for_each = egress.value.cidrs
          content {
            ip_block {
              cidr = to.value
            }
          }
        }
        dynamic "ports" {
          for_each = egress.value.ports
          content {
            port     = tostring(ports.value)
            protocol = "TCP"
          }
        }
      }
    }
  }
}
