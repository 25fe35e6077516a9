variable "aws_region" {
  type        = string
  description = "AWS region of the buckets (the cluster's region, to keep S3 traffic free and fast)."
  validation {
    condition     = can(regex("^[a-z]{2}(-[a-z]+)+-[0-9]$", var.aws_region))
    error_message = "aws_region must look like eu-west-1."
  }
}

variable "name_prefix" {
  type        = string
  description = "Globally unique prefix for bucket names, e.g. \"acme-driftloop-prod\"."
}

variable "kms_key_arn" {
  type        = string
  description = "Customer-managed KMS key for the buckets; null uses the AWS-managed aws/s3 key (still SSE-KMS)."
  default     = null
}

variable "access_log_bucket" {
  type        = string
  description = "Existing bucket for S3 server access logs; null disables them."
  default     = null
}

variable "kubeconfig_path" {
  type        = string
  description = "Path of the kubeconfig file used by the kubernetes and helm providers."
  default     = "~/.kube/config"
}

variable "kube_context" {
  type        = string
  description = "kubeconfig context of the target cluster. Required, so a plan never runs against whatever context happens to be current."
}

variable "kube_api_cidrs" {
  type        = list(string)
  description = "CIDRs of the Kubernetes API endpoints (kubectl get endpoints kubernetes -n default)."
}

variable "postgres_cidrs" {
  type        = list(string)
  description = "CIDRs of the PostgreSQL server(s) for the Airflow metadata DB and the MLflow store."
}

variable "https_egress_cidrs" {
  type        = list(string)
  description = "CIDRs pods may reach on 443 (S3, STS, ECR); narrow to VPC endpoint ranges where possible."
}

variable "airflow_chart_version" {
  type        = string
  description = "Pinned version of the official Airflow Helm chart."
  default     = "1.22.0"
}

variable "airflow_version" {
  type        = string
  description = "Airflow version in the driftloop Airflow image."
  default     = "3.3.2"
}

variable "airflow_image" {
  type = object({
    repository = string
    tag        = string
  })
  description = "The driftloop Airflow image built from docker/ (pinned tag, never latest)."
}

variable "airflow_secret_names" {
  type = object({
    metadata_connection = optional(string, "airflow-metadata")
    fernet_key          = optional(string, "airflow-fernet-key")
    api_secret_key      = optional(string, "airflow-api-secret-key")
    jwt_secret          = optional(string, "airflow-jwt-secret")
  })
  description = "Names of the pre-created Secrets in the airflow namespace (names only; the values are created outside Terraform)."
  default     = {}
}

variable "mlflow_image" {
  type = object({
    repository = string
    tag        = string
  })
  description = "MLflow server image with psycopg 3 and boto3, e.g. the driftloop Airflow image (pinned tag)."
}

variable "mlflow_backend_store_secret_name" {
  type        = string
  description = "Name of the pre-created Secret (key \"uri\") in the mlflow namespace holding the PostgreSQL backend store URI."
  default     = "mlflow-backend-store"
}

variable "iam_role_arns" {
  type = object({
    airflow      = string
    mlflow       = string
    spark_driver = string
    serving      = optional(string)
  })
  description = "IAM roles assumed by each workload through IRSA (or EKS Pod Identity); attach the object-store module's readwrite_policy_json to them. serving is optional: without it (and without serving_service_account_annotations) the serving pods read S3 keys from the driftloop-serving Secret."
  validation {
    condition     = alltrue([for arn in values(var.iam_role_arns) : arn == null ? true : can(regex("^arn:aws[a-z-]*:iam::[0-9]{12}:role/.+$", arn))])
    error_message = "Every iam_role_arns entry must be an IAM role ARN."
  }
}

variable "serving_service_account_annotations" {
  type        = map(string)
  description = "Workload-identity annotations for the serving pods' service account (bento), merged over the IRSA one iam_role_arns.serving gives, e.g. {\"eks.amazonaws.com/role-arn\" = \"arn:aws:iam::123456789012:role/driftloop-serving\"}. Any annotation (from either) makes the serving pods reach S3 through that identity (DRIFTLOOP_SERVING__WORKLOAD_IDENTITY=true); none: they read the S3 keys in the driftloop-serving Secret."
  default     = {}
}

variable "serving_image" {
  type = object({
    repository = string
    tag        = string
  })
  description = "The driftloop serving image built from docker/serving (a bento), run by the model-stable and model-canary Deployments; becomes DRIFTLOOP_SERVING__IMAGE. Pinned tag, never latest."
  validation {
    condition     = can(regex("^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$", var.serving_image.tag)) && lower(var.serving_image.tag) != "latest" && !can(regex(":", element(split("/", var.serving_image.repository), length(split("/", var.serving_image.repository)) - 1)))
    error_message = "serving_image needs a repository without a tag and a valid, pinned tag other than \"latest\"."
  }
}

variable "spark_job_image" {
  type = object({
    repository = string
    tag        = string
  })
  description = "The driftloop Spark job image built from docker/spark-job, run by the feature job's driver and executor pods; becomes DRIFTLOOP_SPARK_JOB__IMAGE. Pinned tag, never latest."
  validation {
    condition     = can(regex("^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$", var.spark_job_image.tag)) && lower(var.spark_job_image.tag) != "latest" && !can(regex(":", element(split("/", var.spark_job_image.repository), length(split("/", var.spark_job_image.repository)) - 1)))
    error_message = "spark_job_image needs a repository without a tag and a valid, pinned tag other than \"latest\"."
  }
}

variable "prometheus" {
  type = object({
    url        = string
    namespace  = string
    pod_labels = optional(map(string), {})
    port       = optional(number, 9090)
  })
  description = "The cluster's Prometheus (Terraform does not install one). url is its HTTP API as Airflow's pods reach it (DRIFTLOOP_SERVING__PROMETHEUS_URL, read by the canary analysis), e.g. http://prometheus-server.monitoring.svc:9090; namespace, pod_labels (its pods' labels, empty: any pod there) and port open the network flows Airflow → Prometheus and Prometheus → serving pods' metrics port."
  validation {
    condition     = can(regex("^https?://[^/\\s]+", var.prometheus.url))
    error_message = "prometheus.url must be an http:// or https:// URL."
  }
}

variable "driftloop_secret_names" {
  type = object({
    secret_name           = optional(string, "driftloop-airflow")
    registry_lock_dsn_key = optional(string, "registry-lock-dsn")
    optuna_storage_key    = optional(string, "optuna-storage")
  })
  description = "The pre-created Secret in the airflow namespace (names only; values are created outside Terraform) whose keys Airflow's containers and task pods read as DRIFTLOOP_REGISTRY_LOCK_DSN (PostgreSQL DSN for the registry's advisory lock) and DRIFTLOOP_OPTUNA_STORAGE (Optuna's PostgreSQL storage URL)."
  default     = {}
}

variable "gateway_class_name" {
  type        = string
  description = "GatewayClass of the cluster's Gateway API implementation."
}

variable "serving_hostname" {
  type        = string
  description = "Public host name of the model endpoint."
}

variable "serving_tls_secret_name" {
  type        = string
  description = "kubernetes.io/tls Secret in the serving namespace with the certificate for serving_hostname."
}

variable "gateway_dataplane_namespaces" {
  type        = list(string)
  description = "Namespaces where the Gateway implementation runs its proxies (allowed into serving)."
  default     = []
}

variable "airflow_ui_ingress_namespaces" {
  type        = list(string)
  description = "Namespaces allowed to reach the Airflow API server (e.g. the ingress controller's)."
  default     = []
}

variable "tags" {
  type        = map(string)
  description = "Extra tags for every AWS resource."
  default     = {}
}
