variable "namespace" {
  type        = string
  description = "Namespace the tracking server runs in; it must exist (k8s-namespaces creates it)."
}

variable "name" {
  type        = string
  description = "Name of the Deployment and Service; also the first label of the in-cluster host name."
  default     = "mlflow"
  validation {
    condition     = can(regex("^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$", var.name))
    error_message = "name must be a DNS-1035 label."
  }
}

variable "image_repository" {
  type        = string
  description = "Repository of an MLflow server image that also contains psycopg 3 (PostgreSQL store, postgresql+psycopg:// URIs) and boto3 (S3 artifacts), e.g. the driftloop Airflow image."
  validation {
    condition     = length(var.image_repository) > 0 && !can(regex(":", element(split("/", var.image_repository), length(split("/", var.image_repository)) - 1)))
    error_message = "image_repository must be non-empty and carry no tag; give the tag in image_tag."
  }
}

variable "image_tag" {
  type        = string
  description = "Pinned tag of the MLflow image (the MLflow version the clients are tested against), optionally with its digest as \"3.6.0@sha256:<64 hex>\" so a re-pushed tag cannot change what runs. \"latest\" is rejected."
  validation {
    condition     = can(regex("^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}(@sha256:[a-f0-9]{64})?$", var.image_tag)) && lower(split("@", var.image_tag)[0]) != "latest"
    error_message = "image_tag must be a pinned tag other than \"latest\", optionally followed by @sha256:<digest>."
  }
}

variable "replicas" {
  type        = number
  description = "Tracking server replicas. The server is stateless (state lives in PostgreSQL and S3), so more than one is safe."
  default     = 1
  validation {
    condition     = var.replicas >= 1 && var.replicas <= 10
    error_message = "replicas must be between 1 and 10."
  }
}

variable "workers" {
  type        = number
  description = "Uvicorn workers per pod. One worker keeps a pod near 0.6 GiB; scale with replicas instead."
  default     = 1
  validation {
    condition     = var.workers >= 1 && var.workers <= 8
    error_message = "workers must be between 1 and 8."
  }
}

variable "service_account_name" {
  type        = string
  description = "Existing service account for the pods (k8s-namespaces creates \"mlflow\"); annotate it for IRSA so the server can write artifacts to S3."
}

variable "backend_store_secret_name" {
  type        = string
  description = "Existing Secret holding the PostgreSQL backend store URI (postgresql+psycopg://user:password@host:5432/mlflow). Created outside Terraform so no password enters state or the pod spec."
}

variable "backend_store_uri_key" {
  type        = string
  description = "Key inside backend_store_secret_name whose value is the URI."
  default     = "uri"
}

variable "artifacts_destination" {
  type        = string
  description = "s3:// URI where artifacts are stored, normally the artifacts bucket from the object-store module."
  validation {
    condition     = can(regex("^s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/.*)?$", var.artifacts_destination))
    error_message = "artifacts_destination must be an s3:// URI."
  }
}

variable "serve_artifacts" {
  type        = bool
  description = "Proxy artifact uploads and downloads through the server (clients need no S3 rights; only the server's role does). False makes clients read and write S3 directly."
  default     = true
}

variable "allowed_hosts" {
  type        = list(string)
  description = "Extra Host header values the server accepts (its DNS-rebinding protection), e.g. an ingress host name. The in-cluster service names and localhost (used by the probes) are always allowed."
  default     = []
  validation {
    condition     = !contains(var.allowed_hosts, "*")
    error_message = "allowed_hosts must not contain \"*\": that disables the Host check altogether."
  }
}

variable "port" {
  type        = number
  description = "Port the server listens on and the Service exposes."
  default     = 5000
}

variable "resources" {
  type = object({
    requests = object({ cpu = string, memory = string })
    limits   = object({ cpu = string, memory = string })
  })
  description = "Container requests and limits."
  default = {
    requests = { cpu = "250m", memory = "768Mi" }
    limits   = { cpu = "1", memory = "1536Mi" }
  }
}

variable "extra_env" {
  type        = map(string)
  description = "Plain environment variables for the server, e.g. AWS_DEFAULT_REGION. No secrets: a key that looks like one is rejected."
  default     = {}
  validation {
    condition     = alltrue([for k in keys(var.extra_env) : !can(regex("(?i)(password|passwd|secret|token|credential|private_key|access_key)", k))])
    error_message = "extra_env must not carry secrets (a key looks like one); reference a Secret instead."
  }
}
