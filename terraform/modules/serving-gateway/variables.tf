variable "namespace" {
  type        = string
  description = "The serving namespace: the Gateway, the HTTPRoute and the stable/canary Services all live here."
}

variable "gateway_name" {
  type        = string
  description = "Name of the Gateway. The default is also driftloop's DRIFTLOOP_SERVING__GATEWAY default; the environments pass the gateway_name output to Airflow either way."
  default     = "driftloop"
  validation {
    condition     = can(regex("^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$", var.gateway_name))
    error_message = "gateway_name must be a valid Kubernetes object name."
  }
}

variable "gateway_class_name" {
  type        = string
  description = "GatewayClass of the cluster's Gateway API implementation (e.g. \"eg\" for Envoy Gateway, \"istio\", \"amazon-vpc-lattice\")."
  validation {
    condition     = length(var.gateway_class_name) > 0
    error_message = "gateway_class_name must be set."
  }
}

variable "listener" {
  type = object({
    name            = optional(string, "https")
    protocol        = optional(string, "HTTPS")
    port            = optional(number, 443)
    hostname        = optional(string)
    tls_secret_name = optional(string)
  })
  description = "The Gateway's single listener. HTTPS (the default) terminates TLS with the certificate in tls_secret_name, a kubernetes.io/tls Secret in the serving namespace; HTTP is for clusters where TLS ends in front of the Gateway."
  validation {
    condition     = contains(["HTTP", "HTTPS"], var.listener.protocol)
    error_message = "listener.protocol must be HTTP or HTTPS."
  }
  validation {
    condition     = var.listener.protocol != "HTTPS" || var.listener.tls_secret_name != null
    error_message = "An HTTPS listener needs listener.tls_secret_name."
  }
  validation {
    condition     = var.listener.port >= 1 && var.listener.port <= 65535
    error_message = "listener.port must be a valid TCP port."
  }
}

variable "route_name" {
  type        = string
  description = "Name of the weighted HTTPRoute the deploy_model DAG patches during a canary rollout."
  default     = "driftloop-model"
}

variable "hostnames" {
  type        = list(string)
  description = "Host names the HTTPRoute answers; empty means every host the listener accepts."
  default     = []
}

variable "stable_service_name" {
  type        = string
  description = "Service in front of the champion (stable) BentoML Deployment."
  default     = "model-stable"
}

variable "canary_service_name" {
  type        = string
  description = "Service in front of the challenger (canary) BentoML Deployment."
  default     = "model-canary"
}

variable "service_port" {
  type        = number
  description = "Port of the stable and canary Services (BentoML listens on 3000)."
  default     = 3000
}

variable "traffic_weights" {
  type = object({
    stable = number
    canary = number
  })
  description = "Baseline traffic split between stable and canary, in percent. Keep it at stable = 100 outside a rollout: the rollout DAG owns the weights while a canary runs, and an apply resets them to this baseline."
  default = {
    stable = 100
    canary = 0
  }
  validation {
    condition     = var.traffic_weights.stable >= 0 && var.traffic_weights.stable <= 100 && var.traffic_weights.canary >= 0 && var.traffic_weights.canary <= 100
    error_message = "Each traffic weight must be between 0 and 100."
  }
  validation {
    condition     = var.traffic_weights.stable + var.traffic_weights.canary == 100
    error_message = "traffic_weights.stable and traffic_weights.canary must sum to 100."
  }
  validation {
    condition     = floor(var.traffic_weights.stable) == var.traffic_weights.stable && floor(var.traffic_weights.canary) == var.traffic_weights.canary
    error_message = "Traffic weights must be whole numbers."
  }
}
