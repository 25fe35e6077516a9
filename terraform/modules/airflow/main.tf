locals {
  # Same spelling as the chart: {{ .Release.Name }}-worker, -api-server.
  worker_service_account = "${var.release_name}-worker"
  api_server_service     = "${var.release_name}-api-server"

  service_account = {
    create      = true
    annotations = var.service_account_annotations
  }

  pod_security_context = {
    runAsNonRoot = true
    runAsUser    = 50000
    runAsGroup   = 0
    fsGroup      = 0
    seccompProfile = {
      type = "RuntimeDefault"
    }
  }

  container_security_context = {
    allowPrivilegeEscalation = false
    capabilities = {
      drop = ["ALL"]
    }
  }

  resources = {
    for component, r in var.component_resources : component => {
      requests = r.requests
      limits   = r.limits
    }
  }

  remote_logging = var.remote_base_log_folder == null ? {} : {
    remote_logging         = "True"
    remote_base_log_folder = var.remote_base_log_folder
    remote_log_conn_id     = "aws_default"
    encrypt_s3_logs        = "False" # the bucket encrypts with SSE-KMS already
    delete_local_logs      = "True"
  }

  values = {
    airflowVersion    = var.airflow_version
    defaultAirflowTag = var.image_tag
    images = {
      airflow = {
        repository = var.image_repository
        tag        = var.image_tag
        pullPolicy = var.image_pull_policy
      }
      # Task pods use the same image as the scheduler.
      pod_template = {
        repository = var.image_repository
        tag        = var.image_tag
        pullPolicy = var.image_pull_policy
      }
    }

    executor          = "KubernetesExecutor"
    allowPodLaunching = true

    # External PostgreSQL only; no chart-managed database, broker or pooler.
    postgresql = { enabled = false }
    redis      = { enabled = false }
    pgbouncer  = { enabled = false }

    data = {
      metadataSecretName = var.metadata_secret_name
    }
    fernetKeySecretName    = var.fernet_key_secret_name
    apiSecretKeySecretName = var.api_secret_key_secret_name
    jwtSecretName          = var.jwt_secret_name

    # No default admin with a well-known password; users come from the auth
    # manager's configuration.
    createUserJob = {
      defaultUser = { enabled = false }
    }

    securityContexts = {
      pod        = local.pod_security_context
      containers = local.container_security_context
    }

    # driftloop's k8s-namespaces module owns the namespace's network policies.
    networkPolicies = { enabled = false }

    # DAGs are baked into the image: no git-sync, no shared volume.
    dags = {
      persistence = { enabled = false }
      gitSync     = { enabled = false }
    }
    logs = {
      persistence = { enabled = false }
    }

    env = [for k in sort(keys(var.extra_env)) : { name = k, value = var.extra_env[k] }]
    # The chart's Secret-backed environment: a secretKeyRef in every Airflow container and in the
    # KubernetesExecutor's pod template (custom_airflow_environment). Only names reach state.
    secret = concat(
      # Left unset, Airflow derives its async metadata URL by switching the driver to asyncpg,
      # which the image lacks; psycopg 3 (postgresql+psycopg://) serves both, as in compose.
      [{
        envName    = "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN_ASYNC"
        secretName = var.metadata_secret_name
        secretKey  = "connection"
      }],
      [
        for k in sort(keys(var.env_value_from)) : {
          envName    = k
          secretName = var.env_value_from[k].secret_name
          secretKey  = var.env_value_from[k].key
        }
      ],
    )

    config = {
      core = {
        load_examples = "False"
      }
      api = {
        expose_config = "False"
      }
      kubernetes_executor = {
        namespace          = var.namespace
        delete_worker_pods = "True"
      }
      logging = local.remote_logging
    }

    scheduler = {
      replicas       = var.replicas.scheduler
      serviceAccount = local.service_account
      resources      = try(local.resources["scheduler"], {})
    }
    apiServer = {
      replicas       = var.replicas.api_server
      serviceAccount = local.service_account
      resources      = try(local.resources["api_server"], {})
      service        = { type = "ClusterIP" }
    }
    dagProcessor = {
      enabled        = true
      replicas       = var.replicas.dag_processor
      serviceAccount = local.service_account
      resources      = try(local.resources["dag_processor"], {})
    }
    triggerer = {
      enabled        = true
      replicas       = var.replicas.triggerer
      serviceAccount = local.service_account
      resources      = try(local.resources["triggerer"], {})
      persistence    = { enabled = false }
    }
    # With the KubernetesExecutor, "workers" configures the task pods.
    workers = {
      serviceAccount = local.service_account
      resources      = try(local.resources["workers"], {})
      persistence    = { enabled = false }
    }
    statsd = { enabled = true }
  }
}

resource "helm_release" "airflow" {
  name       = var.release_name
  namespace  = var.namespace
  repository = var.chart_repository
  chart      = "airflow"
  version    = var.chart_version

  values = [yamlencode(local.values)]

  # The namespace, its quota and network policies come from k8s-namespaces.
  create_namespace = false
  wait             = true
  timeout          = var.helm_timeout_seconds
  # A failed upgrade is rolled back rather than left half-applied.
  atomic          = true
  cleanup_on_fail = true
  max_history     = 10
}
