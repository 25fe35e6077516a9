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
  validation {
    # a route names the listener as its parentRef sectionName (a DNS subdomain)
    condition     = can(regex("^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$", var.listener.name)) && length(var.listener.name) <= 253
    error_message = "listener.name must be a lowercase DNS subdomain (it is the routes' parentRef sectionName)."
  }
}
