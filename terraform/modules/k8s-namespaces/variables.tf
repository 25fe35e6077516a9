variable "namespaces" {
  type = object({
    airflow    = optional(string, "airflow")
    mlflow     = optional(string, "mlflow")
    serving    = optional(string, "serving")
    spark_jobs = optional(string, "spark-jobs")
  })
  description = "Names of the four driftloop namespaces, by role. Override only to run two installations in one cluster."
  default     = {}
  validation {
    condition = alltrue([
      for n in values(var.namespaces) : can(regex("^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$", n))
    ])
    error_message = "Every namespace name must be a DNS-1123 label (lowercase letters, digits and hyphens, at most 63 characters)."
  }
}

variable "labels" {
  type        = map(string)
  description = "Extra labels for every namespace."
  default     = {}
}

variable "pod_security_enforce" {
  type        = string
  description = "Pod Security Admission level enforced on the namespaces. \"baseline\" by default because the Airflow chart's pods set no seccomp profile; every namespace also warns and audits at \"restricted\"."
  default     = "baseline"
  validation {
    condition     = contains(["privileged", "baseline", "restricted"], var.pod_security_enforce)
    error_message = "pod_security_enforce must be privileged, baseline or restricted."
  }
}

variable "airflow_worker_service_account" {
  type        = string
  description = "Name of the service account (in the airflow namespace) that the Airflow chart gives KubernetesExecutor task pods. It is granted Spark job submission in spark-jobs and rollout rights in serving."
  validation {
    condition     = can(regex("^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$", var.airflow_worker_service_account))
    error_message = "airflow_worker_service_account must be a valid Kubernetes object name."
  }
}

variable "service_account_annotations" {
  type = object({
    mlflow       = optional(map(string), {})
    spark_driver = optional(map(string), {})
    serving      = optional(map(string), {})
  })
  description = "Annotations for the service accounts this module creates, e.g. {mlflow = {\"eks.amazonaws.com/role-arn\" = \"arn:aws:iam::...:role/...\"}} for IRSA."
  default     = {}
}

variable "resource_quotas" {
  type = map(object({
    requests_cpu    = string
    requests_memory = string
    limits_cpu      = string
    limits_memory   = string
    pods            = number
  }))
  description = "ResourceQuota per namespace role (airflow, mlflow, serving, spark_jobs). Every role must have one: an unbounded namespace lets a runaway Spark job starve serving."
  validation {
    condition = (
      length(setsubtract(keys(var.resource_quotas), ["airflow", "mlflow", "serving", "spark_jobs"])) == 0 &&
      length(setsubtract(["airflow", "mlflow", "serving", "spark_jobs"], keys(var.resource_quotas))) == 0
    )
    error_message = "resource_quotas must have exactly the keys airflow, mlflow, serving and spark_jobs."
  }
  validation {
    condition     = alltrue([for q in values(var.resource_quotas) : q.pods >= 1])
    error_message = "Every quota must allow at least one pod."
  }
}

variable "container_defaults" {
  type = object({
    default_request_cpu    = optional(string, "100m")
    default_request_memory = optional(string, "256Mi")
    default_limit_cpu      = optional(string, "1")
    default_limit_memory   = optional(string, "1Gi")
    max_cpu                = optional(string, "8")
    max_memory             = optional(string, "32Gi")
  })
  description = "LimitRange applied to containers in every namespace: requests and limits given to containers that declare none (a ResourceQuota rejects pods without them), and the per-container maximum."
  default     = {}
}

variable "kube_api_cidrs" {
  type        = list(string)
  description = "CIDRs of the Kubernetes API server endpoints. Airflow (KubernetesExecutor, Spark submission, rollouts) and Spark drivers (executor pods) must reach it."
  validation {
    condition     = length(var.kube_api_cidrs) > 0 && alltrue([for c in var.kube_api_cidrs : can(cidrhost(c, 0))])
    error_message = "kube_api_cidrs must be a non-empty list of valid CIDRs."
  }
}

variable "postgres_cidrs" {
  type        = list(string)
  description = "CIDRs of the PostgreSQL server(s) holding the Airflow metadata DB and the MLflow backend store."
  validation {
    condition     = length(var.postgres_cidrs) > 0 && alltrue([for c in var.postgres_cidrs : can(cidrhost(c, 0))])
    error_message = "postgres_cidrs must be a non-empty list of valid CIDRs."
  }
}

variable "postgres_port" {
  type        = number
  description = "PostgreSQL port."
  default     = 5432
}

variable "https_egress_cidrs" {
  type        = list(string)
  description = "CIDRs that pods may reach on 443 for S3, STS and other AWS APIs. Narrow it to your VPC endpoints' ranges where they exist; 0.0.0.0/0 is the honest value when S3 is reached through a NAT."
  validation {
    condition     = length(var.https_egress_cidrs) > 0 && alltrue([for c in var.https_egress_cidrs : can(cidrhost(c, 0))])
    error_message = "https_egress_cidrs must be a non-empty list of valid CIDRs."
  }
}

variable "gateway_dataplane_namespaces" {
  type        = list(string)
  description = "Namespaces whose pods carry Gateway traffic to the serving pods (where your Gateway API implementation runs its proxies, e.g. envoy-gateway-system). The serving namespace itself is always allowed."
  default     = []
}

variable "airflow_ui_ingress_namespaces" {
  type        = list(string)
  description = "Namespaces allowed to reach the Airflow API server (UI and REST API), e.g. the ingress controller's. Empty means only in-cluster port-forwarding works."
  default     = []
}

variable "ports" {
  type = object({
    airflow_api_server = optional(number, 8080)
    mlflow             = optional(number, 5000)
    serving            = optional(number, 3000)
  })
  description = "Container ports the network policies open: the Airflow API server, the MLflow server and the BentoML service."
  default     = {}
}

variable "prometheus" {
  type = object({
    namespace  = string
    pod_labels = optional(map(string), {})
    port       = optional(number, 9090)
  })
  description = "The cluster's Prometheus, for two flows through the default deny: Airflow's pods (the canary analysis in task pods and the triggerer) query its HTTP API on port, and its pods scrape the serving pods' /metrics on ports.serving. pod_labels selects Prometheus's pods within namespace (e.g. {\"app.kubernetes.io/name\" = \"prometheus\"}); empty allows every pod there. Null opens neither flow, and the canary analysis cannot read its metrics. Prometheus's own namespace policies, if any, must allow the same flows."
  default     = null
  validation {
    condition     = var.prometheus == null ? true : can(regex("^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$", var.prometheus.namespace))
    error_message = "prometheus.namespace must be a DNS-1123 label."
  }
  validation {
    condition     = var.prometheus == null ? true : var.prometheus.port >= 1 && var.prometheus.port <= 65535
    error_message = "prometheus.port must be a valid TCP port."
  }
}
